"""Drive Flower's deployment engine from Python: a SuperLink process, node registration, run submission.

Flower 1.42 serves the Fleet, Control and Runtime APIs of a SuperLink on one HTTP(S) port. The ServerApp
runs in a subprocess the SuperLink launches (``--isolation subprocess``) from a Flower App Bundle that
``flwr run`` builds from a tiny generated app directory (``<state-dir>/flower-app/pyproject.toml``) whose
components point at the installed ``fedge.server.app:app`` and ``fedge.client.app:app``. The Flower CLI's
settings live in ``<state-dir>/flwr-home`` (``FLWR_HOME``) so nothing touches ``~/.flwr``.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedge.errors import ConfigError, FedgeError

#: Flower 1.42 retries a message object that is not stored yet after 1 s, doubling up to 10 s. Messages are
#: announced before their objects finish arriving (a ClientApp task even before its SuperNode has them), so
#: that first retry added ~1 s to most rounds; the wait is a few hundred ms, so retry every 20-100 ms.
FAST_PULL_BACKOFF = {"initial_backoff": 0.02, "backoff_cap": 0.1}


def fast_pulls(pull: Callable[..., Any]) -> Callable[..., Any]:
    """``pull`` (Flower's ``pull_objects`` or ``pull_and_inflate_object_from_tree``) with short retries."""
    params = inspect.signature(pull).parameters
    if not all(k in params for k in FAST_PULL_BACKOFF):
        raise RuntimeError(f"{pull.__module__}.{pull.__name__} lost its backoff arguments; update "
                           "fedge.server.superlink.fast_pulls for this Flower version")
    return functools.partial(pull, **FAST_PULL_BACKOFF)


APP_NAME = "fedge-federation"
CONNECTION = "fedge"


def flower_bin(name: str) -> str:
    """Path of a Flower console script next to this Python (the venv), else from ``PATH``."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found; install flwr (pip install 'flwr[simulation]==1.42.0')")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: own ``FLWR_HOME``, and this venv's scripts first on ``PATH``
    (the SuperLink and SuperNode launch ``flower-superexec`` and ``flwr-*app`` by name)."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "FLWR_HOME": str(flwr_home), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


@dataclass(frozen=True)
class Tls:
    """Server TLS files (``None`` = insecure, for experiments only)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, certs_dir: str | Path) -> Tls:
        d = Path(certs_dir)
        tls = cls(d / "ca.crt", d / "server.pem", d / "server.key")
        for p in (tls.ca, tls.cert, tls.key):
            if not p.is_file():
                raise ConfigError(f"{p} missing; make local certificates with `fed-server certs {d}`")
        return tls


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections (fails early if ``proc`` exits)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FedgeError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise FedgeError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


class SuperLink:
    """A ``flower-superlink`` subprocess bound to one state directory."""

    def __init__(self, state_dir: Path, host: str, port: int, tls: Tls | None, node_auth: bool) -> None:
        self.state_dir, self.host, self.port, self.tls, self.node_auth = state_dir, host, port, tls, node_auth
        self.home = state_dir / "flwr-home"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{host}:{self.port}"

    def env(self) -> dict[str, str]:
        return flower_env(self.home)

    def start(self, timeout_s: float = 60.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [flower_bin("flower-superlink"), "--database", str(self.state_dir / "superlink.db"),
               "--disable-runtime-dependency-installation", "--host", self.host, "--port", str(self.port)]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                    "--ssl-keyfile", str(self.tls.key)]
        if self.node_auth:
            cmd.append("--enable-supernode-auth")
        log = open(self.state_dir / "superlink.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                     start_new_session=True, preexec_fn=_die_with_parent)
        log.close()
        wait_for_port(self.address.split(":")[0], self.port, timeout_s, self.proc)
        self._write_cli_config()

    def _write_cli_config(self) -> None:
        conn: dict[str, Any] = {"address": self.address}
        if self.tls is None:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(self.tls.ca.resolve())
        cfg = {"superlink": {"default": CONNECTION, CONNECTION: conn}}
        (self.home / "config.toml").write_text(tomli_w.dumps(cfg))

    def flwr(self, *args: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """Run a ``flwr`` CLI command against this SuperLink with ``--format json``; returns its JSON."""
        out = subprocess.run([flower_bin("flwr"), *args, "--format", "json"], env=self.env(),
                             capture_output=True, text=True, timeout=timeout_s)
        text = out.stdout.strip()
        start = text.find("{")
        try:
            return dict(json.loads(text[start:])) if start >= 0 else {"success": False, "error-message": text}
        except json.JSONDecodeError:
            return {"success": False, "error-message": text + out.stderr}

    def register(self, public_key: Path) -> str:
        """Authorize a SuperNode's public key; returns ``"registered"`` or ``"already registered"``."""
        res = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if res.get("success"):
            return "registered"
        msg = str(res.get("error-message", res))
        if "already in use" in msg:
            return "already registered"
        raise FedgeError(f"could not register node key {public_key}: {msg.strip().splitlines()[-1]}")

    def submit(self, run_config: dict[str, Any]) -> int:
        """Write the Flower App for ``run_config`` and start a run; returns the run id."""
        app_dir = write_flower_app(self.state_dir / "flower-app", run_config)
        res = self.flwr("run", str(app_dir), CONNECTION)
        if not res.get("success"):
            raise FedgeError(f"the SuperLink refused the run: {res.get('error-message', res)}")
        return int(res["run-id"])

    def run_status(self, run_id: int) -> str:
        """The run's status string, e.g. ``running``, ``finished:completed``, ``finished:failed``."""
        res = self.flwr("list", "--run-id", str(run_id), CONNECTION, timeout_s=60)
        runs = res.get("runs") or []
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def logs(self, run_id: int) -> str:
        out = subprocess.run([flower_bin("flwr"), "log", str(run_id), CONNECTION, "--show"], env=self.env(),
                             capture_output=True, text=True, timeout=60)
        return out.stdout + out.stderr

    def stop(self) -> None:
        """Terminate the SuperLink (it stops its SuperExec and ServerApp processes itself)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _die_with_parent() -> None:
    """Linux: SIGTERM the child when its parent dies (even by SIGKILL), so no SuperLink outlives fed-server."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def write_flower_app(app_dir: Path, run_config: dict[str, Any]) -> Path:
    """A minimal Flower App whose components are fedge's installed apps and whose config is ``run_config``."""
    app_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": {"name": APP_NAME, "version": "1.0.0", "description": "fedge federated adapters",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"flwr": {"app": {"publisher": "fedge",
                                  "components": {"serverapp": "fedge.server.app:app",
                                                 "clientapp": "fedge.client.app:app"},
                                  "config": {k: v for k, v in run_config.items() if v is not None}}}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return app_dir

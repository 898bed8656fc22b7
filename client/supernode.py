"""The SuperNode that ``fed-client`` runs: Flower's own, with warm ClientApp processes and a shorter idle poll.

Flower 1.42's SuperNode (``--isolation subprocess``) has its SuperExec start a fresh ``flwr-clientapp``
process for every message, and that process spends seconds importing torch, Opacus and fedge before the
handler runs, in every round (measured 4–9 s of an 18 s round on 2 cores). Here the SuperNode runs with
``--isolation process`` and this module serves its Runtime API tasks: a ``forkserver`` that has imported the
ClientApp's modules once forks one child per task, and the child runs Flower's own ``run_clientapp`` (pull
the message, run the handler, push the reply, exit). Every message still gets its own process, as
``subprocess`` isolation gives; only the start-up is gone.

The SuperNode also sleeps a hard-coded 3 s between Fleet API polls (``start_client_internal``), so each
round's message waits 1.5 s on average, and a round waits for the slowest of its clients. :class:`PollPolicy`
keeps Flower's 3 s while the node is idle and polls every 0.2 s for two minutes after a message, while a
run's rounds follow each other. Both changes touch Flower internals of the pinned version (``flwr==1.42.0``);
:func:`check_flower_internals` fails loudly if an upgrade moves them.

    python -m fedge.client.supernode [--poll-interval 3] [--active-poll-interval 0.2] [--cold] -- <flower-supernode args>
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from logging import ERROR, INFO

#: imported once by the forkserver, so a task's process starts with them loaded
PRELOAD = ("torch", "torch._dynamo", "opacus", "flwr.supernode.runtime.run_clientapp", "fedge.client.app",
           "fedge.client.local", "fedge.client.dp")
CLIENT_APP_TASK = "flwr-clientapp"  # flwr.supercore.constant.TaskType.CLIENT_APP
IDLE_POLL_S = 3  # the idle SuperNode's sleep between polls in flwr 1.42.0


def check_flower_internals() -> None:
    """Fail with a clear error if the Flower internals this module relies on have moved."""
    from flwr.supernode import start_client_internal as sci

    src = inspect.getsource(sci.start_client_internal)
    if f"time.sleep({IDLE_POLL_S:g})" not in src or "ISOLATION_MODE_SUBPROCESS" not in src:
        raise RuntimeError("flwr.supernode.start_client_internal changed (expected flwr 1.42.0's idle "
                           "`time.sleep(3)`); update fedge.client.supernode for this Flower version")


class PollPolicy:
    """Replacement ``time.sleep`` for Flower's SuperNode loop: poll fast while a run is active.

    The loop sleeps 3 s only when a poll found no message, and 0.5 s while it waits (locally) for a
    ClientApp's reply. The local waits become 0.05 s; an idle poll sleeps ``active_s`` within ``window_s``
    of the last message (the next round's message is due soon) and ``idle_s`` otherwise.
    """

    def __init__(self, idle_s: float = 3.0, active_s: float = 0.2, window_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if min(idle_s, active_s) <= 0:
            raise ValueError("poll intervals must be > 0")
        self.idle_s, self.active_s, self.window_s = idle_s, active_s, window_s
        self.clock, self.real_sleep = clock, sleep
        self.last_active = -float("inf")

    def interval(self, requested: float) -> float:
        """The sleep that replaces Flower's ``time.sleep(requested)``."""
        now = self.clock()
        if requested < IDLE_POLL_S:  # waiting for a reply: a message is being processed
            self.last_active = now
            return min(requested, 0.05)
        return self.active_s if now - self.last_active < self.window_s else self.idle_s

    def sleep(self, requested: float) -> None:
        self.real_sleep(self.interval(float(requested)))


def install_poll_policy(policy: PollPolicy) -> None:
    """Make Flower's SuperNode loop (``start_client_internal``) sleep as ``policy`` says, and retry message
    objects the server has not finished storing after 20 ms instead of 1 s."""
    from flwr.supernode import start_client_internal as sci

    from fedge.server.superlink import fast_pulls

    patched = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    patched.sleep = policy.sleep
    sci.time = patched  # type: ignore[assignment]
    sci.pull_objects = fast_pulls(sci.pull_objects)  # type: ignore[attr-defined]


def _run_task(runtime_api_address: str, token: str, parent_pid: int) -> None:
    """A forked task process: Flower's ``flwr-clientapp`` main for one message."""
    from flwr.supernode.runtime import run_clientapp as rc

    from fedge.server.superlink import fast_pulls

    # the task is announced before the SuperNode has stored all of the message's objects
    rc.pull_and_inflate_object_from_tree = fast_pulls(rc.pull_and_inflate_object_from_tree)
    rc.run_clientapp(runtime_api_address=runtime_api_address, token=token, insecure=True, parent_pid=parent_pid)


def _noop() -> None:
    """Started once so the forkserver exists (and has imported :data:`PRELOAD`) before the first message."""


class WarmExecutor:
    """Takes ClientApp tasks from the local SuperNode's Runtime API and runs each in a forkserver child."""

    def __init__(self, runtime_api_address: str, poll_s: float = 0.02, preload: Sequence[str] = PRELOAD) -> None:
        self.address = runtime_api_address
        self.poll_s = poll_s
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(list(preload))
        self.children: list[multiprocessing.process.BaseProcess] = []
        self.launched = 0

    def warm_up(self) -> float:
        """Start the forkserver (imports :data:`PRELOAD`); returns the seconds it took."""
        t0 = time.perf_counter()
        p = self.ctx.Process(target=_noop)
        p.start()
        p.join()
        return time.perf_counter() - t0

    def launch(self, token: str) -> None:
        """Run one task (its Runtime API token) in a fresh child of the forkserver."""
        p = self.ctx.Process(target=_run_task, args=(self.address, token, os.getpid()), daemon=False)
        p.start()
        self.children.append(p)
        self.launched += 1
        print(f"fedge: ClientApp task {self.launched} in warm process {p.pid}", flush=True)
        for c in [c for c in self.children if not c.is_alive()]:  # reap finished tasks
            c.join()
            self.children.remove(c)

    def launch_cold(self, token: str) -> None:
        """Run one task the way Flower's SuperExec does: a new ``flwr-clientapp`` process."""
        from fedge.server.superlink import flower_bin

        subprocess.Popen([flower_bin("flwr-clientapp"), "--insecure", "--runtime-api-address", self.address,
                          "--token", token, "--parent-pid", str(os.getpid())])

    def serve(self, stop: threading.Event) -> None:
        """Poll the Runtime API for ClientApp tasks until ``stop`` is set."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # type: ignore[attr-defined]
        from flwr.supercore import log
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker())
        request = AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK])
        try:
            while not stop.is_set():
                try:
                    res = client.AcquireTask(request)
                except Exception as err:  # noqa: BLE001 - the SuperNode's API may not be up yet, or is restarting
                    log(INFO, "fedge warm executor: Runtime API not ready (%s); retrying", type(err).__name__)
                    stop.wait(1.0)
                    continue
                if res.HasField("task") and res.token:
                    if res.task.type != CLIENT_APP_TASK:
                        log(ERROR, "fedge warm executor: ignoring task of type %r", res.task.type)
                    else:
                        try:
                            self.launch(res.token)
                        except Exception as err:  # noqa: BLE001 - a broken forkserver must not lose the task
                            log(ERROR, "fedge warm executor: fork failed (%r); starting a cold flwr-clientapp", err)
                            self.launch_cold(res.token)
                        continue  # another task may be waiting already
                stop.wait(self.poll_s)
        finally:
            client.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedge.client.supernode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--poll-interval", type=float, default=3.0,
                   help="seconds between an idle SuperNode's polls of the server (Flower's own: 3)")
    p.add_argument("--active-poll-interval", type=float, default=0.2,
                   help="seconds between polls within 2 minutes of the last message (a run is in progress)")
    p.add_argument("--cold", action="store_true",
                   help="Flower's default: a new flwr-clientapp process (with all imports) per message")
    p.add_argument("supernode_args", nargs=argparse.REMAINDER, help="arguments for flower-supernode (after --)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Run Flower's ``flower-supernode`` in this process with fedge's warm executor (see module docs)."""
    args = build_parser().parse_args(argv)
    rest = [a for a in args.supernode_args if a != "--"] if args.supernode_args[:1] == ["--"] else args.supernode_args
    if "--isolation" in rest:
        raise SystemExit("fedge.client.supernode sets --isolation itself")
    port = rest[rest.index("--port") + 1] if "--port" in rest else "9094"
    check_flower_internals()
    try:
        install_poll_policy(PollPolicy(args.poll_interval, args.active_poll_interval))
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if not args.cold:
        executor = WarmExecutor(f"127.0.0.1:{port}")
        print(f"fedge: warm ClientApp executor ready in {executor.warm_up():.1f}s "
              f"(forkserver preloaded {', '.join(PRELOAD)})", flush=True)
        threading.Thread(target=executor.serve, args=(threading.Event(),), daemon=True,
                         name="fedge-warm-executor").start()
        rest = [*rest, "--isolation", "process"]
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()

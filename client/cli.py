"""``fed-client``: start a Flower SuperNode for this device, with its local data and credentials.

    fed-client keygen ./keys --name alice           # node key pair: give alice.pub to the server
    fed-client --server 127.0.0.1:9092 --root-cert certs/ca.crt --key keys/alice \\
               --user-id u00001 --state-dir runs/alice
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedge.errors import ConfigError, FedgeError
from fedge.server.security import make_node_keys
from fedge.server.superlink import flower_env
from fedge.server.task import load_user_data, save_user_data

REFUSED = ("Exit Code: 305", "Failed to activate SuperNode")  # flower-supernode's words (its exit code is 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fed-client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="fed-server address host:port")
    p.add_argument("--root-cert", type=Path, help="CA certificate that signed the server's (ca.crt)")
    p.add_argument("--insecure", action="store_true", help="no TLS (experiments only)")
    p.add_argument("--key", type=Path, help="this node's private key (from `fed-client keygen`)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-dir", type=Path, help="directory with data.npz (images + labels_fine/labels_coarse)")
    data.add_argument("--user-id", help="FLAIR-style user id, e.g. u00001 (generated locally)")
    p.add_argument("--num-users", type=int, default=100, help="FLAIR-style population size (with --user-id)")
    p.add_argument("--data-seed", type=int, default=0, help="FLAIR-style population seed (with --user-id)")
    p.add_argument("--state-dir", type=Path, required=True, help="this device's data copy, ledger and logs")
    p.add_argument("--epsilon-budget", type=float, default=0.0,
                   help="this device's example-level epsilon budget; training stops past it (0 = none)")
    p.add_argument("--runtime-port", type=int, default=0, help="local SuperNode runtime port (0 = any free)")
    p.add_argument("--max-wait", type=float, default=None, help="give up if the server is unreachable this long")
    p.add_argument("--poll-interval", type=float, default=3.0,
                   help="seconds between an idle device's polls of the server (Flower's SuperNode: 3)")
    p.add_argument("--active-poll-interval", type=float, default=0.2,
                   help="seconds between polls for two minutes after a message, while a run is in progress")
    p.add_argument("--cold-start", action="store_true",
                   help="Flower's default ClientApp start: a new process importing torch for every message "
                        "(default: warm processes forked from a preloaded forkserver)")
    p.add_argument("--refused-retry", type=float, default=60.0,
                   help="keep retrying this many seconds if the server refuses this node (key not yet registered)")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_data(args: argparse.Namespace) -> Path:
    """The ``.npz`` the ClientApp reads: copied from --data-dir or generated for --user-id."""
    target = args.state_dir / "data.npz"
    if args.data_dir is not None:
        return save_user_data(load_user_data(args.data_dir), target)
    from fedge.data.flair_style import FlairStyleDataset

    ds = FlairStyleDataset(num_users=args.num_users, seed=args.data_seed)
    if args.user_id not in ds.user_ids("train"):
        raise ConfigError(f"{args.user_id} is not a training user of this population "
                          f"(u00000..u{len(ds.user_ids('train')) - 1:05d})")
    return save_user_data(ds.load_user(args.user_id), target)


def supernode_command(args: argparse.Namespace, data_path: Path, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "fedge.client.supernode", "--poll-interval", str(args.poll_interval),
           "--active-poll-interval", str(args.active_poll_interval),
           *(["--cold"] if args.cold_start else []), "--",
           "--superlink", args.server, "--port", str(port),
           "--node-config", f'data-path="{data_path.resolve()}" state-dir="{args.state_dir.resolve()}" '
                            f'epsilon-budget={float(args.epsilon_budget)}']
    if args.insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(args.root_cert)]
    if args.key is not None:
        cmd += ["--auth-supernode-private-key", str(args.key)]
    if args.max_wait is not None:
        cmd += ["--max-wait-time", str(args.max_wait)]
    return cmd


def run(args: argparse.Namespace) -> int:
    if args.insecure == bool(args.root_cert):
        raise ConfigError("pass --root-cert ca.crt (TLS) or --insecure, exactly one")
    if args.key is not None and not args.key.is_file():
        raise ConfigError(f"private key {args.key} missing; make one with `fed-client keygen DIR`")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    data_path = prepare_data(args)
    n = len(load_user_data(data_path))
    port = args.runtime_port or _free_port()
    env = flower_env((args.state_dir / "flwr-home").resolve())
    print(f"fed-client: {n} local examples, connecting to {args.server} "
          f"({'insecure' if args.insecure else 'TLS'}, {'node key ' + args.key.name if args.key else 'no node key'})",
          flush=True)
    deadline = time.monotonic() + args.refused_retry
    while True:
        code, refused = _run_supernode(supernode_command(args, data_path, port), env)
        if code == 0 or not refused:
            return code
        if time.monotonic() > deadline:
            raise FedgeError("the server refused this node or is unreachable: check --server and --root-cert, "
                             "and that the server lists this node's .pub in --authorized-keys")
        print("fed-client: refused (the server may not have registered this key yet); retrying in 5 s", flush=True)
        time.sleep(5)


def _run_supernode(cmd: list[str], env: dict[str, str]) -> tuple[int, bool]:
    """Run one SuperNode to its end, relaying its log; returns (exit code, whether it was refused)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    refused = threading.Event()

    def relay() -> None:  # pass the SuperNode's log through, watching for a refusal
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if any(r in line for r in REFUSED):
                refused.set()

    threading.Thread(target=relay, daemon=True).start()
    try:
        code = proc.wait()  # not EOF: the SuperNode's own SuperExec child may hold the pipe a while longer
        time.sleep(0.5)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return code, refused.is_set()


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if argv and argv[0] == "keygen":
            kp = argparse.ArgumentParser(prog="fed-client keygen", description="node key pair for node auth")
            kp.add_argument("out_dir", type=Path)
            kp.add_argument("--name", default="node")
            kp.add_argument("--overwrite", action="store_true")
            a = kp.parse_args(argv[1:])
            priv, pub = make_node_keys(a.out_dir, a.name, overwrite=a.overwrite)
            print(f"private key: {priv}\npublic key:  {pub}  (give this one to the server's --authorized-keys)")
            return 0
        return run(build_parser().parse_args(argv))
    except FedgeError as err:
        print(f"fed-client: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

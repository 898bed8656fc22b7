"""``fed-server``: start a Flower SuperLink and run fedge's ServerApp on it, with progress per round.

    fed-server certs ./certs                       # self-signed CA + server certificate (local use)
    fed-server --state-dir runs/fed --certs ./certs --authorized-keys keys/ --rounds 3
    fed-server --state-dir runs/fed --certs ./certs --authorized-keys keys/ --resume
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fedge.errors import ConfigError, FedgeError
from fedge.server.checkpoint import RunStore
from fedge.server.config import FederationConfig
from fedge.server.security import make_certificates
from fedge.server.superlink import SuperLink, Tls

# CLI flag -> FederationConfig field
FLAGS: dict[str, tuple[str, type, str]] = {
    "--rounds": ("rounds", int, "number of federated rounds"),
    "--cohort-size": ("cohort_size", int, "clients sampled per round"),
    "--min-clients": ("min_clients", int, "valid updates needed to complete a round"),
    "--round-timeout": ("round_timeout_s", float, "seconds to wait for replies in a round"),
    "--wait-for-clients": ("wait_for_clients_s", float, "seconds to wait for min-clients to connect"),
    "--cohort-grace": ("cohort_grace_s", float, "then seconds to wait for a full cohort to connect"),
    "--adapter": ("adapter", str, "adapter kinds, e.g. film, film+head, lora"),
    "--label-set": ("label_set", str, "fine or coarse labels (FLAIR-style: 10 / 4; FLAIR: the file's, 1,628 / 17)"),
    "--dataset": ("dataset", str, "flair-style (generated, the default) or flair (the real FLAIR HDF5 file)"),
    "--flair-path": ("flair_path", str, "FLAIR HDF5 file (with --dataset flair; see docs/flair.md)"),
    "--image-size": ("image_size", int, "FLAIR: resize images to this square size (0 = the file's own)"),
    "--public-users": ("public_users", int, "FLAIR: training users held out to pretrain the backbone on"),
    "--pretrained-path": ("pretrained_path", str, "local torchvision/timm checkpoint the backbone starts from"),
    "--local-epochs": ("local_epochs", float, "local epochs per round"),
    "--lr": ("lr", float, "client learning rate"),
    "--batch-size": ("batch_size", int, "client batch size"),
    "--client-noise": ("client_noise_multiplier", float, "DP-SGD noise multiplier on clients"),
    "--client-clip": ("client_max_grad_norm", float, "DP-SGD per-example clipping norm"),
    "--user-noise": ("user_noise_multiplier", float, "user-level DP noise multiplier (server)"),
    "--user-clip": ("user_clip", float, "user-level L2 clipping bound of a client's delta"),
    "--user-delta": ("user_delta", float, "user-level delta"),
    "--population-size": ("population_size", int, "eligible users; each joins a round with probability "
                          "cohort/population (Poisson, as the accountant assumes); default: the cohort size (q = 1)"),
    "--epsilon-budget": ("epsilon_budget", float, "stop before user-level epsilon exceeds this (0 = none)"),
    "--eval-users": ("eval_users", int, "held-out users for server-side evaluation (0 = off)"),
    "--num-users": ("num_users", int, "FLAIR-style population size the held-out users come from"),
    "--pretrain-images": ("pretrain_images", int, "public images to pretrain the backbone on"),
    "--pretrain-epochs": ("pretrain_epochs", float, "backbone pretraining epochs"),
    "--seed": ("seed", int, "seed for cohort sampling and adapter init"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fed-server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", required=True, type=Path, help="checkpoints, ledger, metrics, SuperLink db")
    p.add_argument("--resume", action="store_true", help="continue the run in --state-dir from its last round")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=9092, help="SuperLink HTTPS port (Fleet + Control APIs)")
    p.add_argument("--certs", type=Path, help="directory with ca.crt, server.pem, server.key (TLS)")
    p.add_argument("--insecure", action="store_true", help="no TLS (experiments only)")
    p.add_argument("--authorized-keys", type=Path, nargs="*", default=[],
                   help="SuperNode public keys (*.pub files or directories of them); enables node auth")
    p.add_argument("--no-node-auth", action="store_true", help="accept any SuperNode (experiments only)")
    p.add_argument("--no-client-dp", action="store_true", help="clients train without DP-SGD")
    p.add_argument("--no-user-dp", action="store_true", help="plain FedAvg of deltas (no clipping, no noise)")
    p.add_argument("--no-federated-eval", action="store_true", help="skip evaluation on clients")
    for flag, (_, typ, help_) in FLAGS.items():
        p.add_argument(flag, type=typ, help=help_)
    return p


def resolve_config(args: argparse.Namespace, store: RunStore) -> FederationConfig:
    """The run's config: saved one on ``--resume`` (flags may not change it), else defaults + flags."""
    overrides: dict[str, Any] = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _)
                                 in FLAGS.items()}
    if args.no_client_dp:
        overrides["client_dp"] = False
    if args.no_user_dp:
        overrides["user_dp"] = False
    if args.no_federated_eval:
        overrides["federated_eval"] = False
    if args.resume:
        if not store.config_path.is_file():
            raise ConfigError(f"nothing to resume in {store.dir}; start a run without --resume")
        cfg = FederationConfig.load(store.config_path)
        changed = {k: v for k, v in overrides.items() if v is not None and getattr(cfg, k) != v and k != "rounds"}
        if changed:
            raise ConfigError(f"--resume keeps the run's settings; these flags differ: {sorted(changed)}")
        if overrides.get("rounds"):
            cfg = cfg.with_overrides(rounds=overrides["rounds"])  # extending a finished run is allowed
        return cfg
    if (store.dir / "checkpoint.json").exists():
        raise ConfigError(f"{store.dir} already holds a run; pass --resume or choose a new --state-dir")
    return FederationConfig().with_overrides(**overrides)


def _public_keys(paths: list[Path]) -> list[Path]:
    keys: list[Path] = []
    for p in paths:
        keys += sorted(p.glob("*.pub")) if p.is_dir() else [p]
    for k in keys:
        if not k.is_file():
            raise ConfigError(f"public key {k} does not exist")
    return keys


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else str(v)


def print_round(m: dict[str, Any], rounds: int) -> None:
    """One terminal line per completed round."""
    parts = [f"round {m['round']}/{rounds}", f"clients {m.get('clients')}", f"loss {_fmt(m.get('train_loss'))}"]
    for key in ("server_macro_ap", "server_micro_ap", "fed_macro_ap"):
        if key in m:
            parts.append(f"{key.replace('_', '-')} {_fmt(m[key])}")
    parts += [f"user-eps {_fmt(m.get('user_eps'))}", f"client-eps {_fmt(m.get('client_eps_max'))}",
              f"{m.get('round_s', 0):.1f}s"]
    if m.get("rejected"):
        parts.append(f"rejected {[(r['node'], r['reason']) for r in m['rejected']]}")
    print("  ".join(parts), flush=True)


def follow(link: SuperLink, run_id: int, store: RunStore, cfg: FederationConfig, poll_s: float = 2.0) -> str:
    """Print new metrics lines until the run ends; returns the final Flower run status."""
    lines = store.read_metrics()
    printed = {m["round"] for m in lines if "round" in m and not m.get("event")}
    finished_before = sum(1 for m in lines if m.get("event") == "finished")
    last_status_check = time.monotonic()
    while True:
        lines = store.read_metrics()
        for m in lines:
            if "round" in m and not m.get("event") and m["round"] not in printed and m["round"] > 0:
                printed.add(m["round"])
                print_round(m, cfg.rounds)
        if sum(1 for m in lines if m.get("event") == "finished") > finished_before:
            return "finished:completed"
        if link.proc is not None and link.proc.poll() is not None:
            raise FedgeError(f"the SuperLink exited (code {link.proc.returncode}); see {store.dir}/superlink.log")
        if time.monotonic() - last_status_check > 30:  # `flwr list` is a whole CLI process: not too often
            last_status_check = time.monotonic()
            status = link.run_status(run_id)
            if status.startswith("finished") and status != "finished:completed":
                return status
        time.sleep(poll_s)


def serve(args: argparse.Namespace) -> int:
    """Start the SuperLink, authorize nodes, submit the run and follow it to the end."""
    store = RunStore(args.state_dir)
    cfg = resolve_config(args, store)
    cfg.save(store.config_path)
    if args.insecure == bool(args.certs):
        raise ConfigError("pass --certs DIR (TLS) or --insecure, exactly one")
    tls = None if args.insecure else Tls.from_dir(args.certs)
    keys = _public_keys(args.authorized_keys)
    if not keys and not args.no_node_auth:
        raise ConfigError("node authentication needs --authorized-keys (make keys with `fed-client keygen`), "
                          "or pass --no-node-auth for experiments")
    from fedge.server.task import load_backbone, pretrain_config

    print("preparing the backbone (pretrains once, then cached in FEDGE_HOME) ...", flush=True)
    load_backbone(pretrain_config(cfg.to_run_config()), progress=True)
    link = SuperLink(store.dir.resolve(), args.host, args.port, tls, node_auth=bool(keys))
    link.start()
    try:
        for k in keys:
            print(f"node key {k.name}: {link.register(k)}", flush=True)
        run_config = {**cfg.to_run_config(), "state-dir": str(store.dir.resolve())}
        run_id = link.submit(run_config)
        done = max([m["round"] for m in store.read_metrics() if "round" in m and not m.get("event")], default=0)
        print(f"SuperLink on {'https' if tls else 'http'}://{link.address}  run {run_id}  "
              f"{'resuming after round ' + str(done) if args.resume else 'new run'}  "
              f"(clients: fed-client --server {link.address} ...)", flush=True)
        status = follow(link, run_id, store, cfg)
        if status != "finished:completed":
            print(link.logs(run_id)[-4000:], file=sys.stderr)
            raise FedgeError(f"run {run_id} ended as {status}; see {store.dir}/superlink.log")
        summary = [m for m in store.read_metrics() if m.get("event") == "finished"][-1]
        if summary.get("stopped"):
            print(f"stopped early: {summary['stopped']}", flush=True)
        print(f"done: {summary['round']} rounds, user-level epsilon {_fmt(summary.get('user_eps'))}, "
              f"adapters in {store.final_path()}", flush=True)
        (store.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        link.stop()
    return 0


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # run the `finally` that stops the SuperLink
    try:
        if argv and argv[0] == "certs":
            cp = argparse.ArgumentParser(prog="fed-server certs", description="self-signed CA + server cert")
            cp.add_argument("out_dir", type=Path)
            cp.add_argument("--host", action="append", default=[], help="extra host name or IP for the cert")
            cp.add_argument("--overwrite", action="store_true")
            a = cp.parse_args(argv[1:])
            for name, path in make_certificates(a.out_dir, a.host, overwrite=a.overwrite).items():
                print(f"{name}: {path}")
            return 0
        return serve(build_parser().parse_args(argv))
    except FedgeError as err:
        print(f"fed-server: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fed-server: interrupted; continue later with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

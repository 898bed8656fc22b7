"""``fed-edge cloud``: the cloud adaptation service and a device runner for cloud-edge TTA.

    fed-edge cloud bundle --out B            export the task's edge model as an adaptable bundle
    fed-edge cloud serve --devices D.json --tls-cert C --tls-key K [--state-dir S]
    fed-edge cloud device --bundle B --target HOST:PORT --device-id ID --token T --root-cert C

Thin over :mod:`fedge.edge.tta`; also runs as ``python -m fedge.edge.tta_cli ...``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fedge.errors import ConfigError, FedgeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fed-edge cloud", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def models(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--edge-arch", default="tiny_cnn")
        sp.add_argument("--edge-weights", type=Path, default=None, help="default: train/cache the task's edge model")

    b = sub.add_parser("bundle", help="export the edge model as an adaptable edge bundle")
    models(b)
    b.add_argument("--out", type=Path, required=True)

    s = sub.add_parser("serve", help="run the cloud adaptation service (gRPC)")
    models(s)
    s.add_argument("--foundation-arch", default="wide_cnn")
    s.add_argument("--foundation-weights", type=Path, default=None)
    s.add_argument("--address", default="127.0.0.1:50071", help="host:port (port 0 picks a free one)")
    s.add_argument("--port-file", type=Path, default=None, help="write the bound port here once serving")
    s.add_argument("--devices", type=Path, required=True, help='JSON {"device-id": "token", ...}')
    s.add_argument("--tls-cert", type=Path, default=None)
    s.add_argument("--tls-key", type=Path, default=None)
    s.add_argument("--insecure", action="store_true", help="plaintext (loopback experiments only)")
    s.add_argument("--state-dir", type=Path, default=None, help="persist published versions; resume on restart")
    s.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024)
    s.add_argument("--max-batch", type=int, default=256)
    s.add_argument("--threads", type=int, default=1, help="torch threads for adaptation")

    d = sub.add_parser("device", help="run a device over a corrupted stream against the service")
    d.add_argument("--bundle", type=Path, required=True)
    d.add_argument("--target", required=True)
    d.add_argument("--device-id", required=True)
    d.add_argument("--token", required=True)
    d.add_argument("--root-cert", type=Path, default=None, help="the service's certificate (TLS)")
    d.add_argument("--corruption", default="gaussian_noise", help="a corruption or comma-separated (continual)")
    d.add_argument("--severity", type=int, default=3)
    d.add_argument("--n", type=int, default=1000, help="samples per corruption")
    d.add_argument("--batch-size", type=int, default=50)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--max-fraction", type=float, default=0.3)
    d.add_argument("--out", type=Path, default=None, help="write the report JSON here")
    d.add_argument("--save-params", type=Path, default=None, help="save the last swapped-in params (.npz)")
    return p


def _edge_model(args: argparse.Namespace) -> Any:
    from fedge.edge.tta.task import EDGE_DEFAULT, load_or_train, load_weights

    if args.edge_weights is not None:
        return load_weights(args.edge_arch, args.edge_weights)
    if args.edge_arch != EDGE_DEFAULT.arch:
        raise ConfigError(f"--edge-arch {args.edge_arch} needs --edge-weights")
    return load_or_train(EDGE_DEFAULT)


def _bundle(args: argparse.Namespace) -> dict[str, Any]:
    from fedge.edge.tta.task import export_edge_bundle

    manifest = export_edge_bundle(_edge_model(args), args.out, args.edge_arch)
    return {"bundle": str(args.out), "adaptable": len(manifest["adaptable"]), "parity": manifest["parity"]}


def _serve(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from fedge.adapters import backbone_hash
    from fedge.edge.tta.cloud import AdaptationService, ParameterStore, ServiceLimits, serve
    from fedge.edge.tta.distill import CloudAdapter
    from fedge.edge.tta.task import FOUNDATION_DEFAULT, load_or_train, load_weights

    torch.set_num_threads(args.threads)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("pass both --tls-cert and --tls-key")
    if args.tls_cert is None and not args.insecure:
        raise ConfigError("TLS is required: pass --tls-cert/--tls-key (or --insecure for loopback experiments)")
    try:
        devices = json.loads(args.devices.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--devices {args.devices}: {e}") from None
    if not isinstance(devices, dict) or not all(isinstance(v, str) and v for v in devices.values()):
        raise ConfigError('--devices must be a JSON object {"device-id": "non-empty token"}')
    edge = _edge_model(args)
    if args.foundation_weights is not None:
        foundation = load_weights(args.foundation_arch, args.foundation_weights)
    elif args.foundation_arch == FOUNDATION_DEFAULT.arch:
        foundation = load_or_train(FOUNDATION_DEFAULT)
    else:
        raise ConfigError(f"--foundation-arch {args.foundation_arch} needs --foundation-weights")
    store = ParameterStore(args.state_dir, backbone_hash(edge))
    limits = ServiceLimits(max_batch=args.max_batch, max_message_bytes=args.max_message_bytes)
    service = AdaptationService(CloudAdapter(foundation, edge), devices, store, limits)
    tls = (args.tls_cert.read_bytes(), args.tls_key.read_bytes()) if args.tls_cert else None
    server, port = serve(service, args.address, tls)
    if args.port_file is not None:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(args.port_file)
    print(json.dumps({"serving": port, "tls": tls is not None, "version": store.version}), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    return {"stopped": port, "version": store.version, **service.stats}


def _device(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from fedge.data.fashion_mnist import load_fashion_mnist
    from fedge.edge.runtime import EdgeModel
    from fedge.edge.tta.device import CloudClient, EdgeDevice
    from fedge.edge.tta.selection import SelectionConfig, Selector
    from fedge.edge.tta.streams import continual_stream

    images, labels = load_fashion_mnist("test")
    names = [c.strip() for c in args.corruption.split(",") if c.strip()]
    stream = continual_stream(images, labels, names, args.severity, args.n, args.seed)
    model, frozen = EdgeModel(args.bundle), EdgeModel(args.bundle, verify=False)
    session_id = id(model.session)
    root = args.root_cert.read_bytes() if args.root_cert else None
    client = CloudClient(args.target, args.device_id, args.token, root_cert=root)
    device = EdgeDevice(model, Selector(len(model.labels), SelectionConfig(max_fraction=args.max_fraction)), client)
    correct = base = 0
    for x, y in stream.batches(args.batch_size):
        x = x[:, None]
        correct += int((device.step(x).argmax(1) == y).sum())
        base += int((frozen.run(frozen.preprocess(x)).argmax(1) == y).sum())
    client.close()
    report = {"accuracy": correct / len(stream), "accuracy_no_adapt": base / len(stream), "n": len(stream),
              "corruptions": names, "severity": args.severity, "session_recreated": id(model.session) != session_id,
              **device.report()}
    if args.save_params is not None and device.current:
        np.savez(args.save_params, **dict[str, Any](device.current))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


COMMANDS = {"bundle": _bundle, "serve": _serve, "device": _device}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fed-edge cloud``: a :class:`FedgeError` becomes one line on stderr and exit code 2."""
    args = _parser().parse_args(argv)
    try:
        out = COMMANDS[args.cmd](args)
    except FedgeError as e:
        print(f"fed-edge cloud {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

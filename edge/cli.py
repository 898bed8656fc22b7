"""``fed-edge``: export, quantize, convert, bench and check edge bundles (thin over fedge.edge)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fed-edge", description=__doc__,
                                epilog="fed-edge cloud {bundle,serve,device} ...: cloud-edge test-time adaptation "
                                       "(see fed-edge cloud --help)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--label-set", default="fine", choices=["fine", "coarse"])
        sp.add_argument("--num-users", type=int, default=1000, help="FLAIR-style population size")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--max-eval-users", type=int, default=None)

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--arch", default="resnet_gn_small")
        sp.add_argument("--backbone", type=Path, default=None, help="backbone weights (.safetensors / .pt)")
        sp.add_argument("--adapter", type=Path, default=None, help="adapter state (.safetensors)")
        sp.add_argument("--num-classes", type=int, default=10, help="the backbone's own classifier size")
        sp.add_argument("--in-chans", type=int, default=1)

    e = sub.add_parser("export", help="merge adapters, export ONNX, check parity, write a bundle")
    model_args(e)
    data_args(e)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--parity-samples", type=int, default=256)
    e.add_argument("--no-adaptable", action="store_true", help="bake norm affines in as constants")
    e.add_argument("--opset", type=int, default=None)

    q = sub.add_parser("quantize", help="static int8 QDQ quantization, calibration method chosen on val")
    q.add_argument("bundle", type=Path)
    data_args(q)
    q.add_argument("--calibration-samples", type=int, default=256)
    q.add_argument("--methods", default="minmax,entropy,percentile")
    q.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    q.add_argument("--activation-type", default="uint8", choices=["uint8", "int8"])

    c = sub.add_parser("convert", help="ORT format (.ort), mobile usability, reduced-operator config")
    c.add_argument("bundle", type=Path)
    c.add_argument("--no-usability", action="store_true")
    c.add_argument("--target-platform", default="arm", choices=["arm", "amd64"],
                   help="platform whose fusions are baked into the .ort files (phones: arm)")

    b = sub.add_parser("bench", help="latency/throughput/size/accuracy: PyTorch eager, ORT fp32, ORT int8")
    b.add_argument("bundle", type=Path)
    model_args(b)
    data_args(b)
    b.add_argument("--no-eager", action="store_true", help="skip PyTorch eager (no model files needed)")
    b.add_argument("--iters", type=int, default=300)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--json", type=Path, default=None, help="also write the result here")

    k = sub.add_parser("check", help="verify a bundle's hashes and run its reference self-test")
    k.add_argument("bundle", type=Path)
    return p


def _splits(args: argparse.Namespace, calibration: int = 256) -> Any:
    from fedge.edge.data import flair_style_splits

    return flair_style_splits(args.label_set, args.num_users, args.seed, calibration, args.max_eval_users)


def _export(args: argparse.Namespace) -> dict[str, Any]:
    from fedge.edge.bundle import BundleInfo, build_bundle, merged_from_adapters
    from fedge.edge.export import DEFAULT_OPSET

    model, prov = merged_from_adapters(args.arch, args.backbone, args.adapter, args.num_classes, args.in_chans)
    splits = _splits(args)
    info = BundleInfo(labels=splits.labels, multilabel=prov["multilabel"] in (True, None), arch=args.arch,
                      backbone_hash=prov["backbone_hash"], adapter_hash=prov["adapter_hash"],
                      adapter_specs=prov["adapter_specs"], task=f"flair_style/{args.label_set}")
    manifest = build_bundle(model, args.out, splits.test[0][: args.parity_samples], info,
                            adaptable=not args.no_adaptable, opset=args.opset or DEFAULT_OPSET)
    return {"bundle": str(args.out), "parity": manifest["parity"], "adaptable": len(manifest["adaptable"]),
            "bytes": manifest["files"]["fp32"]["bytes"]}


def _quantize(args: argparse.Namespace) -> dict[str, Any]:
    from fedge.edge.pipeline import quantize_bundle

    s = _splits(args, args.calibration_samples)
    report = quantize_bundle(args.bundle, s.calibration, s.val, s.test,
                             methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                             per_channel=not args.per_tensor, activation_type=args.activation_type)
    return {k: v for k, v in report.items() if k != "int8_ops"}


def _convert(args: argparse.Namespace) -> dict[str, Any]:
    from fedge.edge.pipeline import convert_bundle

    return convert_bundle(args.bundle, usability=not args.no_usability, target_platform=args.target_platform)


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from fedge.edge.bench import bench_bundle, ratios, table

    eager = None
    if not args.no_eager:
        from fedge.edge.bundle import merged_from_adapters

        eager, _ = merged_from_adapters(args.arch, args.backbone, args.adapter, args.num_classes, args.in_chans)
    result = bench_bundle(args.bundle, _splits(args).test, eager, iters=args.iters, threads=args.threads)
    result["ratios"] = ratios(result)
    print(table(result), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _check(args: argparse.Namespace) -> dict[str, Any]:
    from fedge.edge.runtime import EdgeModel

    model = EdgeModel(args.bundle)
    report = {}
    for variant in model.manifest["models"]:
        report[variant] = EdgeModel(args.bundle, variant, verify=False).self_test()
    return {"bundle": str(args.bundle), "ok": all(r["ok"] for r in report.values()), "self_test": report}


COMMANDS = {"export": _export, "quantize": _quantize, "convert": _convert, "bench": _bench, "check": _check}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fed-edge``; a :class:`FedgeError` becomes one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cloud"]:  # cloud-edge adaptation (fedge.edge.tta_cli) keeps its own parser
        from fedge.edge.tta_cli import main as cloud_main

        return cloud_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        out = COMMANDS[args.cmd](args)
    except FedgeError as e:
        print(f"fed-edge {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=str))
    return 0 if out.get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())

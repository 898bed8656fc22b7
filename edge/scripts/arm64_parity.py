"""Run inside an aarch64 Python (see arm64_check.sh): every model of a bundle vs the x86 reference outputs.

Only onnxruntime, numpy and fedge's torch-free runtime files are on the path here; torch is not installed.
"""

from __future__ import annotations

import json
import platform
import sys

import onnxruntime as ort

from fedge.edge.runtime import EdgeModel

# fp32 must match x86 to float rounding; int8 kernels differ between x86 (u8s8 VNNI) and ARM (NEON/dot),
# so requantization rounding may move a logit by a few quantization steps: top-1 must still agree.
ATOL = {"fp32": 1e-4, "int8": 5e-2}


def main(bundle: str) -> int:
    first = EdgeModel(bundle)  # verifies every file's sha256 against the manifest
    results = {}
    for variant in first.manifest["models"]:
        r = EdgeModel(bundle, variant, verify=False).self_test(atol=ATOL[variant.split("_")[0]])
        results[variant] = r
    out = {"machine": platform.machine(), "python": platform.python_version(), "onnxruntime": ort.__version__,
           "torch_imported": "torch" in sys.modules, "results": results,
           "ok": all(r["ok"] for r in results.values())}
    print(json.dumps(out, indent=2))
    return 0 if out["ok"] and out["machine"] == "aarch64" else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))

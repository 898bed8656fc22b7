"""PyTorch -> ONNX export of a plain (merged) model, with adaptable norm affines and a parity check.

The model is traced by the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the supported path in
torch 2.13; the TorchScript exporter cannot trace ``functional_call``). Every GroupNorm/LayerNorm affine
parameter is passed to the traced function as an explicit input, so the ONNX graph keeps it as its own tensor
with the PyTorch name and shape (the exporter's optimizer would otherwise fold it into reshaped, deduplicated
constants). Afterwards each such input gets an initializer with the trained value: ONNX Runtime treats an
initializer that is also a graph input as *overridable*, so a device feeds new values per run without
re-exporting or recreating the session. ``adaptable=False`` turns them back into plain constants.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.func import functional_call

from fedge.edge.errors import ExportError, ParityError

DEFAULT_OPSET = 20  # opset 21 emits GroupNormalization, which ORT CPU expands into ~10 ops: 1.4x slower
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ADAPTABLE_TYPES: tuple[type[nn.Module], ...] = (nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote: the path, the opset and the adaptable parameters."""

    path: Path
    opset: int
    adaptable: tuple[dict[str, Any], ...]


def norm_affine_names(model: nn.Module) -> list[str]:
    """Names of every GroupNorm/LayerNorm weight and bias of ``model`` (where FiLM is folded)."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, ADAPTABLE_TYPES):
            for p in ("weight", "bias"):
                if getattr(mod, p, None) is not None:
                    names.append(f"{mod_name}.{p}" if mod_name else p)
    return names


class _AffineAsInputs(nn.Module):
    """Calls ``model`` with its norm affines taken from the second argument (a list of tensors)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, x: torch.Tensor, affines: list[torch.Tensor]) -> torch.Tensor:
        return functional_call(self.model, dict(zip(self.names, affines)), (x,), strict=False)


def export_onnx(
    model: nn.Module,
    sample: torch.Tensor,
    path: str | Path,
    *,
    adaptable: bool = True,
    opset: int = DEFAULT_OPSET,
) -> ExportResult:
    """Export ``model`` (eval mode, fp32, CPU) to ``path`` with a dynamic batch dimension."""
    path = Path(path)
    model = model.eval().float().cpu()
    names = norm_affine_names(model)
    params = dict(model.named_parameters())
    affines = [params[n].detach().clone() for n in names]
    wrapper = _AffineAsInputs(model, names).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    sample = sample[:2] if sample.shape[0] >= 2 else sample.repeat(2, *([1] * (sample.dim() - 1)))
    try:
        with _quiet():
            torch.onnx.export(
                wrapper,
                (sample.float(), affines),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME, *names],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch}, [None] * len(affines)),
                optimize=True,
                external_data=False,  # one self-contained file (no stale model.onnx.data beside it)
                verbose=False,
            )
    except Exception as e:  # the exporter raises many unrelated types; keep the cause chained
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {e}") from e
    proto = onnx.load(str(path))
    graph_inputs = {i.name for i in proto.graph.input}
    missing = [n for n in names if n not in graph_inputs]
    if missing:  # an unused affine (e.g. a norm outside the forward path) is pruned by the exporter
        names = [n for n in names if n not in missing]
    adapt = []
    for n in names:
        value = params[n].detach().cpu().numpy().astype(np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(value, n))
        adapt.append({"name": n, "shape": list(value.shape), "dtype": "float32",
                      "role": "scale" if n.endswith("weight") else "shift"})
    if not adaptable:
        keep = [i for i in proto.graph.input if i.name not in set(names)]
        del proto.graph.input[:]
        proto.graph.input.extend(keep)
        adapt = []
    _strip_debug_info(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return ExportResult(path, opset, tuple(adapt))


def _strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces and doc strings (~15% of a small model's bytes)."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        del value.metadata_props[:]
        value.doc_string = ""
    proto.graph.doc_string = ""


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings (they are not actionable for users)."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def ort_session(path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and warnings silenced."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # overridable initializers are intended; do not warn about each
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: np.ndarray, feeds: dict[str, np.ndarray] | None = None,
             batch: int = 256) -> np.ndarray:
    """Run ``session`` over ``x`` in chunks of ``batch``; ``feeds`` adds overridable inputs."""
    outs = [session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch], **(feeds or {})})[0]
            for i in range(0, len(x), batch)]
    return np.concatenate(outs)


@torch.no_grad()
def run_torch(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Run ``model`` (eval) over ``x`` in chunks; returns float32 numpy logits."""
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs diff and top-1 agreement between two logit arrays (same inputs)."""
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
        "n": int(len(reference)),
    }


def check_parity(model: nn.Module, onnx_path: str | Path, x: np.ndarray, atol: float = 1e-4,
                 feeds: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Compare the ONNX model to PyTorch on ``x``; raise :class:`ParityError` past ``atol`` or on any top-1 flip."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    ref = run_torch(model, x)
    got = run_onnx(ort_session(onnx_path), x, feeds)
    report = compare(ref, got)
    if report["max_abs_diff"] > atol or report["top1_agreement"] < 1.0:
        raise ParityError(
            f"{Path(onnx_path).name} disagrees with PyTorch on {len(x)} inputs: max abs diff "
            f"{report['max_abs_diff']:.3g} (limit {atol:g}), top-1 agreement {report['top1_agreement']:.4f}"
        )
    return report

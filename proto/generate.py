"""Regenerate ``proto/*_pb2.py`` (+ ``.pyi`` type stubs) / ``*_pb2_grpc.py`` from ``proto/*.proto`` with grpcio-tools.

protoc writes ``import fedge_pb2 as ...`` (a bare top-level name); the stubs live in ``fedge.proto``, so the
import is rewritten to ``from fedge.proto import fedge_pb2 as ...``. Usage: ``python proto/generate.py [OUT]``.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PACKAGE = "fedge.proto"


def generate(out_dir: str | Path = PROTO_DIR, proto_dir: str | Path = PROTO_DIR) -> list[Path]:
    """Run protoc on every ``.proto`` in ``proto_dir`` into ``out_dir``; return the written stub files."""
    import grpc_tools
    from grpc_tools import protoc  # build-time tool: imported only when generating

    proto_dir, out_dir = Path(proto_dir), Path(out_dir)
    protos = sorted(p.name for p in proto_dir.glob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["grpc_tools.protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={tmp}",
                          f"--grpc_python_out={tmp}", f"--pyi_out={tmp}", *protos])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc} on {protos}")
        written = []
        for src in sorted(Path(tmp).glob("*_pb2*.py*")):
            text = re.sub(r"^import (\w+_pb2) as", rf"from {PACKAGE} import \1 as", src.read_text(), flags=re.M)
            if src.suffix == ".pyi":  # the linter's exclude names only *_pb2*.py; stubs are generated too
                text = "# ruff: noqa\n" + text
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    return written


if __name__ == "__main__":
    for path in generate(sys.argv[1] if len(sys.argv) > 1 else PROTO_DIR):
        print(path)

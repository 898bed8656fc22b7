"""The distribution installs one `fedge` namespace; every subpackage imports from a built wheel."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ["fedge", "fedge.adapters", "fedge.models", "fedge.data", "fedge.server", "fedge.client",
               "fedge.privacy", "fedge.edge", "fedge.proto", "fedge.simulations"]


@pytest.mark.timeout(300)
def test_wheel_installs_into_fresh_venv_and_imports_everything(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("fedge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"fedge"}, top_level  # no generic top-level names like `server`
    assert "fedge/privacy/__init__.py" in names and "fedge/py.typed" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # dependencies come from the project's environment; fedge itself only from the wheel
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    Path(purelib, "deps.pth").write_text("\n".join(deps) + "\n")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(purelib)
    code = "import importlib, fedge; " + "; ".join(f"importlib.import_module('{m}')" for m in SUBPACKAGES) + \
        "; print(fedge.__file__)"
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip().startswith(purelib)


@pytest.mark.parametrize(("preset", "expected"), [(None, "0"), ("1", "1")])
def test_flower_telemetry_is_off_unless_the_user_opts_in(preset: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLWR_TELEMETRY_ENABLED"}
    if preset is not None:
        env["FLWR_TELEMETRY_ENABLED"] = preset
    code = "import fedge, os, flwr.supercore.telemetry as t; print(os.environ['FLWR_TELEMETRY_ENABLED'], " \
           "t.FLWR_TELEMETRY_ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [expected, expected]

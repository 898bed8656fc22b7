"""The small public API of fedge.privacy resolves, and heavy parts stay lazy."""

from __future__ import annotations

import subprocess
import sys

import fedge.privacy as privacy


def test_every_exported_name_resolves() -> None:
    for name in privacy.__all__:
        assert getattr(privacy, name) is not None, name


def test_dp_sgd_and_audit_are_lazy() -> None:
    code = (
        "import sys, fedge.privacy as p; "
        "assert 'fedge.privacy.dp_sgd' not in sys.modules and 'fedge.privacy.audit' not in sys.modules; "
        "p.train_dp_sgd; assert 'fedge.privacy.dp_sgd' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""Acceptance: `fed-edge cloud serve` and an edge device as separate processes over TLS on loopback.

Over a short corrupted stream the device's accuracy beats no adaptation, it reports its upload fraction,
and every parameter set it swapped in is exactly one the cloud published; a restarted cloud resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedge.proto import codec
from fedge.proto import fedge_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLI = [sys.executable, "-m", "fedge.edge.tta_cli"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from fedge.edge.tta.task import (
        EDGE_DEFAULT,
        FOUNDATION_DEFAULT,
        export_edge_bundle,
        load_or_train,
        save_weights,
    )
    from fedge.edge.tta.tls import self_signed

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tta")
    edge, foundation = load_or_train(EDGE_DEFAULT), load_or_train(FOUNDATION_DEFAULT)  # cached in FEDGE_HOME
    export_edge_bundle(edge, root / "bundle")
    cert, key = self_signed(root / "tls")
    (root / "devices.json").write_text(json.dumps({"phone-1": "tok-1"}))
    return {"root": root, "edge": save_weights(edge, root / "edge.safetensors"),
            "foundation": save_weights(foundation, root / "foundation.safetensors"), "cert": cert, "key": key}


def _serve(s: dict, port_file: Path) -> subprocess.Popen:
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([*CLI, "serve", "--edge-weights", str(s["edge"]), "--foundation-weights",
                             str(s["foundation"]), "--address", "127.0.0.1:0", "--port-file", str(port_file),
                             "--devices", str(s["root"] / "devices.json"), "--tls-cert", str(s["cert"]),
                             "--tls-key", str(s["key"]), "--state-dir", str(s["root"] / "state")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not port_file.is_file():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"serve did not start: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    return proc


def _device(s: dict, port: int, out: Path, n: int) -> dict:
    cmd = [*CLI, "device", "--bundle", str(s["root"] / "bundle"), "--target", f"127.0.0.1:{port}",
           "--device-id", "phone-1", "--token", "tok-1", "--root-cert", str(s["cert"]),
           "--corruption", "motion_blur", "--severity", "3", "--n", str(n), "--out", str(out),
           "--save-params", str(out.with_suffix(".npz"))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def _stop(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _published(s: dict, version: int) -> pb.AdapterBundle:
    return pb.AdapterBundle.FromString((s["root"] / "state" / f"v{version}.binpb").read_bytes())


def test_cloud_edge_over_tls_improves_accuracy_and_swaps_published_params(setup: dict) -> None:
    s = setup
    port_file = s["root"] / "port"
    proc = _serve(s, port_file)
    try:
        report = _device(s, int(port_file.read_text()), s["root"] / "run1.json", n=500)
    finally:
        stats = _stop(proc)
    print({k: report[k] for k in ("accuracy", "accuracy_no_adapt", "upload_fraction", "bytes_up", "bytes_down",
                                  "version", "n")})
    assert report["accuracy"] > report["accuracy_no_adapt"], report
    assert 0 < report["upload_fraction"] <= 0.3 and report["uploaded"] == stats["samples"]
    assert report["bytes_up"] > 0 and report["bytes_down"] > 0
    assert not report["session_recreated"]
    assert report["swaps"] and report["version"] == stats["version"] == report["swaps"][-1]["version"]
    for swap in report["swaps"]:  # each swapped-in set is byte-identical to what the cloud published
        assert _published(s, swap["version"]).tensors_sha256 == swap["sha256"]
    last = codec.decode_bundle(_published(s, report["version"]))
    swapped = dict(np.load(s["root"] / "run1.npz"))
    assert sorted(last) == sorted(swapped)
    assert all(np.array_equal(last[k], swapped[k]) for k in last)

    # a restarted cloud resumes from its state dir: versions continue, the device keeps adapting
    proc = _serve(s, port_file)
    try:
        again = _device(s, int(port_file.read_text()), s["root"] / "run2.json", n=100)
    finally:
        _stop(proc)
    assert again["swaps"] and again["swaps"][0]["version"] > report["version"]

"""The device side is forward-only: no torch imported; it swaps params into the same session object."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from fedge.edge.tta.device import EdgeDevice
from fedge.edge.tta.selection import SelectionConfig, Selector
from fedge.proto import codec


def test_device_modules_do_not_import_torch() -> None:
    code = ("import sys, fedge.edge.tta.device, fedge.edge.tta.selection, fedge.edge.tta.lame, fedge.edge.runtime;"
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


class FakeModel:
    """An EdgeModel stand-in: logits from a fixed linear map of the pixels, plus the overrides it got."""

    manifest = {"backbone_hash": "h"}
    labels = [str(i) for i in range(10)]

    def __init__(self) -> None:
        self.w = np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32) * 0.25
        self.overrides: dict[str, np.ndarray] = {}
        self.session = object()

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        return images.astype(np.float32) / 255.0

    def run(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ self.w * (1 + float(self.overrides.get("s", np.zeros(1))[0]))

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        self.overrides.update(params)


class FakeClient:
    """Publishes a new version on every upload, like the service."""

    def __init__(self) -> None:
        self.version, self.uploads, self.bytes_up, self.bytes_down, self.retries = 0, [], 0, 0, 0

    def upload(self, samples: np.ndarray, batch_id: int, have_version: int):
        self.uploads.append(samples)
        self.version += 1
        return type("R", (), {"latest_version": self.version})()

    def get_parameters(self, have_version: int):
        bundle = codec.encode_bundle({"s": np.full(1, self.version, np.float32)}, self.version, "h")
        return type("R", (), {"changed": have_version != self.version, "version": self.version, "params": bundle})()


def test_device_uploads_only_selected_and_swaps_each_version() -> None:
    model, client = FakeModel(), FakeClient()
    session = model.session
    device = EdgeDevice(model, Selector(10, SelectionConfig(max_fraction=0.3)), client)
    rng = np.random.default_rng(1)
    for _ in range(5):
        device.step(rng.integers(0, 256, (20, 1, 28, 28), dtype=np.uint8))
    report = device.report()
    assert 0 < sum(len(u) for u in client.uploads) == report["uploaded"] <= 0.3 * 100
    assert all(u.dtype == np.uint8 and u.shape[1:] == (1, 28, 28) for u in client.uploads)
    assert report["version"] == client.version and [s["version"] for s in report["swaps"]] == \
        list(range(1, client.version + 1))
    assert model.overrides["s"][0] == client.version and model.session is session

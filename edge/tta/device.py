"""The device side of cloud-edge TTA: forward-only with ONNX Runtime, CEMA selection, parameter swaps.

Depends on numpy, grpc and the torch-free ``fedge.edge.runtime``/``fedge.proto`` only, as a phone app would.
Per batch: predict with the current parameters, pick samples with :class:`~fedge.edge.tta.selection.Selector`,
upload them, and when the cloud has published a newer version, decode it (hash- and backbone-checked) and
feed it to the same ONNX Runtime session as new adaptable inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from fedge.edge.tta.selection import Selector, softmax
from fedge.errors import FedgeError
from fedge.proto import codec
from fedge.proto import fedge_pb2 as pb
from fedge.proto import fedge_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class CloudError(FedgeError):
    """The adaptation service refused a request or stayed unreachable; ``code`` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class CloudClient:
    """A device's connection to the adaptation service, counting bytes and retrying while it is down."""

    def __init__(self, target: str, device_id: str, token: str, root_cert: bytes | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, timeout: float = 60.0,
                 retry_for: float = 60.0, server_name: str | None = None) -> None:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_cert is not None:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_cert), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.AdaptationStub(self.channel)
        self.device_id, self.token = device_id, token
        self.timeout, self.retry_for = timeout, retry_for
        self.bytes_up = self.bytes_down = self.calls = self.retries = 0

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                reply = method(request, timeout=self.timeout, wait_for_ready=True)
                break
            except grpc.RpcError as e:
                code = e.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                        and time.monotonic() < deadline:
                    self.retries += 1  # the cloud restarts or the network blips: the channel reconnects
                    time.sleep(0.5)
                    continue
                raise CloudError(code, e.details() or "") from None
        self.calls += 1
        self.bytes_up += request.ByteSize()
        self.bytes_down += reply.ByteSize()
        return reply

    def upload(self, samples: np.ndarray, batch_id: int, have_version: int) -> pb.UploadReply:
        """Send one batch of raw samples (uint8 N x C x H x W)."""
        req = pb.UploadRequest(device_id=self.device_id, token=self.token, batch_id=batch_id,
                               samples=codec.to_tensor("samples", samples), have_version=have_version)
        return self._call(self.stub.UploadSamples, req)

    def get_parameters(self, have_version: int) -> pb.ParametersReply:
        req = pb.ParametersRequest(device_id=self.device_id, token=self.token, have_version=have_version)
        return self._call(self.stub.GetParameters, req)

    def close(self) -> None:
        self.channel.close()


class EdgeDevice:
    """Forward-only test-time adaptation around an :class:`fedge.edge.runtime.EdgeModel`."""

    def __init__(self, model: Any, selector: Selector, client: CloudClient | None) -> None:
        self.model = model
        self.selector = selector
        self.client = client
        self.version = 0
        self.batch_id = 0
        self.swaps: list[dict[str, Any]] = []
        self.current: dict[str, np.ndarray] = {}
        self.backbone_hash = model.manifest.get("backbone_hash") or None

    def step(self, images: np.ndarray) -> np.ndarray:
        """Predict one batch of raw uint8 images (N, C, H, W); upload the selected ones; swap new params in."""
        logits = self.model.run(self.model.preprocess(images))
        mask = self.selector.select(softmax(logits))
        self.batch_id += 1
        if self.client is not None and mask.any():
            reply = self.client.upload(np.ascontiguousarray(images[mask]), self.batch_id, self.version)
            if reply.latest_version != self.version:
                self.pull()
        return logits

    def pull(self) -> bool:
        """Fetch and swap in the newest published parameters; returns whether anything changed."""
        if self.client is None:
            return False
        reply = self.client.get_parameters(self.version)
        if not reply.changed:
            return False
        params = codec.decode_bundle(reply.params, backbone_hash=self.backbone_hash)
        self.model.set_params(params)  # new feeds for the same ORT session: nothing is re-created
        self.version = reply.version
        self.current = params
        self.swaps.append({"version": int(reply.version), "sha256": reply.params.tensors_sha256})
        return True

    def report(self) -> dict[str, Any]:
        """Upload fraction, selection reasons, bytes up/down and the parameter versions swapped in."""
        c = self.client
        return {"seen": self.selector.seen, "uploaded": self.selector.uploaded,
                "upload_fraction": self.selector.fraction, "reasons": dict(self.selector.counts),
                "e_max": self.selector.e_max, "bytes_up": c.bytes_up if c else 0,
                "bytes_down": c.bytes_down if c else 0, "retries": c.retries if c else 0,
                "version": self.version, "swaps": self.swaps}

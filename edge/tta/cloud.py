"""The cloud adaptation service (``fed-edge cloud serve``): gRPC over TLS, per-device tokens, versioned params.

``UploadSamples`` validates a device's batch, runs one :class:`~fedge.edge.tta.distill.CloudAdapter` round and
publishes the edge copy's norm affines as a new version; ``GetParameters`` returns the newest version (or
``changed=False``). Every published version is written to ``state_dir`` (``v{N}.binpb`` + ``latest``), so a
restarted service continues its version numbers and adapted state, and tests can compare what the device
swapped in with what was published. Rejections are gRPC status codes with a one-line reason.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedge.errors import ConfigError, ValidationError
from fedge.proto import codec
from fedge.proto import fedge_pb2 as pb
from fedge.proto import fedge_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
UPLOAD_DTYPES = ("uint8", "float32")


@dataclass(frozen=True)
class ServiceLimits:
    """What an upload may look like: per-sample shape, dtypes, batch size and gRPC message size."""

    sample_shape: tuple[int, ...] = (1, 28, 28)
    max_batch: int = 256
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


def validate_samples(msg: pb.Tensor, limits: ServiceLimits) -> np.ndarray:
    """Decode an uploaded batch into float32 model input in [0, 1]; ``ValidationError`` with a reason if bad."""
    if msg.dtype not in UPLOAD_DTYPES:
        raise ValidationError("dtype", f"samples must be {' or '.join(UPLOAD_DTYPES)}, got {msg.dtype!r}")
    shape = tuple(msg.shape)
    if len(shape) != 1 + len(limits.sample_shape) or shape[1:] != limits.sample_shape:
        raise ValidationError("shape", f"samples must have shape (N, {', '.join(map(str, limits.sample_shape))}), "
                                       f"got {shape}")
    if not 1 <= shape[0] <= limits.max_batch:
        raise ValidationError("batch", f"batch size {shape[0]} is outside 1..{limits.max_batch}")
    arr = codec.from_tensor(msg)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValidationError("values", "float32 samples must be finite and in [0, 1]")
    return arr


class ParameterStore:
    """Versioned published parameters, persisted to ``state_dir`` (optional) as serialised bundles."""

    def __init__(self, state_dir: str | Path | None, backbone_hash: str) -> None:
        self.dir = Path(state_dir) if state_dir is not None else None
        self.backbone_hash = backbone_hash
        self.version = 0
        self.bundle: pb.AdapterBundle | None = None
        self.extra: dict[str, np.ndarray] = {}
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            latest = self.dir / "latest"
            if latest.is_file():
                self.version = int(latest.read_text().strip())
                self.bundle = pb.AdapterBundle.FromString((self.dir / f"v{self.version}.binpb").read_bytes())
                extra = self.dir / "foundation.npz"
                if extra.is_file():
                    self.extra = dict(np.load(extra))

    def publish(self, tensors: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray] | None = None) -> int:
        """Store ``tensors`` as version ``N+1`` (atomically on disk) and return ``N+1``."""
        bundle = codec.encode_bundle(tensors, self.version + 1, self.backbone_hash,
                                     specs=[{"kind": "film", "targets": ["*norm*"]}])
        if self.dir is not None:
            _atomic_write(self.dir / f"v{bundle.version}.binpb", bundle.SerializeToString())
            if extra is not None:
                tmp = self.dir / "foundation.tmp.npz"
                np.savez(tmp, **dict[str, Any](extra))
                tmp.replace(self.dir / "foundation.npz")
            _atomic_write(self.dir / "latest", f"{bundle.version}\n".encode())
        self.bundle, self.version = bundle, bundle.version
        return self.version

    def restored(self) -> dict[str, np.ndarray] | None:
        """The last published tensors when resuming from ``state_dir``."""
        return codec.decode_bundle(self.bundle) if self.bundle is not None else None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class AdaptationService(pb_grpc.AdaptationServicer):
    """The gRPC servicer: authenticate, validate, adapt (serialised by a lock), publish."""

    def __init__(self, adapter: Any, devices: Mapping[str, str], store: ParameterStore,
                 limits: ServiceLimits = ServiceLimits()) -> None:
        if not devices:
            raise ConfigError("the service needs at least one device id and token (--devices)")
        self.adapter = adapter
        self.devices = dict(devices)
        self.store = store
        self.limits = limits
        self.lock = threading.Lock()
        self.stats = {"uploads": 0, "samples": 0, "rejected": 0}
        restored = store.restored()
        if restored is not None and adapter is not None:
            adapter.load_params(restored, store.extra)
            log.info("resumed from %s at version %d", store.dir, store.version)

    def _authenticate(self, device_id: str, token: str, context: grpc.ServicerContext) -> None:
        want = self.devices.get(device_id)
        if want is None:
            self._reject(context, grpc.StatusCode.PERMISSION_DENIED, f"unknown device {device_id!r}; "
                         "register it in the service's --devices file")
            return
        if not hmac.compare_digest(want.encode(), token.encode()):
            self._reject(context, grpc.StatusCode.UNAUTHENTICATED, f"bad token for device {device_id!r}")

    def _reject(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        self.stats["rejected"] += 1
        context.abort(code, message)

    def UploadSamples(self, request: pb.UploadRequest, context: grpc.ServicerContext) -> pb.UploadReply:
        self._authenticate(request.device_id, request.token, context)
        try:
            x = validate_samples(request.samples, self.limits)
        except ValidationError as e:
            self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        with self.lock:
            if self.adapter is not None:
                self.adapter.adapt(x)
                self.store.publish(self.adapter.edge_params(), self.adapter.foundation_params())
            self.stats["uploads"] += 1
            self.stats["samples"] += len(x)
            return pb.UploadReply(accepted=len(x), latest_version=self.store.version)

    def GetParameters(self, request: pb.ParametersRequest, context: grpc.ServicerContext) -> pb.ParametersReply:
        self._authenticate(request.device_id, request.token, context)
        with self.lock:
            bundle, version = self.store.bundle, self.store.version
        if bundle is None or request.have_version == version:
            return pb.ParametersReply(version=version, changed=False)
        return pb.ParametersReply(version=version, changed=True, params=bundle)


def serve(service: AdaptationService, address: str = "127.0.0.1:0", tls: tuple[bytes, bytes] | None = None,
          workers: int = 4) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``service`` on ``address``; ``tls`` is (cert PEM, key PEM). Returns (server, port)."""
    limit = service.limits.max_message_bytes
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    pb_grpc.add_AdaptationServicer_to_server(service, server)
    if tls is not None:
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise ConfigError(f"cannot bind the adaptation service to {address}")
    server.start()
    return server, port

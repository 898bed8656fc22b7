"""The adaptation service over real gRPC on loopback: TLS, tokens, every rejection reason, restart/resume."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedge.edge.tta.cloud import AdaptationService, ParameterStore, ServiceLimits, serve
from fedge.edge.tta.device import CloudClient, CloudError
from fedge.edge.tta.tls import self_signed
from fedge.proto import codec
from fedge.proto import fedge_pb2 as pb
from fedge.proto import fedge_pb2_grpc as pb_grpc

DEVICES = {"phone-1": "s3cret", "phone-2": "other"}


class CountingAdapter:
    """Stands in for CloudAdapter: each upload shifts a bias by the batch mean, so versions differ."""

    def __init__(self) -> None:
        self.params = {"bn.weight": np.ones(4, np.float32), "bn.bias": np.zeros(4, np.float32)}

    def adapt(self, x: np.ndarray) -> dict:
        self.params["bn.bias"] = self.params["bn.bias"] + np.float32(x.mean())
        return {}

    def edge_params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def foundation_params(self) -> dict[str, np.ndarray]:
        return {}

    def load_params(self, edge: dict, foundation: dict | None = None) -> None:
        self.params = {k: np.array(v) for k, v in edge.items()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    return cert.read_bytes(), key.read_bytes()


def _start(certs, state_dir: Path | None = None, port: int = 0, limits: ServiceLimits | None = None):
    service = AdaptationService(CountingAdapter(), DEVICES, ParameterStore(state_dir, "hash0"),
                                limits or ServiceLimits())
    server, bound = serve(service, f"127.0.0.1:{port}", tls=certs)
    return service, server, bound


@pytest.fixture()
def running(certs):
    service, server, port = _start(certs)
    yield service, port
    server.stop(None)


def _client(port: int, certs, device: str = "phone-1", token: str = "s3cret", **kw) -> CloudClient:
    return CloudClient(f"127.0.0.1:{port}", device, token, root_cert=certs[0], retry_for=0, timeout=10, **kw)


def _samples(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def test_upload_publishes_a_new_version_and_params_roundtrip(running, certs) -> None:
    service, port = running
    client = _client(port, certs)
    reply = client.upload(_samples(), batch_id=1, have_version=0)
    assert reply.accepted == 4 and reply.latest_version == 1
    params = client.get_parameters(0)
    assert params.changed and params.version == 1
    got = codec.decode_bundle(params.params, backbone_hash="hash0")
    want = service.adapter.edge_params()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert not client.get_parameters(1).changed
    assert client.bytes_up > 4 * 784 and client.bytes_down > 0


def _code(fn) -> grpc.StatusCode:
    with pytest.raises(CloudError) as e:
        fn()
    return e.value.code


def test_unknown_device_is_permission_denied(running, certs) -> None:
    _, port = running
    assert _code(lambda: _client(port, certs, device="intruder").get_parameters(0)) == grpc.StatusCode.PERMISSION_DENIED


def test_bad_token_is_unauthenticated(running, certs) -> None:
    _, port = running
    assert _code(lambda: _client(port, certs, token="other").upload(_samples(), 1, 0)) == \
        grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("tensor, words", [
    (codec.to_tensor("s", np.zeros((2, 1, 28, 28), np.int32)), "dtype"),
    (codec.to_tensor("s", np.zeros((2, 1, 32, 32), np.uint8)), "shape"),
    (codec.to_tensor("s", np.zeros((2, 28, 28), np.uint8)), "shape"),
    (pb.Tensor(name="s", dtype="uint8", shape=[2, 1, 28, 28], data=b"\0" * 100), "bytes"),
    (codec.to_tensor("s", np.full((2, 1, 28, 28), np.nan, np.float32)), "values"),
    (codec.to_tensor("s", np.zeros((300, 1, 28, 28), np.uint8)), "batch"),
])
def test_bad_samples_are_invalid_argument(running, certs, tensor, words) -> None:
    service, port = running
    stub = pb_grpc.AdaptationStub(grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(certs[0])))
    with pytest.raises(grpc.RpcError) as e:
        stub.UploadSamples(pb.UploadRequest(device_id="phone-1", token="s3cret", samples=tensor), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in e.value.details()
    assert service.store.version == 0  # nothing was adapted or published


def test_oversized_message_is_resource_exhausted(certs) -> None:
    service, server, port = _start(certs, limits=ServiceLimits(max_batch=4096, max_message_bytes=64 * 1024))
    try:
        client = _client(port, certs)
        assert _code(lambda: client.upload(_samples(200), 1, 0)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.upload(_samples(8), 1, 0).accepted == 8  # below the limit is fine
    finally:
        server.stop(None)


def test_plaintext_client_cannot_talk_to_tls_service(running) -> None:
    _, port = running
    client = CloudClient(f"127.0.0.1:{port}", "phone-1", "s3cret", root_cert=None, retry_for=0, timeout=3)
    assert _code(lambda: client.get_parameters(0)) in (grpc.StatusCode.UNAVAILABLE,
                                                       grpc.StatusCode.DEADLINE_EXCEEDED)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_device_reconnects_after_restart_and_versions_continue(certs, tmp_path: Path) -> None:
    port = _free_port()
    _, server, _ = _start(certs, tmp_path / "state", port)
    client = CloudClient(f"127.0.0.1:{port}", "phone-1", "s3cret", root_cert=certs[0], retry_for=20, timeout=5)
    assert client.upload(_samples(), 1, 0).latest_version == 1
    published = client.get_parameters(0).params
    server.stop(None).wait()
    service, server, _ = _start(certs, tmp_path / "state", port)  # a new process would read the same state dir
    try:
        assert service.store.version == 1
        assert service.adapter.params["bn.bias"].tolist() == codec.decode_bundle(published)["bn.bias"].tolist()
        assert client.upload(_samples(), 2, 1).latest_version == 2  # same channel object, reconnected
        assert (tmp_path / "state" / "v2.binpb").is_file()
    finally:
        server.stop(None)

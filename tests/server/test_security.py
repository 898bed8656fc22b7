"""Local TLS certificates and node keys made by fedge.server.security."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedge.errors import ConfigError
from fedge.server.security import make_certificates, make_node_keys, read_public_key


def test_server_cert_is_signed_by_ca_for_loopback(tmp_path: Path) -> None:
    paths = make_certificates(tmp_path, hosts=["fed.example"])
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert {"localhost", "fed.example"} <= set(san.get_values_for_type(x509.DNSName))
    key = serialization.load_pem_private_key(paths["key"].read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert (paths["key"].stat().st_mode & 0o077) == 0
    with pytest.raises(ConfigError, match="already exist"):
        make_certificates(tmp_path)


def test_node_keys_are_openssh_p384(tmp_path: Path) -> None:
    priv, pub = make_node_keys(tmp_path, "alice")
    key = serialization.load_ssh_private_key(priv.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert read_public_key(pub).startswith(b"ecdsa-sha2-nistp384 ")
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(ConfigError):
        read_public_key(tmp_path / "bad.pub")

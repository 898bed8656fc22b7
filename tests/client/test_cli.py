"""fed-client pieces that need no server: key generation, local data, the SuperNode command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.client.cli import build_parser, main, prepare_data, supernode_command
from fedge.data.base import UserData
from fedge.errors import DataError
from fedge.server.task import load_user_data, save_user_data


def test_keygen_writes_a_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path), "--name", "alice"]) == 0
    assert (tmp_path / "alice").is_file() and (tmp_path / "alice.pub").is_file()
    assert main(["keygen", str(tmp_path), "--name", "alice"]) == 2  # refuses to overwrite
    assert "overwrite" in capsys.readouterr().err


def test_data_roundtrip_and_errors(tmp_path: Path) -> None:
    data = UserData("u7", np.random.rand(5, 1, 32, 32).astype(np.float32),
                    {"fine": np.eye(10, dtype=np.float32)[:5]})
    path = save_user_data(data, tmp_path / "d" / "data.npz")
    back = load_user_data(tmp_path / "d")
    assert back.user_id == "u7" and np.array_equal(back.images, data.images)
    assert np.array_equal(back.labels["fine"], data.labels["fine"])
    with pytest.raises(DataError, match="--data-dir"):
        load_user_data(tmp_path / "missing")
    args = build_parser().parse_args(["--server", "h:1", "--insecure", "--data-dir", str(path.parent),
                                      "--state-dir", str(tmp_path / "s")])
    args.state_dir.mkdir()
    assert len(load_user_data(prepare_data(args))) == 5


def test_supernode_command_uses_tls_and_node_key(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--server", "10.0.0.1:9092", "--root-cert", "ca.crt", "--key", "k",
                                      "--user-id", "u00001", "--state-dir", str(tmp_path)])
    cmd = supernode_command(args, tmp_path / "data.npz", 9999)
    assert cmd[cmd.index("--superlink") + 1] == "10.0.0.1:9092"
    assert cmd[cmd.index("--root-certificates") + 1] == "ca.crt"
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == "k"
    assert "--insecure" not in cmd and "data-path=" in cmd[cmd.index("--node-config") + 1]


def test_needs_exactly_one_of_tls_or_insecure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", "h:1", "--user-id", "u00001", "--state-dir", str(tmp_path)]) == 2
    assert "--root-cert" in capsys.readouterr().err

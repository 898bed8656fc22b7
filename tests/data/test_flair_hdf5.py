"""The FLAIR HDF5 reader against files in both published layouts.

The ``_upstream_*`` writers below transliterate the per-user loops of pfl-research's
``benchmarks/dataset/flair/download_preprocess.py`` and ml-flair's ``prepare_dataset.py``, so the
reader is checked against the real writers' keys and dtypes and not only against our own fixture.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedge.data.base import FederatedDataset
from fedge.data.flair_hdf5 import (
    LAYOUT_ML_FLAIR,
    LAYOUT_PFL,
    FlairHDF5Dataset,
    write_tiny_flair_hdf5,
)
from fedge.errors import DataError

LAYOUTS = [LAYOUT_PFL, LAYOUT_ML_FLAIR]


def _entries(hw: int = 6) -> list[dict]:
    """Per-image metadata like FLAIR's labels_and_metadata.json, plus the decoded image."""
    rng = np.random.default_rng(1)
    spec = [
        ("u1@N00", "train", ["animal", "people"], ["cat", "child"]),
        ("u1@N00", "train", [], []),
        ("u1@N00", "train", ["food"], ["pizza"]),
        ("u2@N00", "train", ["people"], ["adult", "child"]),
        ("u3@N00", "val", ["animal"], ["dog"]),
        ("u4@N00", "test", ["food", "animal", "people"], ["pizza", "dog", "adult"]),
    ]
    return [
        {
            "user_id": u,
            "partition": p,
            "image_id": f"img{i}",
            "labels": lab,
            "fine_grained_labels": fine,
            "image": rng.integers(0, 256, size=(hw, hw, 3), dtype=np.uint8),
        }
        for i, (u, p, lab, fine) in enumerate(spec)
    ]


def _by_user(entries: list[dict]) -> dict[str, list[dict]]:
    users: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        users[e["user_id"]].append(e)
    return users


def _upstream_pfl_write(path: Path, entries: list[dict]) -> None:
    label_counter: Counter = Counter()
    fine_counter: Counter = Counter()
    for e in entries:
        label_counter.update(e["labels"])
        fine_counter.update(e["fine_grained_labels"])
    label_to_index = {label: i for i, label in enumerate(sorted(label_counter.keys()))}
    fine_to_index = {label: i for i, label in enumerate(sorted(fine_counter.keys()))}
    with h5py.File(path, "w") as h5file:
        for user_id, metas in _by_user(entries).items():
            partition = metas[0]["partition"]
            image_array, image_id_array = [], []
            labels_row, labels_col, fine_row, fine_col = [], [], [], []
            for j, metadata in enumerate(metas):
                image_array.append(np.asarray(metadata["image"]))
                image_id_array.append(metadata["image_id"])
                labels_row.extend([j] * len(metadata["labels"]))
                labels_col.extend([label_to_index[x] for x in metadata["labels"]])
                fine_row.extend([j] * len(metadata["fine_grained_labels"]))
                fine_col.extend([fine_to_index[x] for x in metadata["fine_grained_labels"]])
            h5file[f"/{partition}/{user_id}/labels_row"] = np.asarray(labels_row, dtype=np.uint16)
            h5file[f"/{partition}/{user_id}/labels_col"] = np.asarray(labels_col, dtype=np.uint8)
            h5file[f"/{partition}/{user_id}/fine_grained_labels_row"] = np.asarray(fine_row, dtype=np.uint16)
            h5file[f"/{partition}/{user_id}/fine_grained_labels_col"] = np.asarray(fine_col, dtype=np.uint16)
            h5file[f"/{partition}/{user_id}/image_ids"] = np.asarray(image_id_array, dtype="S")
            h5file.create_dataset(f"/{partition}/{user_id}/images", data=np.stack(image_array))
        h5file["/metadata/label_mapping"] = json.dumps(label_to_index)
        h5file["/metadata/fine_grained_label_mapping"] = json.dumps(fine_to_index)


def _upstream_mlflair_write(path: Path, entries: list[dict]) -> None:
    label_counter: Counter = Counter()
    fine_counter: Counter = Counter()
    with h5py.File(path, "w") as h5file:
        for user_id, metas in _by_user(entries).items():
            image_array, image_id_array, labels_array, fine_array = [], [], [], []
            for metadata in metas:
                image_array.append(np.asarray(metadata["image"]))
                image_id_array.append(metadata["image_id"])
                labels_array.append("|".join(metadata["labels"]))
                fine_array.append("|".join(metadata["fine_grained_labels"]))
                label_counter.update(metadata["labels"])
                fine_counter.update(metadata["fine_grained_labels"])
            partition = metas[0]["partition"]
            h5file[f"/{partition}/{user_id}/labels"] = np.asarray(labels_array, dtype="S")
            h5file[f"/{partition}/{user_id}/fine_grained_labels"] = np.asarray(fine_array, dtype="S")
            h5file[f"/{partition}/{user_id}/image_ids"] = np.asarray(image_id_array, dtype="S")
            h5file.create_dataset(f"/{partition}/{user_id}/images", data=np.stack(image_array))
        h5file["/metadata/label_counter"] = json.dumps(label_counter)
        h5file["/metadata/fine_grained_label_counter"] = json.dumps(fine_counter)


def _decode(multi_hot: np.ndarray, names: list[str]) -> list[set[str]]:
    return [{names[i] for i in np.flatnonzero(row)} for row in multi_hot]


def _assert_round_trip(ds: FlairHDF5Dataset, truth: dict[str, dict]) -> None:
    for population in ("train", "val", "test"):
        expected = sorted(u for u, t in truth.items() if t["partition"] == population)
        assert list(ds.user_ids(population)) == expected
    for uid, t in truth.items():
        assert ds.num_examples(uid) == len(t["images"])
        user = ds.load_user(uid)
        assert user.user_id == uid and len(user) == len(t["images"])
        assert user.images.dtype == np.float32 and user.images.shape[1:] == ds.image_shape
        np.testing.assert_allclose(user.images, t["images"].transpose(0, 3, 1, 2) / 255.0, rtol=0, atol=1e-7)
        for label_set in ("coarse", "fine"):
            hot = user.labels[label_set]
            assert hot.dtype == np.float32 and hot.shape == (len(t["images"]), len(ds.label_names[label_set]))
            assert set(np.unique(hot)) <= {0.0, 1.0}
            assert _decode(hot, ds.label_names[label_set]) == [set(ls) for ls in t[label_set]]


def _truth_from_entries(entries: list[dict]) -> dict[str, dict]:
    return {
        uid: {
            "partition": metas[0]["partition"],
            "images": np.stack([m["image"] for m in metas]),
            "coarse": [m["labels"] for m in metas],
            "fine": [m["fine_grained_labels"] for m in metas],
        }
        for uid, metas in _by_user(entries).items()
    }


@pytest.mark.parametrize(
    ("writer", "layout"), [(_upstream_pfl_write, LAYOUT_PFL), (_upstream_mlflair_write, LAYOUT_ML_FLAIR)]
)
def test_reads_files_from_the_upstream_writers(tmp_path: Path, writer, layout: str) -> None:
    entries = _entries()
    path = tmp_path / "flair.hdf5"
    writer(path, entries)
    ds = FlairHDF5Dataset(path)
    assert ds.layout == layout
    assert isinstance(ds, FederatedDataset)
    assert ds.image_shape == (3, 6, 6)
    assert ds.label_names == {
        "coarse": ["animal", "food", "people"],
        "fine": ["adult", "cat", "child", "dog", "pizza"],
    }
    _assert_round_trip(ds, _truth_from_entries(entries))


def test_fixture_writer_matches_the_pfl_research_layout(tmp_path: Path) -> None:
    path = tmp_path / "pfl.hdf5"
    truth = write_tiny_flair_hdf5(path, layout=LAYOUT_PFL)
    with h5py.File(path, "r") as h5:
        assert set(h5.keys()) == {"train", "val", "test", "metadata"}
        for stem, key, label_set in [
            ("labels", "label_mapping", "coarse"),
            ("fine_grained_labels", "fine_grained_label_mapping", "fine"),
        ]:
            mapping = json.loads(h5["metadata"][key][()])
            assert h5py.check_string_dtype(h5["metadata"][key].dtype) is not None
            assert list(mapping) == sorted(mapping) and list(mapping.values()) == list(range(len(mapping)))
            for uid, t in truth.items():
                g = h5[t["partition"]][uid]
                assert set(g.keys()) == {
                    "images",
                    "image_ids",
                    "labels_row",
                    "labels_col",
                    "fine_grained_labels_row",
                    "fine_grained_labels_col",
                }
                assert g["images"].dtype == np.uint8 and g["images"].shape == t["images"].shape
                assert g["image_ids"].dtype.kind == "S"
                assert g[f"{stem}_row"].dtype == np.uint16
                assert g[f"{stem}_col"].dtype == (np.uint8 if stem == "labels" else np.uint16)
                names = {v: k for k, v in mapping.items()}
                pairs = sorted(zip(g[f"{stem}_row"][()].tolist(), (names[c] for c in g[f"{stem}_col"][()])))
                assert pairs == sorted((j, lab) for j, ls in enumerate(t[label_set]) for lab in ls)


def test_fixture_writer_matches_the_ml_flair_layout(tmp_path: Path) -> None:
    path = tmp_path / "mlflair.hdf5"
    truth = write_tiny_flair_hdf5(path, layout=LAYOUT_ML_FLAIR)
    with h5py.File(path, "r") as h5:
        assert set(h5["metadata"].keys()) == {"label_counter", "fine_grained_label_counter"}
        for stem, key, label_set in [
            ("labels", "label_counter", "coarse"),
            ("fine_grained_labels", "fine_grained_label_counter", "fine"),
        ]:
            counter = json.loads(h5["metadata"][key][()])
            assert counter == dict(Counter(lab for t in truth.values() for ls in t[label_set] for lab in ls))
            for uid, t in truth.items():
                g = h5[t["partition"]][uid]
                assert set(g.keys()) == {"images", "image_ids", "labels", "fine_grained_labels"}
                assert g["images"].dtype == np.uint8 and g[stem].dtype.kind == "S"
                assert [s.decode() for s in g[stem][()]] == ["|".join(ls) for ls in t[label_set]]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fixture_round_trips_with_multi_label_images(tmp_path: Path, layout: str) -> None:
    truth = write_tiny_flair_hdf5(tmp_path / "f.hdf5", layout=layout, image_hw=16)
    assert any(len(ls) > 1 for t in truth.values() for ls in t["fine"])
    assert any(len(ls) == 0 for t in truth.values() for ls in t["fine"])
    ds = FlairHDF5Dataset(tmp_path / "f.hdf5")
    assert ds.layout == layout and ds.image_shape == (3, 16, 16)
    for names in ds.label_names.values():
        assert names == sorted(names)
    _assert_round_trip(ds, truth)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pickles_and_reopens_the_file(tmp_path: Path, layout: str) -> None:
    write_tiny_flair_hdf5(tmp_path / "f.hdf5", layout=layout)
    ds = FlairHDF5Dataset(tmp_path / "f.hdf5")
    before = ds.load_user("10001@N01")
    clone = pickle.loads(pickle.dumps(ds))
    after = clone.load_user("10001@N01")
    np.testing.assert_array_equal(before.images, after.images)
    ds.close()
    assert ds.num_examples("10001@N01") == 3  # reopens after close


def test_image_size_downscales(tmp_path: Path) -> None:
    write_tiny_flair_hdf5(tmp_path / "f.hdf5", image_hw=16)
    ds = FlairHDF5Dataset(tmp_path / "f.hdf5", image_size=4)
    assert ds.image_shape == (3, 4, 4)
    user = ds.load_user("10001@N01")
    assert user.images.shape == (3, 3, 4, 4) and user.images.dtype == np.float32
    assert 0.0 <= user.images.min() and user.images.max() <= 1.0


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*FEDGE_FLAIR_HDF5"):
        FlairHDF5Dataset(tmp_path / "nope.hdf5")


def test_not_hdf5(tmp_path: Path) -> None:
    (tmp_path / "f.hdf5").write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        FlairHDF5Dataset(tmp_path / "f.hdf5")


def test_unknown_layout(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "f.hdf5", "w") as h5:
        h5["/metadata/something"] = "x"
        h5["/train/u/x"] = np.zeros(3)
    with pytest.raises(DataError, match=r"not a FLAIR file in a known layout.*label_mapping.*label_counter"):
        FlairHDF5Dataset(tmp_path / "f.hdf5")


def test_central_layout_is_refused(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "f.hdf5", "w") as h5:
        h5.create_dataset("/train/img1/image", data=np.zeros((4, 4, 3), np.uint8))
        h5["/train/img1/labels"] = "animal"
        h5["/train/img1/fine_grained_labels"] = "cat"
        h5["/train/img1/user_id"] = "u1"
        h5["/metadata/label_counter"] = json.dumps({"animal": 1})
        h5["/metadata/fine_grained_label_counter"] = json.dumps({"cat": 1})
    with pytest.raises(DataError, match="--not_group_data_by_user"):
        FlairHDF5Dataset(tmp_path / "f.hdf5")


@pytest.mark.parametrize(
    ("layout", "key"), [(LAYOUT_PFL, "labels_col"), (LAYOUT_ML_FLAIR, "fine_grained_labels")]
)
def test_missing_keys(tmp_path: Path, layout: str, key: str) -> None:
    write_tiny_flair_hdf5(tmp_path / "f.hdf5", layout=layout)
    with h5py.File(tmp_path / "f.hdf5", "a") as h5:
        del h5[f"/train/10002@N02/{key}"]  # not the first user, so the layout check passes
    ds = FlairHDF5Dataset(tmp_path / "f.hdf5")
    with pytest.raises(DataError, match=f"lacks '{key}'"):
        ds.load_user("10002@N02")
    ds.close()
    with h5py.File(tmp_path / "f.hdf5", "a") as h5:
        del h5[f"/train/10001@N01/{key}"]
    with pytest.raises(DataError, match=rf"lacks \['{key}'\]"):
        FlairHDF5Dataset(tmp_path / "f.hdf5")


def test_unknown_user_and_population(tmp_path: Path) -> None:
    write_tiny_flair_hdf5(tmp_path / "f.hdf5")
    ds = FlairHDF5Dataset(tmp_path / "f.hdf5")
    with pytest.raises(DataError, match="unknown FLAIR user id 'nobody'.*user_ids"):
        ds.load_user("nobody")
    with pytest.raises(DataError, match="unknown FLAIR user id"):
        ds.num_examples("nobody")
    with pytest.raises(DataError, match="unknown population 'validation'"):
        ds.user_ids("validation")


def test_h5py_is_imported_lazily() -> None:
    code = "import sys, fedge.data.flair_hdf5; print('h5py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_path_defaults_to_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tiny_flair_hdf5(tmp_path / "f.hdf5")
    monkeypatch.setenv("FEDGE_FLAIR_HDF5", str(tmp_path / "f.hdf5"))
    assert FlairHDF5Dataset().user_ids("val") == ["20001@N03"]

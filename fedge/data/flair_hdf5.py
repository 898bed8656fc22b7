"""Read the real FLAIR HDF5 file (both published layouts) through fedge's per-user interface.

Layouts, as written by (read from the writers' source, not guessed):

* ``pfl-research`` -- apple/pfl-research ``benchmarks/dataset/flair/download_preprocess.py``
  (``preprocess_federated_dataset``; same keys in the earlier ``prepare_dataset.py``), read by
  ``benchmarks/dataset/flair/common.py``::

    /{partition}/{user_id}/images                   uint8 (N, H, W, 3), raw pixels (np.asarray(PIL image))
    /{partition}/{user_id}/image_ids                fixed-length bytes 'S'
    /{partition}/{user_id}/labels_row               uint16, image index within the user
    /{partition}/{user_id}/labels_col               uint8, coarse label index
    /{partition}/{user_id}/fine_grained_labels_row  uint16
    /{partition}/{user_id}/fine_grained_labels_col  uint16
    /metadata/label_mapping                         scalar vlen str, json {label: index}, index = sorted order
    /metadata/fine_grained_label_mapping            same for fine labels

* ``ml-flair`` -- apple/ml-flair ``prepare_dataset.py`` (``preprocess_federated_dataset``)::

    /{partition}/{user_id}/images                   uint8 (N, H, W, 3)
    /{partition}/{user_id}/image_ids                fixed-length bytes 'S'
    /{partition}/{user_id}/labels                   fixed-length bytes 'S', one '|'-joined string per image
    /{partition}/{user_id}/fine_grained_labels      same for fine labels
    /metadata/label_counter                         scalar vlen str, json {label: count}
    /metadata/fine_grained_label_counter            same for fine labels

  Label indices follow ml-flair ``prepare_tfrecords.py``: ``sorted(counter.keys())``.

In both, ``partition`` is ``train``/``val``/``test`` and the user id is the group name. The
``--not_group_data_by_user`` (central) variants of both scripts are not federated and are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedge.data.base import POPULATIONS, UserData
from fedge.errors import DataError

LAYOUT_PFL = "pfl-research"
LAYOUT_ML_FLAIR = "ml-flair"
LABEL_DELIMITER = "|"
#: fedge label-set name -> (per-user key stem, pfl-research metadata key, ml-flair metadata key)
_LABEL_SETS = {
    "coarse": ("labels", "label_mapping", "label_counter"),
    "fine": ("fine_grained_labels", "fine_grained_label_mapping", "fine_grained_label_counter"),
}
_USER_KEYS = {
    LAYOUT_PFL: ("images", "labels_row", "labels_col", "fine_grained_labels_row", "fine_grained_labels_col"),
    LAYOUT_ML_FLAIR: ("images", "labels", "fine_grained_labels"),
}
_HINT = "build it with pfl-research's benchmarks/dataset/flair/download_preprocess.py or ml-flair's prepare_dataset.py"


def default_flair_path() -> Path:
    """``$FEDGE_FLAIR_HDF5`` if set, else ``$FEDGE_HOME/flair/flair_federated.hdf5``."""
    env = os.environ.get("FEDGE_FLAIR_HDF5")
    if env:
        return Path(env).expanduser()
    from fedge.paths import fedge_home

    return fedge_home() / "flair" / "flair_federated.hdf5"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a pinned dependency
        raise DataError("reading FLAIR needs h5py; install it with `pip install h5py`") from e
    return h5py


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _json_meta(h5: Any, key: str) -> dict[str, int]:
    try:
        return json.loads(_text(h5["metadata"][key][()]))
    except (ValueError, TypeError) as e:
        raise DataError(f"/metadata/{key} in {h5.filename} is not a JSON object ({e}); {_HINT}") from e


def _detect_layout(h5: Any) -> str:
    meta = set(h5["metadata"].keys()) if "metadata" in h5 else set()
    if {"label_mapping", "fine_grained_label_mapping"} <= meta:
        layout = LAYOUT_PFL
    elif {"label_counter", "fine_grained_label_counter"} <= meta:
        layout = LAYOUT_ML_FLAIR
    else:
        raise DataError(
            f"{h5.filename} is not a FLAIR file in a known layout: /metadata has {sorted(meta) or 'nothing'}, "
            "expected label_mapping + fine_grained_label_mapping (pfl-research) or label_counter + "
            f"fine_grained_label_counter (ml-flair); {_HINT}"
        )
    for part in POPULATIONS:
        if part in h5 and len(h5[part]):
            first = h5[part][next(iter(h5[part].keys()))]
            keys = set(first.keys()) if hasattr(first, "keys") else set()
            if "image" in keys and "user_id" in keys:
                raise DataError(
                    f"{h5.filename} is the central (not grouped by user) FLAIR layout; rebuild it without "
                    "--not_group_data_by_user"
                )
            missing = sorted(set(_USER_KEYS[layout]) - keys)
            if missing:
                raise DataError(
                    f"{h5.filename} looks like the {layout} layout but user group {first.name} lacks {missing} "
                    f"(has {sorted(keys)}); {_HINT}"
                )
            return layout
    raise DataError(f"{h5.filename} has no users under /train, /val or /test; {_HINT}")


def _label_names(h5: Any, layout: str) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for label_set, (_, pfl_key, counter_key) in _LABEL_SETS.items():
        if layout == LAYOUT_PFL:
            mapping = _json_meta(h5, pfl_key)
            if sorted(mapping.values()) != list(range(len(mapping))):
                raise DataError(
                    f"/metadata/{pfl_key} in {h5.filename} is not a label -> index mapping (indices must be "
                    f"0..{len(mapping) - 1}); was the file built with --not_group_data_by_user?"
                )
            names[label_set] = sorted(mapping, key=mapping.__getitem__)
        else:
            names[label_set] = sorted(_json_meta(h5, counter_key))
    return names


class FlairHDF5Dataset:
    """The real FLAIR HDF5 file as a :class:`~fedge.data.base.FederatedDataset`.

    The file is opened on first use (and again after unpickling or in a forked child); only
    label names and user ids are kept in memory, each user's images are read on request.
    ``image_size`` downscales images to ``image_size x image_size`` (FLAIR's are 256x256).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, image_size: int | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_flair_path()
        if not self.path.is_file():
            raise DataError(
                f"FLAIR HDF5 file {self.path} does not exist; pass its path or set FEDGE_FLAIR_HDF5 ({_HINT})"
            )
        if image_size is not None and image_size < 1:
            raise DataError(f"image_size must be a positive integer, got {image_size}")
        self.image_size = image_size
        self._h5: Any = None
        self._pid = -1
        self._ids: dict[str, list[str]] = {}
        self._where: dict[str, str] | None = None
        h5 = self._file()
        self.layout = _detect_layout(h5)
        self.label_names: dict[str, list[str]] = _label_names(h5, self.layout)
        self._index = {s: {n: i for i, n in enumerate(ns)} for s, ns in self.label_names.items()}
        first = next(h5[p] for p in POPULATIONS if p in h5 and len(h5[p]))
        shape = first[next(iter(first.keys()))]["images"].shape
        height, width = shape[1:3]
        channels = 3 if len(shape) == 3 else shape[3]
        if image_size is not None:
            height = width = image_size
        self.image_shape: tuple[int, int, int] = (int(channels), int(height), int(width))

    def _file(self) -> Any:
        # h5py handles must not cross fork() or pickling, so reopen per process.
        if self._h5 is None or self._pid != os.getpid():
            h5py = _h5py()
            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as e:
                raise DataError(f"{self.path} is not a readable HDF5 file ({e}); {_HINT}") from e
            self._pid = os.getpid()
        return self._h5

    def user_ids(self, population: str) -> list[str]:
        """Sorted user ids of ``train``, ``val`` or ``test``."""
        if population not in POPULATIONS:
            raise DataError(f"unknown population {population!r}; FLAIR has {list(POPULATIONS)}")
        if population not in self._ids:
            h5 = self._file()
            self._ids[population] = sorted(h5[population].keys()) if population in h5 else []
        return list(self._ids[population])

    def _group(self, user_id: str) -> Any:
        if self._where is None:
            self._where = {u: p for p in POPULATIONS for u in self.user_ids(p)}
        if user_id not in self._where:
            raise DataError(
                f"unknown FLAIR user id {user_id!r} in {self.path}; take ids from user_ids('train'|'val'|'test')"
            )
        return self._file()[self._where[user_id]][user_id]

    def num_examples(self, user_id: str) -> int:
        """Number of images of one user (reads only the dataset's shape)."""
        return int(self._dataset(self._group(user_id), "images").shape[0])

    def _dataset(self, group: Any, key: str) -> Any:
        if key not in group:
            raise DataError(
                f"{self.path}: user group {group.name} lacks {key!r} ({self.layout} layout); {_HINT}"
            )
        return group[key]

    def load_user(self, user_id: str) -> UserData:
        """One user's images (float32 NCHW in [0, 1]) and coarse/fine multi-hot labels."""
        group = self._group(user_id)
        raw = np.asarray(self._dataset(group, "images")[()])
        if raw.dtype != np.uint8 or raw.ndim not in (3, 4):
            raise DataError(f"{group.name}/images is {raw.dtype} {raw.shape}, expected uint8 (N, H, W, 3)")
        if raw.ndim == 3:  # grayscale user: replicate to the RGB the rest of the file has
            raw = np.repeat(raw[..., None], 3, axis=-1)
        images = np.ascontiguousarray(raw.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
        if self.image_size is not None and images.shape[-2:] != (self.image_size, self.image_size):
            images = _resize(images, self.image_size)
        labels = {name: self._multi_hot(group, name, len(images)) for name in self.label_names}
        return UserData(user_id=user_id, images=images, labels=labels)

    def _multi_hot(self, group: Any, label_set: str, n: int) -> np.ndarray:
        stem = _LABEL_SETS[label_set][0]
        out = np.zeros((n, len(self.label_names[label_set])), dtype=np.float32)
        if self.layout == LAYOUT_PFL:
            rows = np.asarray(self._dataset(group, f"{stem}_row")[()], dtype=np.int64)
            cols = np.asarray(self._dataset(group, f"{stem}_col")[()], dtype=np.int64)
            if rows.shape != cols.shape or (rows.size and (rows.max() >= n or cols.max() >= out.shape[1])):
                raise DataError(f"{group.name}/{stem}_row/_col do not fit {n} images x {out.shape[1]} labels")
            out[rows, cols] = 1.0
            return out
        strings = self._dataset(group, stem)[()]
        if len(strings) != n:
            raise DataError(f"{group.name}/{stem} has {len(strings)} entries for {n} images")
        index = self._index[label_set]
        for row, joined in enumerate(strings):
            for label in filter(None, _text(joined).split(LABEL_DELIMITER)):
                if label not in index:
                    raise DataError(f"{group.name}/{stem}: label {label!r} is missing from /metadata")
                out[row, index[label]] = 1.0
        return out

    def close(self) -> None:
        """Close the file handle (it reopens on next use)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __enter__(self) -> FlairHDF5Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_h5": None, "_pid": -1}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = F.interpolate(torch.from_numpy(images), size=(size, size), mode="bilinear", antialias=True)
    return out.clamp_(0.0, 1.0).numpy()


# A small FLAIR-like vocabulary for fixtures: fine label -> its coarse label.
_TINY_FINE_TO_COARSE = {
    "cat": "animal", "dog": "animal", "bread": "food", "ice_cream": "food",
    "tree": "plant", "flower": "plant", "bridge": "structure", "car": "vehicle",
}  # fmt: skip


def write_tiny_flair_hdf5(
    path: str | os.PathLike[str],
    layout: str = LAYOUT_PFL,
    users: dict[str, tuple[str, int]] | None = None,
    image_hw: int = 8,
    seed: int = 0,
    vocabulary: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write a tiny FLAIR file in ``layout`` with the real writers' keys and dtypes (test/demo fixture).

    ``users`` maps user id -> (partition, number of images); ``vocabulary`` maps fine label -> coarse label
    (default: 8 fine / 5 coarse). Returns, per user, the ground truth: ``partition``, ``images`` (uint8
    NHWC) and ``coarse``/``fine`` (a list of label lists per image).
    """
    if layout not in _USER_KEYS:
        raise DataError(f"unknown FLAIR layout {layout!r}; choose {LAYOUT_PFL!r} or {LAYOUT_ML_FLAIR!r}")
    h5py = _h5py()
    users = users or {"10001@N01": ("train", 3), "10002@N02": ("train", 1), "20001@N03": ("val", 2),
                      "30001@N04": ("test", 2)}  # fmt: skip
    rng = np.random.default_rng(seed)
    fine_to_coarse = vocabulary or _TINY_FINE_TO_COARSE
    fine_vocab = list(fine_to_coarse)
    truth: dict[str, dict[str, Any]] = {}
    for uid, (partition, n) in users.items():
        # 0 to 3 fine labels per image (FLAIR has unlabelled and multi-label images); coarse follow.
        sizes = rng.choice(4, size=n, p=[0.15, 0.35, 0.3, 0.2])
        fine = [sorted(str(f) for f in rng.choice(fine_vocab, size=k, replace=False)) for k in sizes]
        coarse = [sorted({fine_to_coarse[f] for f in fs}) for fs in fine]
        images = rng.integers(0, 256, size=(n, image_hw, image_hw, 3), dtype=np.uint8)
        truth[uid] = {"partition": partition, "images": images, "coarse": coarse, "fine": fine}
    stems = {"coarse": "labels", "fine": "fine_grained_labels"}
    counters: dict[str, dict[str, int]] = {s: {} for s in stems}
    for t in truth.values():
        for s in stems:
            for labels in t[s]:
                for label in labels:
                    counters[s][label] = counters[s].get(label, 0) + 1
    to_index = {s: {label: i for i, label in enumerate(sorted(c))} for s, c in counters.items()}
    with h5py.File(path, "w") as h5:
        for uid, t in truth.items():
            g = f"/{t['partition']}/{uid}"
            h5[f"{g}/image_ids"] = np.asarray([f"{uid}-{j}" for j in range(len(t["images"]))], dtype="S")
            h5.create_dataset(f"{g}/images", data=t["images"])
            for s, stem in stems.items():
                if layout == LAYOUT_ML_FLAIR:
                    h5[f"{g}/{stem}"] = np.asarray([LABEL_DELIMITER.join(ls) for ls in t[s]], dtype="S")
                    continue
                rows = [j for j, ls in enumerate(t[s]) for _ in ls]
                cols = [to_index[s][label] for ls in t[s] for label in ls]
                h5[f"{g}/{stem}_row"] = np.asarray(rows, dtype=np.uint16)
                h5[f"{g}/{stem}_col"] = np.asarray(cols, dtype=np.uint8 if s == "coarse" else np.uint16)
        for s, (_, pfl_key, counter_key) in _LABEL_SETS.items():
            if layout == LAYOUT_PFL:
                h5[f"/metadata/{pfl_key}"] = json.dumps(to_index[s])
            else:
                h5[f"/metadata/{counter_key}"] = json.dumps(counters[s])
    return truth

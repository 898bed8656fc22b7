"""Real inputs for the edge steps: calibration, validation and test arrays of the default FLAIR-style task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TaskSplits:
    """Preprocessed float32 NCHW images and multi-hot labels of one label set."""

    calibration: np.ndarray
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    labels: list[str]
    multilabel: bool = True


def flair_style_splits(
    label_set: str = "fine", num_users: int = 1000, seed: int = 0, calibration_samples: int = 256,
    max_eval_users: int | None = None,
) -> TaskSplits:
    """Calibration from train users (never test), validation (method choice) and test (reported) populations."""
    from fedge.data.flair_style import FlairStyleDataset

    ds = FlairStyleDataset(num_users=num_users, seed=seed)
    calib: list[np.ndarray] = []
    n = 0
    for user in ds.user_ids("train"):
        images = ds.load_user(user).images
        calib.append(images)
        n += len(images)
        if n >= calibration_samples:
            break
    val = ds.pooled("val", max_eval_users)
    test = ds.pooled("test", max_eval_users)
    return TaskSplits(np.concatenate(calib)[:calibration_samples], (val.images, val.labels[label_set]),
                      (test.images, test.labels[label_set]), list(ds.label_names[label_set]))

"""``synthetic``: a tiny deterministic dataset for tests (no files, milliseconds).

3x16x16 RGB, 10 classes, 640 train and 160 test images. Each class is a fixed smooth
pattern (two sine gratings per channel with class-specific frequencies, phases and
tint) plus pixel noise, so a small CNN learns it in a few epochs but not trivially.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.data._api import DATASETS, Source, make_split
from edgeopt.data._module import Augment
from edgeopt.errors import ConfigError

NUM_CLASSES, SIZE, N_TRAIN, N_TEST = 10, 16, 640, 160


def _make(n: int, rng: np.random.Generator, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % NUM_CLASSES  # balanced: n / 10 per class
    rng.shuffle(labels)
    noise = rng.normal(0.0, 28.0, size=(n, 3, SIZE, SIZE))
    x = 128.0 + templates[labels] + noise  # [n, 3, 16, 16] on the 0..255 scale
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), labels.astype(np.int64)


def synthetic_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_x, train_y, test_x, test_y)``: uint8 ``[N, 3, 16, 16]`` and int64 labels.

    Example:
        >>> tx, ty, vx, vy = synthetic_arrays()
        >>> tx.shape, vx.shape
        ((640, 3, 16, 16), (160, 3, 16, 16))
    """
    rng = np.random.default_rng(20240601)  # fixed: the dataset never changes
    yy, xx = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    templates = np.zeros((NUM_CLASSES, 3, SIZE, SIZE))
    for c in range(NUM_CLASSES):
        for k in range(3):
            for _ in range(2):  # two low-frequency gratings: robust to a 1-2 pixel shift
                fy, fx = rng.uniform(-1.5, 1.5, size=2)
                phase = rng.uniform(0, 2 * np.pi)
                templates[c, k] += 30.0 * np.sin(2 * np.pi * (fy * yy + fx * xx) / SIZE + phase)
            templates[c, k] += rng.uniform(-25.0, 25.0)  # class tint per channel
    tx, ty = _make(N_TRAIN, rng, templates)
    vx, vy = _make(N_TEST, rng, templates)
    return tx, ty, vx, vy


@DATASETS.register("synthetic", help="tests only: deterministic 3x16x16, 10 classes, 640/160")
def load_synthetic(arg: str | None, root: Path | None, download: bool) -> Source:
    """The synthetic dataset (``root`` and ``download`` are ignored)."""
    if arg:
        raise ConfigError(f"dataset 'synthetic' takes no argument, got 'synthetic:{arg}'")
    tx, ty, vx, vy = synthetic_arrays()
    return Source(
        train=make_split(tx, ty),
        test=make_split(vx, vy),
        class_names=tuple(f"class{i}" for i in range(NUM_CLASSES)),
        augment=Augment(pad=1, flip=False),  # flipping would change the class pattern
        where="generated",
    )

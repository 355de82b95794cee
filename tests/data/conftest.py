"""Fixtures for the data tests: an isolated cache folder and tiny image trees on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every data test writes its caches under tmp_path, never into ~/.cache."""
    cache = tmp_path / "edgeopt-cache"
    monkeypatch.setenv("EDGEOPT_CACHE", str(cache))
    monkeypatch.delenv("EDGEOPT_DATA", raising=False)
    return cache


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct flat colour per class, so a test can read the label back from pixels."""
    return (40 * label + 20, 255 - 40 * label, (90 * label) % 256)


def write_tree(
    root: Path,
    splits: dict[str, int],
    classes: tuple[str, ...] = ("cat", "dog", "emu"),
    size: tuple[int, int] = (10, 12),  # (H, W)
    mode: str = "RGB",
) -> Path:
    """Write ``root/<split>/<class>/NN.png`` flat-colour images; returns ``root``."""
    from PIL import Image

    for split, per_class in splits.items():
        for label, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                colour = class_colour(label)
                img = Image.new("RGB", (size[1], size[0]), colour)
                if mode == "L":
                    img = img.convert("L")
                img.save(d / f"{i:02d}.png")
    return root


@pytest.fixture
def image_tree(tmp_path):
    """A tiny RGB tree: train 4 and test 2 images per class, 3 classes, 10x12 PNGs."""
    return write_tree(tmp_path / "tree", {"train": 4, "test": 2})


def rows(images, labels) -> list[bytes]:
    """Each (image, label) as bytes, for set and multiset comparisons of splits."""
    x = np.ascontiguousarray(images.numpy()).reshape(len(images), -1)
    return [r.tobytes() + int(y).to_bytes(2, "little") for r, y in zip(x, labels.tolist())]


@pytest.fixture
def make_tree():
    """The :func:`write_tree` helper, as a fixture (test modules cannot import conftest)."""
    return write_tree


@pytest.fixture
def split_rows():
    """The :func:`rows` helper, as a fixture."""
    return rows


@pytest.fixture
def colour_of():
    """The :func:`class_colour` helper, as a fixture."""
    return class_colour

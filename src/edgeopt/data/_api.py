"""The DATASETS registry, ``get_dataset`` and the helpers every dataset family shares.

A family registers a loader ``(arg, root, download) -> Source``: the source's own train
and test splits, class names, and optionally standard mean/std. ``get_dataset`` then
carves a seeded, stratified val split from train and builds the ModelSpec, so every
family splits and normalises the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgeopt.data._module import Augment, DataModule, Split
from edgeopt.errors import ConfigError, DataError
from edgeopt.registry import Registry
from edgeopt.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class Source:
    """What a dataset family loads: its own train/test splits and metadata."""

    train: Split
    test: Split
    class_names: tuple[str, ...]
    augment: Augment
    mean: tuple[float, ...] | None = None  # None: computed from the train split
    std: tuple[float, ...] | None = None
    val: Split | None = None  # a val split the source ships (image folders with val/ and test/)
    where: str = ""  # where it was read from, for messages and repr


Loader = Callable[[str | None, Path | None, bool], Source]

DATASETS: Registry[Loader] = Registry("dataset")


def cache_dir() -> Path:
    """edgeopt's cache folder: ``$EDGEOPT_CACHE`` or ``~/.cache/edgeopt``.

    Example:
        >>> cache_dir().name in ("edgeopt",) or True
        True
    """
    env = os.environ.get("EDGEOPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeopt"


def data_roots(name: str, root: Path | None) -> list[Path]:
    """Folders searched for dataset ``name``: ``root``, ``$EDGEOPT_DATA/name``, the cache."""
    out = [root] if root is not None else []
    env = os.environ.get("EDGEOPT_DATA")
    if env:
        out.append(Path(env).expanduser() / name)
    out.append(cache_dir() / name)
    return out


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of positions into ``(keep, held)``, ``fraction`` of each class held.

    Each class contributes ``round(fraction * count)`` samples, so class balance is kept.
    Both index arrays are sorted.

    Example:
        >>> keep, held = stratified_split(np.array([0, 0, 1, 1]), 0.5, seed=0)
        >>> len(keep), len(held)
        (2, 2)
    """
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        k = round(fraction * len(pos))
        held.append(rng.permutation(pos)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[held_idx] = False
    return np.flatnonzero(mask).astype(np.int64), held_idx.astype(np.int64)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 ``[N, C, H, W]`` images on the 0..1 scale.

    Computed exactly from a 256-bin histogram per channel: far faster than a float copy
    of 50,000 CIFAR images (600 MB) and free of rounding drift. Rounded to 4 decimals
    so the spec prints and compares cleanly.

    Example:
        >>> channel_stats(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1))
        ((0.5,), (0.5,))
    """
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = max(1.0, float(hist.sum()))
        mean = float((hist * levels).sum()) / n
        var = float((hist * (levels - mean) ** 2).sum()) / n
        means.append(round(mean, 4))
        stds.append(round(max(var, 1e-12) ** 0.5, 4) or 1e-3)
    return tuple(means), tuple(stds)


def make_split(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> Split:
    """A Split from numpy or torch uint8 images ``[N, C, H, W]`` and integer labels."""
    if isinstance(images, np.ndarray):
        # Copy read-only (np.frombuffer) or strided arrays: torch needs writable memory.
        images = np.ascontiguousarray(images) if images.flags.writeable else np.array(images)
    x = torch.as_tensor(images)
    y = torch.as_tensor(
        np.asarray(labels, dtype=np.int64) if isinstance(labels, np.ndarray) else labels
    )
    return Split(x, y.to(torch.int64))


def parse_name(name: str) -> tuple[str, str | None]:
    """``"imagefolder:/data/x"`` -> ``("imagefolder", "/data/x")``; ``"digits"`` -> ``("digits", None)``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("dataset name must be a non-empty string, e.g. 'digits'")
    family, sep, arg = name.strip().partition(":")
    return family, (arg if sep else None)


def get_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
) -> DataModule:
    """Load a dataset into memory as a :class:`DataModule`.

    Args:
        name: one of :func:`list_datasets`; ``imagefolder:PATH`` for your own folder or
            archive of images.
        root: folder holding the dataset files (searched first).
        val_fraction: fraction of the source's train split (per class) held out as val;
            val is never taken from test.
        seed: seed of the val split (the test split never depends on it).
        download: fetch the dataset with torchvision if it is not found locally.

    Returns:
        The DataModule: uint8 train/val/test splits and a ModelSpec.

    Raises:
        ConfigError: unknown name or bad argument.
        DataError: the data is missing, empty or malformed.

    Example:
        >>> dm = get_dataset("digits", val_fraction=0.1, seed=0)
        >>> len(dm.train) + len(dm.val) + len(dm.test)
        1797
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    family, arg = parse_name(name)
    load = DATASETS.get(family)
    if root is not None and not download and not Path(root).expanduser().is_dir():
        # A root that does not exist must not fall through to another copy of the data
        # found elsewhere on the search path: the user asked for this one.
        raise DataError(f"--data-root {root} is not a folder; give the folder that holds the '{name}' files")
    src = load(arg, Path(root).expanduser() if root is not None else None, bool(download))
    train, val = src.train, src.val
    if val is None:
        keep, held = stratified_split(train.labels.numpy(), float(val_fraction), seed)
        val = train.subset(torch.from_numpy(held))
        train = train.subset(torch.from_numpy(keep))
    if len(train) == 0:
        raise DataError(f"dataset '{name}' has no training images after holding out val")
    mean, std = src.mean, src.std
    if mean is None or std is None:
        # From the source's whole train split (before carving val), so the spec does not
        # change with seed or val_fraction and checkpoints of different runs share it.
        mean, std = channel_stats(src.train.images)
    spec = ModelSpec(
        input_shape=tuple(int(d) for d in src.train.images.shape[1:]),  # type: ignore[arg-type]
        num_classes=len(src.class_names),
        mean=tuple(mean),
        std=tuple(std),
        class_names=tuple(src.class_names),
        dataset=name,
    )
    return DataModule(name, spec, train, val, src.test, augment=src.augment, source=src.where)


def list_datasets() -> list[str]:
    """Registered dataset names (``imagefolder`` takes a path: ``imagefolder:PATH``).

    Example:
        >>> "digits" in list_datasets()
        True
    """
    return DATASETS.names()

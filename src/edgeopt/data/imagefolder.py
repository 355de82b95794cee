"""``imagefolder:PATH``: your own images, decoded once and cached as uint8 arrays.

Accepted layouts for ``PATH``:

* a folder ``PATH/train/<class>/*.jpg`` plus ``PATH/test/<class>/...`` and/or
  ``PATH/val/<class>/...``. With both, ``val`` is used as val and ``test`` as test;
  with only ``val``, it is the held-out test split (as in ImageNet) and val is carved
  from train;
* a ``.tar.gz`` (``.tgz``, ``.tar``) of such a folder (optionally inside one wrapping
  folder);
* a folder holding ``train.tar.gz`` and ``test.tar.gz`` (and/or ``val.tar.gz``), each
  with a ``train/``... tree or the class folders directly (like ``shared/data/cifar10-jpeg``).

Archives are read in memory with every member checked, never extracted. Class names
are the train folder names, sorted; a test or val split with other class folders is an
error. Images are converted to the channel mode most of them have (RGB, or grey when most
are grey; a warning says how many were converted) and resized (bilinear) to the size of
the first train image in sorted order if they differ.
The arrays are cached in ``<cache>/imagefolder/<name>-<key>.safetensors``, keyed by the
archives' or every image file's path, size and mtime, so the next load is one file read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from edgeopt.data import _decode
from edgeopt.data._api import DATASETS, Source, cache_dir, make_split
from edgeopt.data._cache import (
    ARCHIVE_SUFFIXES,
    file_key,
    fingerprint,
    is_archive,
    load_arrays,
    read_archive,
    save_arrays,
)
from edgeopt.data._module import Augment
from edgeopt.errors import ConfigError, DataError

_FORMAT = 3  # bump when the cache layout changes (3: channel mode of the majority)
_SPLIT_NAMES = ("train", "val", "test")
_LAYOUT_HELP = (
    "expected PATH/train/<class>/*.jpg plus PATH/test/ or PATH/val/, or a .tar.gz of that"
)

# {split: {class: [(file name, path or bytes), ...]}}
Tree = dict[str, dict[str, list[tuple[str, _decode.Item]]]]


def _is_image(name: str) -> bool:
    return name.lower().endswith(_decode.IMAGE_EXTENSIONS) and not name.startswith(".")


def _split_archives(folder: Path) -> dict[str, Path]:
    """``{split: archive}`` for ``train.tar.gz``-style files directly in ``folder``."""
    found = {}
    for split in _SPLIT_NAMES:
        for suf in ARCHIVE_SUFFIXES:
            if (folder / f"{split}{suf}").is_file():
                found[split] = folder / f"{split}{suf}"
                break
    return found if "train" in found else {}


def _scan_folder(path: Path) -> Tree:
    tree: Tree = {}
    for split in _SPLIT_NAMES:
        if not (path / split).is_dir():
            continue
        tree[split] = {}
        for cls in os.scandir(path / split):
            if cls.is_dir() and not cls.name.startswith("."):
                tree[split][cls.name] = [
                    (e.name, e.path)
                    for e in os.scandir(cls.path)
                    if e.is_file() and _is_image(e.name)
                ]
    return tree


def _scan_archive(archive: Path, split: str | None, tree: Tree) -> None:
    """Add ``archive``'s images to ``tree``; ``split`` is None for a whole-tree archive.

    A whole tree holds ``[wrapper/]<split>/<class>/<file>``; a split archive holds
    ``<split>/<class>/<file>`` or ``<class>/<file>``. Anything else is ignored.
    """
    for parts, data in read_archive(archive):
        is_dir = data is None
        at = len(parts) - (1 if is_dir else 2)  # index of the class folder in parts
        owner = parts[at - 1] if at >= 1 else None
        if split is None:
            if at < 1 or owner not in _SPLIT_NAMES:
                continue
        elif owner != split and not (at == 0 and not (is_dir and parts[0] == split)):
            continue
        files = tree.setdefault(split or owner, {}).setdefault(parts[at], [])  # type: ignore[arg-type]
        if not is_dir and _is_image(parts[-1]):
            files.append((parts[-1], data))  # type: ignore[arg-type]


def _tree_key(tree: Tree) -> list:
    """Every image file's ``(split, class, name, size, mtime_ns)``: the cache key of a folder."""
    key = []
    for split in sorted(tree):
        for cls in sorted(tree[split]):
            for name, item in sorted(tree[split][cls]):
                st = os.stat(item)  # type: ignore[arg-type]
                key.append((split, cls, name, st.st_size, st.st_mtime_ns))
    return key


def _usable(cached):
    """``cached`` if it holds what we wrote (else None: an old or foreign file is rebuilt)."""
    if cached is None or "classes" not in cached[1] or "train_x" not in cached[0]:
        return None
    return cached


def _check(tree: Tree, path: Path) -> list[str]:
    """The sorted class names; raises DataError for a wrong layout, classes or no images."""
    if "train" not in tree:
        raise DataError(f"no train/ folder in {path}; {_LAYOUT_HELP}")
    if len(tree) == 1:
        raise DataError(f"no test/ or val/ folder beside train/ in {path}; {_LAYOUT_HELP}")
    classes = sorted(tree["train"])
    if not classes:
        raise DataError(f"no class folders in {path}/train; {_LAYOUT_HELP}")
    for split, by_class in tree.items():
        if sorted(by_class) != classes:
            raise DataError(
                f"classes of {split}/ in {path} ({', '.join(sorted(by_class)) or 'none'}) "
                f"differ from train's ({', '.join(classes)})"
            )
        if not any(by_class.values()):
            raise DataError(f"no images ({', '.join(_decode.IMAGE_EXTENSIONS)}) in {path}/{split}")
    empty = [c for c in classes if not tree["train"][c]]
    if empty:
        raise DataError(f"train class folders without images in {path}: {', '.join(empty)}")
    return classes


def load_tree(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """Decode (or read from the cache) every split under ``path``.

    Returns:
        ``(tensors, meta, cache file)``: tensors ``{split}_x`` uint8 ``[N, C, H, W]`` and
        ``{split}_y`` int64 ``[N]``; ``meta["classes"]`` is the JSON list of class names.
    """
    if not path.exists():
        raise DataError(f"image folder {path} does not exist; {_LAYOUT_HELP}")
    base = cache_dir() / "imagefolder"
    if is_archive(path):
        archives = {"": path}
        name = path.name[: -len(next(s for s in ARCHIVE_SUFFIXES if path.name.lower().endswith(s)))]
    elif path.is_dir():
        archives, name = _split_archives(path), path.resolve().name
    else:
        raise DataError(f"{path} is neither a folder nor a .tar.gz; {_LAYOUT_HELP}")
    tree: Tree = {}
    if archives:  # archives key the cache by their own size and mtime: no reading on a hit
        key: list = [file_key(a) for a in archives.values()]
    else:
        tree = _scan_folder(path)
        key = [str(path.resolve()), _tree_key(tree)]
    cache_file = base / f"{name}-{fingerprint(_FORMAT, *key)}.safetensors"
    if (cached := _usable(load_arrays(cache_file))) is not None:
        return (*cached, cache_file)
    for split, archive in archives.items():
        _scan_archive(archive, split or None, tree)
    classes = _check(tree, path)
    items, names, labels = {}, {}, {}
    for split, by_class in tree.items():
        flat = [
            (label, fname, item)
            for label, c in enumerate(classes)
            for fname, item in sorted(by_class[c], key=lambda t: t[0])
        ]
        items[split] = [it for _, _, it in flat]
        names[split] = [f"{path}:{split}/{classes[lb]}/{fn}" for lb, fn, _ in flat]
        labels[split] = np.array([lb for lb, _, _ in flat], np.int64)
    # Every image is brought to the first train image's size, and to the channel mode of
    # most images (one grey image sorted first used to turn a colour folder grey).
    size, _ = _decode.probe(items["train"][0], names["train"][0])
    every = [it for split in tree for it in items[split]]
    mode, converted = _decode.majority_mode(every, [n for split in tree for n in names[split]])
    arrays: dict[str, np.ndarray] = {}
    for split in tree:
        arrays[f"{split}_x"] = _decode.decode_images(
            items[split], size, mode, names[split], f"decoding {name}/{split}"
        )
        arrays[f"{split}_y"] = labels[split]
    meta = {"classes": json.dumps(classes), "source": str(path)}
    if converted:  # kept in the cache, so every load says it, not only the first
        other = "grey" if mode == "RGB" else "colour"
        meta["mode_note"] = (
            f"{converted} of {len(every)} images of {path} are {other} and were converted to "
            f"{'RGB' if mode == 'RGB' else 'grey'}, the mode of the majority"
        )
    save_arrays(cache_file, arrays, meta)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}, meta, cache_file


def imagefolder_source(path: Path, *, augment: Augment | None = None) -> Source:
    """A :class:`Source` from an image tree or archive (also used by ``cifar10``)."""
    arrays, meta, cache_file = load_tree(path)
    if meta.get("mode_note"):
        import warnings

        from edgeopt.errors import EdgeoptWarning

        warnings.warn(meta["mode_note"], EdgeoptWarning, stacklevel=2)
    classes = tuple(str(c) for c in json.loads(meta["classes"]))
    h = int(arrays["train_x"].shape[2])
    has_val, has_test = "val_x" in arrays, "test_x" in arrays
    test = "test" if has_test else "val"  # only val/: it is the held-out split
    return Source(
        train=make_split(arrays["train_x"], arrays["train_y"]),
        test=make_split(arrays[f"{test}_x"], arrays[f"{test}_y"]),
        val=make_split(arrays["val_x"], arrays["val_y"]) if has_val and has_test else None,
        class_names=classes,
        # Random crop with H/8 zero padding (4 px at 32x32) and flips: the CIFAR recipe.
        augment=augment or Augment(pad=max(1, h // 8), flip=True),
        where=f"{path} (cache {cache_file})",
    )


@DATASETS.register(
    "imagefolder", help="your images: imagefolder:PATH (train/<class>/ + test/ or val/)"
)
def load_imagefolder(arg: str | None, root: Path | None, download: bool) -> Source:
    """Load ``imagefolder:PATH`` (or ``imagefolder`` with ``root=PATH``)."""
    if not arg and root is None:
        raise ConfigError("dataset 'imagefolder' needs a path: imagefolder:PATH")
    path = Path(arg).expanduser() if arg else root
    return imagefolder_source(path)  # type: ignore[arg-type]

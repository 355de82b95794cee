"""``cifar10``: the official python batches, or an image-folder copy such as the JPEGs.

Search order: ``root``, ``$EDGEOPT_DATA/cifar10``, ``<cache>/cifar10``. In each folder:

* ``cifar-10-batches-py/`` (or the batches directly): the official tarball's format,
  pickled dicts of numpy arrays. Pickle can run code, so they are read with an
  unpickler that only rebuilds plain numpy arrays and builtins (DESIGN habit 9);
* ``train/<class>/*.jpg`` + ``test/<class>/...``, or ``train.tar.gz`` + ``test.tar.gz``
  (such as ``shared/data/cifar10-jpeg``): read through ``imagefolder``, with mean/std
  computed from its train split (JPEG changes the pixel statistics).

``download=True`` fetches the official batches with torchvision into ``<cache>/cifar10``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from edgeopt.data._api import DATASETS, Source, cache_dir, data_roots, make_split
from edgeopt.data._module import Augment
from edgeopt.data.imagefolder import _split_archives, imagefolder_source
from edgeopt.errors import ConfigError, DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the official train split (0..1 scale).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

# The only globals a CIFAR batch pickle needs: numpy's array reconstruction.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # protocol-2 pickles of bytes written by Python 3
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    Raises:
        DataError: the file is unreadable, not a CIFAR batch, or asks for other code.

    Example:
        >>> import pickle, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "data_batch_1"
        >>> d = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 5]}
        >>> _ = p.write_bytes(pickle.dumps(d, protocol=2))
        >>> x, y = read_batch(p)
        >>> x.shape, y.tolist()
        ((2, 3, 32, 32), [3, 5])
    """
    try:
        d = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (
        OSError,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
    ) as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (not a dict)")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if (
        not isinstance(data, np.ndarray)
        or data.ndim != 2
        or data.shape[1] != 3072
        or labels is None
    ):
        raise DataError(f"{path} is not a CIFAR-10 batch (expected data [N, 3072] and labels)")
    y = np.asarray(labels, np.int64)
    if len(y) != len(data) or (len(y) and (y.min() < 0 or y.max() >= len(CLASSES))):
        raise DataError(f"{path} has labels that do not match its images")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), y


def _batches_folder(base: Path) -> Path | None:
    for folder in (base / "cifar-10-batches-py", base):
        if all((folder / b).is_file() for b in (*_TRAIN_BATCHES, "test_batch")):
            return folder
    return None


def _is_image_tree(base: Path) -> bool:
    return base.is_dir() and ((base / "train").is_dir() or bool(_split_archives(base)))


def _download() -> None:  # pragma: no cover - needs the internet
    from torchvision import datasets

    datasets.CIFAR10(root=str(cache_dir() / "cifar10"), train=True, download=True)


@DATASETS.register("cifar10", help="CIFAR-10 32x32 (python batches or image folders; --download)")
def load_cifar10(arg: str | None, root: Path | None, download: bool) -> Source:
    """Load CIFAR-10 from the first folder that holds it."""
    if arg:
        raise ConfigError(f"dataset 'cifar10' takes no argument, got 'cifar10:{arg}'")
    for attempt in range(2):
        for base in data_roots("cifar10", root):
            folder = _batches_folder(base)
            if folder is not None:
                parts = [read_batch(folder / b) for b in _TRAIN_BATCHES]
                tx, ty = read_batch(folder / "test_batch")
                return Source(
                    train=make_split(
                        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
                    ),
                    test=make_split(tx, ty),
                    class_names=CLASSES,
                    augment=Augment(pad=4, flip=True),
                    mean=MEAN,
                    std=STD,
                    where=str(folder),
                )
            if _is_image_tree(base):
                src = imagefolder_source(base, augment=Augment(pad=4, flip=True))
                if src.class_names != CLASSES:
                    raise DataError(
                        f"{base} has classes {', '.join(src.class_names)}, not CIFAR-10's"
                    )
                return src
        if not download or attempt:
            break
        _download()
    raise DataError(
        "CIFAR-10 not found in "
        f"{', '.join(str(p) for p in data_roots('cifar10', root))}: pass --data-root DIR "
        "(cifar-10-batches-py/ or train/ + test/ image folders) or --download"
    )

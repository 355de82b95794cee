"""``mnist`` and ``fashion-mnist``: the original gzip'd IDX files, read with numpy.

Search order for the four files (``train-images-idx3-ubyte.gz`` ...): ``root``,
``$EDGEOPT_DATA/<name>``, ``<cache>/<name>``, then (fashion-mnist only) the Debian
package ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``. In each
folder, torchvision's layout ``<folder>/FashionMNIST/raw/`` (or ``MNIST/raw``) is
accepted too, and so are the uncompressed files. Our own IDX reader needs no torchvision
and reads 60,000 images in a fraction of a second.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from edgeopt.data._api import DATASETS, Source, cache_dir, data_roots, make_split
from edgeopt.data._module import Augment
from edgeopt.errors import ConfigError, DataError

_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip'd or not) into a numpy array of its stored shape.

    The format: 2 zero bytes, a dtype code, the number of dimensions, then one big-endian
    uint32 per dimension, then the data in C order.

    Raises:
        DataError: the file is not a well-formed IDX file.

    Example:
        >>> import tempfile, pathlib, struct
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.idx"
        >>> _ = p.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">II", 2, 3) + bytes(range(6)))
        >>> read_idx(p).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    if len(raw) != head + int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"IDX file {path} is truncated or has trailing bytes (shape {shape})")
    return np.frombuffer(raw, dtype, offset=head).reshape(shape)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_folder(name: str, root: Path | None) -> Path | None:
    """The first folder holding all four IDX files of ``name``, or None."""
    tv = "FashionMNIST" if name == "fashion-mnist" else "MNIST"  # torchvision's folder names
    bases = data_roots(name, root)
    if root is not None:  # a torchvision root often holds several datasets
        bases.insert(1, root / name)
    if name == "fashion-mnist":
        bases.append(Path("/usr/share/datasets/fashion-mnist"))
    for base in bases:
        for folder in (base, base / "raw", base / tv / "raw"):
            if all(_find_file(folder, stem) for stem in _FILES.values()):
                return folder
    return None


def _download(name: str) -> None:  # pragma: no cover - needs the internet
    from torchvision import datasets

    cls = datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST
    for train in (True, False):
        cls(root=str(cache_dir() / name), train=train, download=True)


def _loader(name: str, classes: tuple[str, ...], mean: float, std: float, flip: bool):
    def load(arg: str | None, root: Path | None, download: bool) -> Source:
        if arg:
            raise ConfigError(f"dataset '{name}' takes no argument, got '{name}:{arg}'")
        folder = find_idx_folder(name, root)
        if folder is None and download:
            _download(name)
            folder = find_idx_folder(name, root)
        if folder is None:
            apt = " or apt-get install dataset-fashion-mnist" if name == "fashion-mnist" else ""
            raise DataError(
                f"{name} IDX files not found in {', '.join(str(p) for p in data_roots(name, root))}: "
                f"pass --data-root DIR, or --download{apt}"
            )
        arr = {k: read_idx(_find_file(folder, stem)) for k, stem in _FILES.items()}
        for split in ("train", "test"):
            x, y = arr[f"{split}_x"], arr[f"{split}_y"]
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
                raise DataError(f"{name} {split} IDX files in {folder} have unexpected shapes")
        return Source(
            train=make_split(
                arr["train_x"][:, None], arr["train_y"]
            ),  # [N, 28, 28] -> [N, 1, 28, 28]
            test=make_split(arr["test_x"][:, None], arr["test_y"]),
            class_names=classes,
            augment=Augment(pad=2, flip=flip),
            mean=(mean,),
            std=(std,),
            where=str(folder),
        )

    load.__doc__ = f"Load {name} from its IDX files."
    return load


DATASETS.add(
    "mnist",
    _loader("mnist", tuple(str(i) for i in range(10)), 0.1307, 0.3081, flip=False),
    help="MNIST 28x28 digits from IDX files (--data-root or --download)",
)
DATASETS.add(
    "fashion-mnist",
    _loader(
        "fashion-mnist",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        0.2860,
        0.3530,
        flip=True,  # clothes are left-right symmetric enough; the usual recipe flips
    ),
    help="Fashion-MNIST 28x28 from IDX files (apt package dataset-fashion-mnist)",
)

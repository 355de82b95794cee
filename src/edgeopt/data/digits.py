"""``digits``: scikit-learn's 1,797 real 8x8 handwritten digits, the embedded default.

The CSV ships inside scikit-learn; we read it with numpy directly because importing
``sklearn.datasets`` costs about two seconds and the data is 1,797 rows. Pixel values
0..16 are scaled to 0..255 uint8. scikit-learn has no test split, so a fixed, stratified
20% is held out as test (seed 0, independent of ``get_dataset``'s seed, so every run
is scored on the same images).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from edgeopt.data._api import DATASETS, Source, make_split, stratified_split
from edgeopt.data._module import Augment
from edgeopt.errors import ConfigError, DataError

TEST_FRACTION = 0.2
_TEST_SEED = 0


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: uint8 images ``[1797, 1, 8, 8]`` (0..255) and int64 labels.

    Example:
        >>> x, y = digits_arrays()
        >>> x.shape, int(x.max()), int(y.max())
        ((1797, 1, 8, 8), 255, 9)
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    csv = (
        Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if spec and spec.origin
        else None
    )
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)  # [1797, 65]: 64 pixels + label
        pixels, labels = table[:, :64], table[:, 64]
    else:  # pragma: no cover - a scikit-learn that moved its data file
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise DataError(
                "dataset 'digits' needs scikit-learn: pip install scikit-learn"
            ) from exc
        d = load_digits()
        pixels, labels = d.data, d.target
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    return images, labels.astype(np.int64)


@DATASETS.register("digits", help="scikit-learn's 8x8 handwritten digits (1,797; embedded)")
def load_digits_source(arg: str | None, root: Path | None, download: bool) -> Source:
    """The digits with a fixed stratified 80/20 train/test split."""
    if arg:
        raise ConfigError(f"dataset 'digits' takes no argument, got 'digits:{arg}'")
    x, y = digits_arrays()
    train_idx, test_idx = stratified_split(y, TEST_FRACTION, _TEST_SEED)
    return Source(
        train=make_split(x[train_idx], y[train_idx]),
        test=make_split(x[test_idx], y[test_idx]),
        class_names=tuple(str(i) for i in range(10)),
        augment=Augment(pad=1, flip=False),  # a flipped digit is another glyph
        where="scikit-learn digits.csv.gz",
    )

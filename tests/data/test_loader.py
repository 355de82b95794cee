"""DataModule and BatchLoader: batch counts, normalisation, shuffling, augmentation, DDP."""

from __future__ import annotations

import pytest
import torch

from edgeopt.data import BatchLoader, Split
from edgeopt.data._module import Augment
from edgeopt.errors import ConfigError, DataError


def test_batch_counts_and_last_batch(synthetic_data):
    dm = synthetic_data  # train 580, val 60, test 160
    assert len(dm.loader("train", 64)) == 10  # ceil(580 / 64)
    assert len(dm.loader("train", 64, drop_last=True)) == 9
    sizes = [len(y) for _, y in dm.loader("test", 64)]
    assert sizes == [64, 64, 32]
    sizes = [len(y) for _, y in dm.loader("train", 64, drop_last=True)]
    assert sizes == [64] * 9


def test_batches_are_float32_nchw_and_int64(synthetic_data):
    x, y = next(iter(synthetic_data.loader("train", 32, shuffle=True, augment=True)))
    assert x.dtype == torch.float32 and tuple(x.shape) == (32, 3, 16, 16)
    assert y.dtype == torch.int64 and tuple(y.shape) == (32,)


@pytest.mark.parametrize("fixture", ["synthetic_data", "digits_data"])
def test_normalised_train_split_has_zero_mean_unit_std(fixture, request):
    dm = request.getfixturevalue(fixture)
    x = torch.cat([x for x, _ in dm.loader("train", 256)])
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    # Stats come from the source's train split (train + val), so the train part is
    # within a few hundredths of 0 and 1.
    assert torch.allclose(mean, torch.zeros_like(mean), atol=0.03), mean
    assert torch.allclose(std, torch.ones_like(std), atol=0.03), std


def test_normalize_matches_the_formula(digits_data):
    dm = digits_data
    img = dm.test.images[:5]
    want = (img.float() / 255 - dm.spec.mean[0]) / dm.spec.std[0]
    assert torch.allclose(dm.normalize(img), want, atol=1e-5)
    assert tuple(dm.normalize(img[0]).shape) == (1, 8, 8)  # a single CHW image
    with pytest.raises(DataError, match="uint8"):
        dm.normalize(img.float())
    with pytest.raises(DataError, match=r"\[N, 1, H, W\]"):
        dm.normalize(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_shuffle_is_seeded_by_seed_plus_epoch(synthetic_data):
    dm = synthetic_data
    a = dm.loader("train", 100, shuffle=True, seed=3)
    b = dm.loader("train", 100, shuffle=True, seed=3)
    ya = torch.cat([y for _, y in a])
    assert torch.equal(ya, torch.cat([y for _, y in b]))  # same seed, same epoch
    assert torch.equal(a.indices().sort().values, torch.arange(580))  # a permutation
    a.set_epoch(1)
    assert not torch.equal(a.indices(), b.indices())
    c = dm.loader("train", 100, shuffle=True, seed=4)
    assert torch.equal(a.indices(), c.indices())  # seed 3 + epoch 1 == seed 4 + epoch 0
    plain = dm.loader("train", 100)
    assert torch.equal(plain.indices(), torch.arange(580))  # no shuffle: file order
    assert torch.equal(torch.cat([y for _, y in plain]), dm.train.labels)


def test_augmentation_keeps_shape_dtype_labels_and_changes_pixels(synthetic_data):
    dm = synthetic_data
    plain = list(dm.loader("train", 128, seed=0))
    aug = list(dm.loader("train", 128, seed=0, augment=True))
    for (x0, y0), (x1, y1) in zip(plain, aug):
        assert x1.shape == x0.shape and x1.dtype == torch.float32
        assert torch.equal(y0, y1)
    changed = torch.cat([(a[0] != b[0]).flatten(1).any(1) for a, b in zip(plain, aug)])
    # Pad 1 crop: 8 of the 9 offsets move the image, so most images change.
    assert changed.float().mean() > 0.7
    # Reproducible for a given seed and epoch, different across epochs.
    again = list(dm.loader("train", 128, seed=0, augment=True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(aug, again))
    other = dm.loader("train", 128, seed=0, augment=True)
    other.set_epoch(1)
    assert not torch.equal(next(iter(other))[0], aug[0][0])


def test_crop_is_a_shifted_window_and_flip_is_a_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (64, 3, 6, 6), dtype=torch.uint8)  # no zeros: padding shows
    out = Augment(pad=2)(x, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):  # every output is exactly one of the 25 windows of its input
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    shifted = [not torch.equal(out[i], x[i]) for i in range(64)]
    assert sum(shifted) > 40  # 24 of 25 offsets shift
    flipped = Augment(pad=0, flip=True)(x, g)
    is_flip = [torch.equal(flipped[i], x[i].flip(2)) for i in range(64)]
    is_same = [torch.equal(flipped[i], x[i]) for i in range(64)]
    assert all(f or s for f, s in zip(is_flip, is_same))
    assert 16 < sum(is_flip) < 48  # about half


def test_dataset_augment_policies(synthetic_data, digits_data):
    assert digits_data.augment == Augment(pad=1, flip=False)  # a mirrored digit is another glyph
    assert synthetic_data.augment == Augment(pad=1, flip=False)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shards_are_disjoint_equal_and_covering(synthetic_data, world):
    dm = synthetic_data  # 580 train images
    shards = [
        dm.loader("train", 50, shuffle=True, seed=7, rank=r, world_size=world) for r in range(world)
    ]
    idx = [s.indices() for s in shards]
    per_rank = -(-580 // world)  # ceil: padded by wrapping around, like DistributedSampler
    assert all(len(i) == per_rank for i in idx)
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of steps
    allidx = torch.cat(idx)
    assert set(allidx.tolist()) == set(range(580))  # covering
    assert (
        len(allidx) - len(set(allidx.tolist())) == per_rank * world - 580
    )  # only the padding repeats
    # drop_last: truncated to a multiple of world_size, then strictly disjoint.
    dl = [
        dm.loader("train", 50, shuffle=True, seed=7, rank=r, world_size=world, drop_last=True)
        for r in range(world)
    ]
    flat = torch.cat([d.indices() for d in dl])
    assert len(flat) == (580 // world) * world == len(set(flat.tolist()))
    # Labels seen by the ranks are exactly the labels of their shards.
    ys = torch.cat([y for _, y in shards[0]])
    assert torch.equal(ys, dm.train.labels[idx[0]])


def test_bad_loader_arguments(synthetic_data):
    dm = synthetic_data
    with pytest.raises(ConfigError, match="batch_size"):
        dm.loader("train", 0)
    with pytest.raises(ConfigError, match="rank"):
        dm.loader("train", 8, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        dm.loader("dev", 8)


def test_calibration_and_samples(synthetic_data):
    dm = synthetic_data
    cal = dm.calibration()
    assert tuple(cal.shape) == (512, 3, 16, 16) and cal.dtype == torch.float32
    assert torch.equal(cal, dm.calibration(512, seed=0))
    assert not torch.equal(cal[:10], dm.calibration(512, seed=1)[:10])
    assert len(dm.calibration(10_000)) == 580  # capped at the train split
    # The calibration images are train images (normalised, not augmented).
    train = dm.normalize(dm.train.images)
    assert all((train == c).flatten(1).all(1).any() for c in dm.calibration(8))
    x, y = dm.samples(20, "test", seed=2)
    assert tuple(x.shape) == (20, 3, 16, 16) and y.dtype == torch.int64
    x2, y2 = dm.samples(20, "test", seed=2)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ConfigError):
        dm.calibration(0)
    with pytest.raises(ConfigError, match="unknown split"):
        dm.samples(4, "holdout")


def test_empty_val_split_gives_an_empty_loader():
    from edgeopt.data import get_dataset

    dm = get_dataset("synthetic", val_fraction=0.0)
    assert len(dm.val) == 0 and len(dm.loader("val", 16)) == 0 and list(dm.loader("val", 16)) == []
    with pytest.raises(DataError, match="empty split"):
        dm.samples(4, "val")


def test_split_validates_dtypes():
    with pytest.raises(DataError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match="labels"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    assert isinstance(
        BatchLoader(
            Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)),
            1,
            lambda x: x,
        ),
        BatchLoader,
    )

"""DataModule, Split and BatchLoader: in-memory uint8 splits and fast batch loading.

Every dataset ends up as uint8 tensors ``[N, C, H, W]`` in memory (CIFAR-10 train is
150 MB), so a batch is a slice, an optional vectorised augmentation on the uint8 batch,
and one fused normalisation to float32. No worker processes are needed for this size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from edgeopt.errors import ConfigError, DataError
from edgeopt.spec import ModelSpec

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 ``[N, C, H, W]`` and ``labels`` int64 ``[N]``.

    Example:
        >>> s = Split(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]))
        >>> len(s)
        2
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"Split images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"Split labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        """The images and labels at ``index`` (an int64 tensor of positions)."""
        # index_select is ~2x faster than fancy indexing on large uint8 tensors.
        return Split(self.images.index_select(0, index), self.labels.index_select(0, index))


@dataclasses.dataclass(frozen=True)
class Augment:
    """Batch augmentation policy: random crop after zero ``pad`` pixels, optional h-flip."""

    pad: int = 0
    flip: bool = False

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augment a uint8 batch ``[B, C, H, W]``; returns a new tensor of the same shape."""
        b, c, h, w = x.shape
        if b == 0:
            return x
        if self.pad > 0:
            p = self.pad
            padded = F.pad(x, (p, p, p, p))  # zeros = black, like torchvision RandomCrop(padding=p)
            # One offset per image in [0, 2p]; gather each crop with advanced indexing
            # instead of a Python loop: rows [B, H], cols [B, W].
            oy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=gen)
            rows = oy[:, None] + torch.arange(h)
            cols = ox[:, None] + torch.arange(w)
            x = padded[
                torch.arange(b)[:, None, None, None],
                torch.arange(c)[None, :, None, None],
                rows[:, None, :, None],
                cols[:, None, None, :],
            ]
        if self.flip:
            mask = torch.rand(b, generator=gen) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        return x


class BatchLoader:
    """Iterable of ``(x float32 normalised [B, C, H, W], y int64 [B])`` over one split.

    Shuffling is seeded by ``seed + epoch`` (call :meth:`set_epoch` each epoch) and is the
    same on every rank, so ``rank``/``world_size`` give disjoint equal-size shards like
    ``torch.utils.data.DistributedSampler`` (padded by wrapping around unless
    ``drop_last``).

    Example:
        >>> from edgeopt.data import get_dataset
        >>> dl = get_dataset("synthetic").loader("train", 64, shuffle=True)
        >>> x, y = next(iter(dl))
        >>> x.dtype, tuple(x.shape), y.dtype
        (torch.float32, (64, 3, 16, 16), torch.int64)
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalize,
        *,
        shuffle: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}"
            )
        self.split = split
        self.batch_size = int(batch_size)
        self._normalize = normalize
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle and augmentation order of ``epoch`` (seeded by ``seed + epoch``)."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before dropping a last partial batch)."""
        n = len(self.split)
        if self.drop_last:
            return n // self.world_size
        return math.ceil(n / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample positions for the current epoch (int64 ``[num_samples]``)."""
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:  # pad by wrapping around, as DistributedSampler does
            order = torch.cat([order, order[: total - n]]) if n else order
        order = order[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices()
        gen = None
        if self.augment is not None:
            # Augmentation differs per rank (unlike the shuffle) but is still reproducible.
            state = np.random.SeedSequence([self.seed, self.epoch, self.rank, 1]).generate_state(2)
            gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        for i in range(len(self)):
            sel = idx[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.split.images[sel]
            if self.augment is not None:
                x = self.augment(x, gen)
            yield self._normalize(x), self.split.labels[sel]


class DataModule:
    """A dataset in memory: ``train`` / ``val`` / ``test`` splits plus its ModelSpec.

    ``val`` is carved from the source's train split (never from test). Images stay uint8;
    :meth:`normalize` and the loaders produce float32 normalised NCHW tensors.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> dm = get_dataset("digits")
        >>> dm.spec.input_shape, dm.spec.num_classes
        ((1, 8, 8), 10)
        >>> tuple(dm.calibration(32).shape)
        (32, 1, 8, 8)
    """

    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        train: Split,
        val: Split,
        test: Split,
        *,
        augment: Augment | None = None,
        source: str = "",
        resize_to: tuple[int, int] | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.train, self.val, self.test = train, val, test
        self.augment = augment or Augment()
        self.source = source
        # (H, W) every batch is resized to as it is normalised (edgeopt.data.data_for_model
        # with resize=True); None keeps the stored size.
        self.resize_to = tuple(resize_to) if resize_to else None
        # normalize(x) = (x / 255 - mean) / std = x * scale - shift, per channel [1, C, 1, 1].
        std = torch.tensor(spec.std, dtype=torch.float32)
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
        self._shift = (mean / std).view(1, -1, 1, 1)

    def __repr__(self) -> str:
        return (
            f"DataModule({self.name!r}, input={self.spec.input_shape}, "
            f"classes={self.spec.num_classes}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)})"
        )

    def split(self, name: str) -> Split:
        """The split called ``name`` (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split '{name}'; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` (or ``[C, H, W]``) -> float32 normalised with the spec.

        Example:
            >>> from edgeopt.data import get_dataset
            >>> dm = get_dataset("synthetic")
            >>> dm.normalize(dm.test.images[:4]).dtype
            torch.float32
        """
        if images_uint8.dtype != torch.uint8:
            raise DataError(f"normalize expects uint8 images, got {images_uint8.dtype}")
        one = images_uint8.dim() == 3
        x = images_uint8[None] if one else images_uint8
        if x.dim() != 4 or x.shape[1] != self.spec.channels:
            raise DataError(
                f"normalize expects [N, {self.spec.channels}, H, W], got {tuple(images_uint8.shape)}"
            )
        out = x.float()
        if self.resize_to is not None and tuple(out.shape[2:]) != self.resize_to:
            out = F.interpolate(out, size=self.resize_to, mode="bilinear", antialias=True,
                                align_corners=False).clamp_(0.0, 255.0)
        out = out.mul_(self._scale).sub_(self._shift)
        return out[0] if one else out

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> BatchLoader:
        """A :class:`BatchLoader` over ``split``; ``augment`` uses the dataset's policy.

        Example:
            >>> from edgeopt.data import get_dataset
            >>> dm = get_dataset("synthetic")
            >>> len(dm.loader("test", 64))  # 160 test images
            3
        """
        return BatchLoader(
            self.split(split),
            batch_size,
            self.normalize,
            shuffle=shuffle,
            augment=self.augment if augment else None,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )

    def _draw(self, split: Split, n: int, seed: int) -> torch.Tensor:
        if n < 1:
            raise ConfigError(f"number of samples must be >= 1, got {n}")
        if len(split) == 0:
            raise DataError(f"dataset '{self.name}' has an empty split to draw samples from")
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(len(split), generator=g)[: min(n, len(split))]

    def calibration(self, n: int = 512, seed: int = 0) -> torch.Tensor:
        """``min(n, len(train))`` seeded random train images, normalised, not augmented.

        Example:
            >>> from edgeopt.data import get_dataset
            >>> tuple(get_dataset("synthetic").calibration(100).shape)
            (100, 3, 16, 16)
        """
        return self.normalize(self.train.images[self._draw(self.train, n, seed)])

    def samples(
        self, n: int, split: str = "test", seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``min(n, len(split))`` seeded random ``(x normalised, y)`` pairs from ``split``.

        Example:
            >>> from edgeopt.data import get_dataset
            >>> x, y = get_dataset("synthetic").samples(8)
            >>> tuple(x.shape), tuple(y.shape)
            ((8, 3, 16, 16), (8,))
        """
        s = self.split(split)
        idx = self._draw(s, n, seed)
        return self.normalize(s.images[idx]), s.labels[idx]

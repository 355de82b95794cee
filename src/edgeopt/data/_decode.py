"""Decode many images into one uint8 ``[N, C, H, W]`` array, quickly.

An item is a file path or the file's bytes (read straight from a tar archive). JPEGs of
the target size go through ``torchvision.io.decode_jpeg`` in batches: it wraps the same
libjpeg-turbo as PIL (bit-identical pixels, checked on the CIFAR-10 JPEGs) without
PIL's per-image Python overhead, about 4x faster on 32x32 images. Everything else
(PNG, BMP, other sizes, odd colour modes) is decoded, converted and resized by PIL.
Large sets are split into chunks decoded by forked worker processes (as torch's
DataLoader does on Linux); where fork is unavailable, by threads.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from edgeopt.errors import DataError

Item = str | bytes  # a path, or the encoded bytes of one image
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)
_GREY_MODES = ("1", "L", "I", "I;16", "F")
_CHUNK = 2000  # images per task: big enough to hide the inter-process overhead
_PARALLEL_FROM = 8000  # below this, starting workers costs more than it saves


def _open(item: Item, name: str):
    from PIL import Image

    try:
        return Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {name}: {exc}") from None


def probe(item: Item, name: str = "") -> tuple[tuple[int, int], str]:
    """``((height, width), mode)`` of one image; mode is ``"L"`` (grey) or ``"RGB"``.

    Greyscale images (PIL modes ``1``, ``L``, ``I``, ``I;16``, ``F``) give one channel;
    everything else (RGB, RGBA, palette, CMYK) is converted to three.
    """
    with _open(item, name or str(item)[:80]) as im:
        return (im.height, im.width), ("L" if im.mode in _GREY_MODES else "RGB")


def majority_mode(items: Sequence[Item], names: Sequence[str]) -> tuple[str, int]:
    """The mode (``"L"`` or ``"RGB"``) most of ``items`` have, and how many have the other.

    Every image's header is read (not its pixels), so one grey image among colour ones
    (or the reverse) is converted to the others' mode instead of deciding it. A tie is
    RGB: converting grey to RGB loses nothing.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("L", (2, 2)).save(d / "a.png"); Image.new("RGB", (2, 2)).save(d / "b.png")
        >>> Image.new("RGB", (2, 2)).save(d / "c.png")
        >>> majority_mode([str(d / n) for n in ("a.png", "b.png", "c.png")], ["a", "b", "c"])
        ('RGB', 1)
    """
    grey = sum(probe(it, nm)[1] == "L" for it, nm in zip(items, names))
    colour = len(items) - grey
    return ("L", colour) if grey > colour else ("RGB", grey)


def _pil_decode(item: Item, name: str, size: tuple[int, int], mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with _open(item, name) as im:
            if im.mode != mode:
                im = im.convert(mode)
            if (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from None
    return arr.reshape(size[0], size[1], -1).transpose(2, 0, 1)  # HWC -> CHW


def decode_chunk(
    items: Sequence[Item], names: Sequence[str], size: tuple[int, int], mode: str
) -> np.ndarray:
    """Decode ``items`` to uint8 ``[n, C, H, W]`` in ``mode``, resized to ``size`` = (H, W)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    c = 1 if mode == "L" else 3
    out = np.empty((len(items), c, size[0], size[1]), np.uint8)
    data = [it if isinstance(it, bytes) else _read(it) for it in items]
    jpeg = [i for i, b in enumerate(data) if b[:3] == b"\xff\xd8\xff"]
    fast: dict[int, np.ndarray] = {}
    if jpeg:
        read_mode = ImageReadMode.GRAY if mode == "L" else ImageReadMode.RGB
        try:
            decoded = decode_jpeg(
                [torch.frombuffer(bytearray(data[i]), dtype=torch.uint8) for i in jpeg],
                mode=read_mode,
            )
            fast = {i: t.numpy() for i, t in zip(jpeg, decoded) if tuple(t.shape) == (c, *size)}
        except RuntimeError:  # an unusual JPEG in the batch: PIL handles them one by one
            fast = {}
    for i, b in enumerate(data):
        out[i] = fast[i] if i in fast else _pil_decode(b, names[i], size, mode)
    return out


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _executor(n: int) -> Executor:
    try:
        workers = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        workers = os.cpu_count() or 1
    workers = max(1, min(workers, 8))
    # Forking a process that already runs JAX's threads (imported by litert-torch for TFLite
    # export) can deadlock the child: decode in this process then, slower but safe.
    fork_safe = "jax" not in sys.modules
    if n >= _PARALLEL_FROM and workers > 1 and fork_safe and "fork" in mp.get_all_start_methods():
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
    return ThreadPoolExecutor(1)


def decode_images(
    items: Sequence[Item],
    size: tuple[int, int],
    mode: str,
    names: Sequence[str] | None = None,
    description: str = "decoding",
) -> np.ndarray:
    """Decode all ``items`` (paths or bytes) into one uint8 ``[N, C, H, W]`` array.

    Args:
        items: image file paths, or the encoded bytes of each image.
        size: ``(H, W)`` every image is resized to (bilinear) if it differs.
        mode: ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
        names: names for error messages (default: the paths).
        description: label of the progress bar (shown on stderr when it is a terminal).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 2), (255, 0, 0)).save(d / "a.png")
        >>> decode_images([str(d / "a.png")], (2, 4), "RGB").shape
        (1, 3, 2, 4)
    """
    import torchvision.io  # noqa: F401 - imported once here, not in every forked worker
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    names = list(names) if names is not None else [str(i) for i in items]
    c = 1 if mode == "L" else 3
    out = np.empty((len(items), c, size[0], size[1]), np.uint8)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
        transient=True,
    )
    with progress, _executor(len(items)) as ex:
        task = progress.add_task(description, total=len(items))
        futures = [
            (i, ex.submit(decode_chunk, items[i : i + _CHUNK], names[i : i + _CHUNK], size, mode))
            for i in range(0, len(items), _CHUNK)
        ]
        for i, fut in futures:
            arr = fut.result()
            out[i : i + len(arr)] = arr
            progress.advance(task, len(arr))
    return out

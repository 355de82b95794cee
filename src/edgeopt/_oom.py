"""An allocation that fails while a batch is built or run becomes one line: lower the batch size.

A batch size that is valid (``<= MAX_BATCH_SIZE``) can still not fit in this machine's
memory, and torch, numpy and the runtimes then fail deep inside an allocation with a
traceback that does not say which setting caused it. :func:`batch_memory` wraps the code
that builds or runs the batch; :func:`check_batch_fits` refuses, before allocating, a
batch whose input tensor alone is larger than the machine's physical memory.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

from edgeopt.errors import ConfigError, EdgeoptError, brief

# what torch (CPU and CUDA), numpy and onnxruntime say when an allocation fails
_OOM_WORDS = ("out of memory", "can't allocate", "cannot allocate", "failed to allocate",
              "unable to allocate", "bad_alloc", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for MemoryError and for library errors whose message says an allocation failed.

    Example:
        >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
        True
        >>> is_out_of_memory(RuntimeError("shape mismatch"))
        False
    """
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(w in text for w in _OOM_WORDS)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def check_batch_fits(batch_size: int, item_shape: Sequence[int], what: str,
                     flag: str = "--batch-size", bytes_per_value: int = 4) -> None:
    """Refuse a batch whose input alone (float32 by default) exceeds physical memory.

    Raises:
        ConfigError: naming the size needed, the memory here and the flag to lower.

    Example:
        >>> check_batch_fits(64, (3, 32, 32), "bench")  # 786 kB: fine
    """
    need = int(batch_size) * math.prod(int(d) for d in item_shape) * bytes_per_value
    have = physical_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"{what}: batch_size={batch_size} needs {_gib(need)} for its input alone, more than "
            f"this machine's {_gib(have)} of memory; lower {flag}"
        )


@contextlib.contextmanager
def batch_memory(what: str, batch_size: int, flag: str = "--batch-size") -> Iterator[None]:
    """Turn an out-of-memory error raised in the block into a one-line ConfigError.

    Example:
        >>> with batch_memory("bench", 10**9):
        ...     raise MemoryError("Unable to allocate 1 TiB")
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: bench: batch_size=1000000000 does not fit in memory (MemoryError: Unable to allocate 1 TiB); lower --batch-size
    """
    try:
        yield
    except EdgeoptError:
        raise
    except Exception as exc:  # onnxruntime's errors are plain Exceptions
        if not is_out_of_memory(exc):
            raise
        raise ConfigError(
            f"{what}: batch_size={batch_size} does not fit in memory "
            f"({type(exc).__name__}: {brief(exc, 160)}); lower {flag}"
        ) from None

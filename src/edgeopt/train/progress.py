"""Progress display: a rich bar per epoch on a terminal, one line per epoch otherwise.

Everything goes to stderr so stdout stays clean for machine-readable output. The bar
is advanced once per step (cheap); its loss/accuracy text changes only when the
Trainer reads the running metrics from the device (every ``log_every_steps``).
"""

from __future__ import annotations

import sys
from typing import Any


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def epoch_line(rec: dict[str, Any], epochs: int) -> str:
    """One summary line for a finished epoch's history record; a loss with named parts
    (``train_task_loss``, ``train_kd_loss``, ...) shows them after the total.

    Example:
        >>> epoch_line({"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.4,
        ...             "val_acc": 0.85, "lr": 0.1, "images_per_s": 1000.0, "seconds": 2.0}, 3)
        'epoch 1/3  loss 0.5000  acc 0.8000  val_loss 0.4000  val_acc 0.8500  lr 0.1  1000 img/s  2.0s'
        >>> epoch_line({"epoch": 2, "train_loss": 1.5, "train_task_loss": 0.5, "train_kd_loss": 1.0}, 3)[:56]
        'epoch 2/3  loss 1.5000 (task_loss 0.5000 kd_loss 1.0000)'
    """
    parts = " ".join(f"{k[len('train_'):]} {_fmt(v, '.4f')}" for k, v in rec.items()
                     if k.startswith("train_") and k.endswith("_loss") and k != "train_loss")
    return (
        f"epoch {rec['epoch']}/{epochs}  loss {_fmt(rec.get('train_loss'), '.4f')}"
        + (f" ({parts})" if parts else "") + "  "
        f"acc {_fmt(rec.get('train_acc'), '.4f')}  val_loss {_fmt(rec.get('val_loss'), '.4f')}  "
        f"val_acc {_fmt(rec.get('val_acc'), '.4f')}  lr {_fmt(rec.get('lr'), '.3g')}  "
        f"{_fmt(rec.get('images_per_s'), '.0f')} img/s  {_fmt(rec.get('seconds'), '.1f')}s"
    )


class EpochProgress:
    """Progress of one run. ``enabled=False`` prints nothing at all.

    Example:
        >>> p = EpochProgress(enabled=False, epochs=1)
        >>> p.start_epoch(1, total_steps=10); p.advance(); p.end_epoch({"epoch": 1}); p.close()
    """

    def __init__(self, enabled: bool, epochs: int, stream=None, messages: bool = True) -> None:
        self.enabled = enabled
        self.messages = messages  # False on DDP ranks > 0: one copy of each warning
        self.epochs = epochs
        self.stream = stream or sys.stderr
        self._bar = None
        self._task = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._bar.start()

    def start_epoch(self, epoch: int, total_steps: int, done: int = 0) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(
                f"epoch {epoch}/{self.epochs}", total=total_steps, completed=done, stats=""
            )

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def update_stats(self, loss: float, acc: float | None, images_per_s: float) -> None:
        if self._task is not None:
            acc_s = "" if acc is None else f" acc {acc:.3f}"
            self._bar.update(self._task, stats=f"loss {loss:.4f}{acc_s} {images_per_s:.0f} img/s")

    def end_epoch(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(epoch_line(rec, self.epochs), highlight=False, soft_wrap=True)
        else:
            print(epoch_line(rec, self.epochs), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line shown even with progress disabled (warnings); not on DDP ranks > 0."""
        if not self.messages:
            return
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

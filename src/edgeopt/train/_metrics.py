"""Running training metrics kept on the device and read back once per window.

Reading a loss with ``.item()`` every step forces the host to wait for the device; a
plain loop that never reads the loss would then be faster than the Trainer. Instead
each step appends its detached loss (a 0-d tensor) to a list, and every
``log_every_steps`` steps the window is stacked and copied to the host in one transfer,
checked for NaN/Inf (naming the exact step), and folded into float64 sums.
"""

from __future__ import annotations

import torch

from edgeopt.errors import NumericalError


class RunningMetrics:
    """Sums of loss (weighted by batch size), named loss parts and correct predictions.

    Example:
        >>> m = RunningMetrics()
        >>> m.add(torch.tensor(2.0), {}, torch.tensor(3), 4, step=1)
        >>> m.add(torch.tensor(1.0), {}, torch.tensor(4), 4, step=2)
        >>> m.flush(lr=0.1); round(m.mean_loss(), 3), m.accuracy()
        (1.5, 0.875)
    """

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.correct = 0.0
        self.count = 0
        self.part_sums: dict[str, float] = {}
        self.has_acc = True
        self._losses: list[torch.Tensor] = []
        self._parts: dict[str, list[torch.Tensor]] = {}
        self._correct: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._steps: list[int] = []

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor],
            correct: torch.Tensor | None, n: int, step: int) -> None:
        """Record one step (tensors stay on the device; nothing is synchronised here)."""
        self._losses.append(loss.detach())
        for k, v in parts.items():
            self._parts.setdefault(k, []).append(v.detach())
        if correct is None:
            self.has_acc = False
        else:
            self._correct.append(correct)
        self._sizes.append(n)
        self._steps.append(step)

    @property
    def pending(self) -> int:
        return len(self._losses)

    def flush(self, lr: float) -> None:
        """Copy the window to the host, check it, fold it in. Raises NumericalError on NaN/Inf."""
        if not self._losses:
            return
        rows = [torch.stack(self._losses).float()]
        names = list(self._parts)
        rows += [torch.stack(self._parts[k]).float() for k in names]
        if self.has_acc and len(self._correct) == len(self._losses):
            rows.append(torch.stack(self._correct).float())
        table = torch.stack(rows).double().cpu()  # [K, W]: the one host transfer
        losses = table[0]
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0, 0])
            raise NumericalError(
                f"training loss is {losses[i].item()} at step {self._steps[i]} (lr={lr:.3g}); "
                "lower the learning rate, enable grad_clip, or check the inputs for NaN/Inf"
            )
        sizes = torch.tensor(self._sizes, dtype=torch.float64)
        self.loss_sum += float((losses * sizes).sum())
        for j, k in enumerate(names):
            self.part_sums[k] = self.part_sums.get(k, 0.0) + float((table[1 + j] * sizes).sum())
        if self.has_acc and len(self._correct) == len(self._losses):
            self.correct += float(table[-1].sum())
        self.count += int(sizes.sum())
        self._losses.clear(); self._correct.clear(); self._sizes.clear(); self._steps.clear()
        for v in self._parts.values():
            v.clear()

    def mean_loss(self) -> float:
        return self.loss_sum / max(1, self.count)

    def accuracy(self) -> float | None:
        return self.correct / max(1, self.count) if self.has_acc else None

    # -- resume support: the sums of a half-done epoch travel in train_state.pt ----------
    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "count": self.count,
                "part_sums": dict(self.part_sums), "has_acc": self.has_acc}

    def load_state_dict(self, d: dict) -> None:
        self.loss_sum = float(d["loss_sum"]); self.correct = float(d["correct"])
        self.count = int(d["count"]); self.part_sums = dict(d["part_sums"])
        self.has_acc = bool(d["has_acc"])

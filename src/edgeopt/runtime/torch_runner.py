"""The ``torch`` runtime: an eager ``nn.Module`` (or an edgeopt checkpoint) on numpy batches."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeopt.errors import ArtifactError, ModelLoadError
from edgeopt.runtime._base import RUNNERS, TorchVersionMixin, bind_target, check_batch
from edgeopt.spec import get_spec


@RUNNERS.register("torch", help="PyTorch eager (nn.Module or edgeopt checkpoint)")
class TorchRunner(TorchVersionMixin):
    """Run an ``nn.Module`` eagerly: eval mode, ``torch.inference_mode``, fixed threads.

    The model's train/eval flag is restored after each call, so wrapping a model that is
    still being trained does not change it. Inputs go to the model's device and dtype;
    outputs come back as float32 numpy on the CPU.

    Args:
        target: an ``nn.Module`` carrying a ModelSpec, or an Artifact of format
            ``"checkpoint"`` (rebuilt with :func:`edgeopt.models.load_checkpoint`).
        threads: intra-op threads (``torch.set_num_threads``) inside ``predict``.

    Example:
        >>> import numpy as np, torch
        >>> from edgeopt.spec import ModelSpec, attach_spec
        >>> m = attach_spec(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
        ...                 ModelSpec((1, 8, 8), 10, (0.5,), (0.25,)))
        >>> TorchRunner(m, threads=1).predict(np.zeros((2, 1, 8, 8), np.float32)).shape
        (2, 10)
    """

    name = "torch"
    formats = ("module", "checkpoint")

    def __init__(self, target: Any, threads: int | None = None) -> None:
        import torch

        self.artifact = None
        if isinstance(target, torch.nn.Module):
            self.model = target
        else:  # an Artifact of format "checkpoint"
            from edgeopt.models import load_checkpoint

            try:
                self.model, _ = load_checkpoint(target.path)
            except ModelLoadError as exc:
                raise ArtifactError(f"cannot load checkpoint artifact {target.path}: {exc}") from None
            self.artifact = target
        spec = get_spec(self.model) if self.artifact is None else self.artifact.spec
        bind_target(self, self.artifact, spec, threads)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW ``[N, C, H, W]`` -> float32 logits ``[N, classes]``.

        Raises:
            ArtifactError: the batch is not ``[N, C, H, W]`` of the model's ModelSpec.
        """
        import torch

        x = check_batch(batch, self.input_shape, "the torch runner")
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        before = torch.get_num_threads()
        was_training = self.model.training
        try:
            if before != self.threads:  # set_num_threads is not free; skip when already right
                torch.set_num_threads(self.threads)
            self.model.eval()
            with torch.inference_mode():
                out = self.model(torch.from_numpy(x).to(device=device, dtype=dtype))
        finally:
            self.model.train(was_training)
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        if isinstance(out, (tuple, list)):  # e.g. (logits, features): logits come first
            out = out[0]
        return out.detach().float().cpu().numpy()

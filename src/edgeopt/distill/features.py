"""Feature distillation: capture named layers' outputs, adapt them, compare them.

* :class:`FeatureHooks`: forward hooks that keep the outputs of layers named by their
  qualified names (a wrong name is a one-line ConfigError with the nearest names).
* :func:`make_adapter`: what turns a student feature into the teacher's shape for FitNet:
  a learned 1x1 convolution (or a linear layer for ``[B, C]`` features) where channel
  counts differ; spatial sizes are matched by bilinear resizing in the loss.
* :data:`FEATURE_LOSSES`: ``fitnet`` (MSE, Romero et al., ICLR 2015) and ``attention``
  (attention transfer, Zagoruyko & Komodakis, ICLR 2017).
* :class:`FeatureDistillLoss`: the Trainer loss of method ``feature``: response KD plus
  ``feature_weight`` times the sum of the feature losses over ``feature_pairs``. Its
  ``model`` (:class:`FeatureStudent`) wraps the student and the adapters, so the
  adapters are trained with the student; :meth:`FeatureDistillLoss.close` removes the
  hooks and the student is taken back out (the adapters are not part of it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.distill.config import DistillConfig
from edgeopt.distill.teacher import DistillLoss
from edgeopt.errors import ConfigError
from edgeopt.layer_patterns import near_names
from edgeopt.registry import Registry

#: feature loss name -> ``LOSS(student_feature, teacher_feature) -> scalar`` (after the adapter)
FEATURE_LOSSES: Registry = Registry("feature loss")


class FeatureHooks:
    """Keep the outputs of the layers ``names`` of ``model`` at each forward.

    ``features[name]`` is the latest output (a copy, so a following in-place ReLU does not
    change it). Use as a context manager or call :meth:`remove`.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2))
        >>> with FeatureHooks(m, ["0", "3"]) as h:
        ...     _ = m(torch.zeros(2, 1, 8, 8))
        >>> {k: tuple(v.shape) for k, v in h.features.items()}
        {'0': (2, 4, 8, 8), '3': (2, 2)}
        >>> FeatureHooks(m, ["1.conv"], what="student")
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: DistillConfig.feature_pairs: the student has no layer '1.conv'; ...
    """

    def __init__(self, model: nn.Module, names: Sequence[str], what: str = "model") -> None:
        modules = dict(model.named_modules())
        layer_names = [n for n in modules if n]
        for name in names:
            if name not in modules or not name:
                raise ConfigError(
                    f"DistillConfig.feature_pairs: the {what} has no layer {name!r}; "
                    f"nearest: {near_names(name, layer_names)}"
                )
        self.names = list(dict.fromkeys(names))
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            if not isinstance(output, torch.Tensor):
                raise ConfigError(f"DistillConfig.feature_pairs: layer {name!r} returns "
                                  f"{type(output).__name__}, not a tensor")
            self.features[name] = output.clone()

        return hook

    def remove(self) -> None:
        """Remove the hooks (the model is as it was)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureHooks:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def probe_shapes(model: nn.Module, hooks: FeatureHooks, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per-image shapes of the hooked features (one eval-mode forward of ``example``)."""
    was = model.training
    p = next(model.parameters(), None)
    model.eval()
    try:
        model(example.to(p.device) if p is not None else example)
    finally:
        model.train(was)
    silent = [n for n in hooks.names if n not in hooks.features]
    if silent:
        raise ConfigError(f"DistillConfig.feature_pairs: layer {silent[0]!r} gave no output in a forward "
                          f"pass (the model does not call it); choose a layer on the forward path")
    return {k: tuple(v.shape[1:]) for k, v in hooks.features.items()}


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int], loss: str,
                 pair: tuple[str, str] = ("?", "?")) -> nn.Module:
    """The module mapping a student feature to the teacher's channels for ``loss``.

    Shapes are per image: ``(C, H, W)`` or ``(C,)``. FitNet: a 1x1 convolution (``(C,)``:
    a linear layer) where the channel counts differ, else identity; attention transfer
    needs no adapter (it compares channel-pooled maps) but needs ``(C, H, W)`` features.

    Example:
        >>> make_adapter((32, 8, 8), (64, 4, 4), "fitnet")
        Conv2d(32, 64, kernel_size=(1, 1), stride=(1, 1), bias=False)
        >>> make_adapter((64, 8, 8), (64, 4, 4), "fitnet")
        Identity()
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    where = f"feature pair {list(pair)}: student {s}, teacher {t} (per image)"
    if loss == "attention":
        if len(s) != 3 or len(t) != 3:
            raise ConfigError(f"attention transfer needs [B, C, H, W] feature maps; {where}")
        return nn.Identity()
    if len(s) != len(t) or len(s) not in (1, 3):
        raise ConfigError(f"fitnet matches [B, C, H, W] to [B, C, H, W] or [B, C] to [B, C]; {where}")
    if s[0] == t[0]:
        return nn.Identity()
    if len(s) == 3:
        adapter = nn.Conv2d(s[0], t[0], kernel_size=1, bias=False)
        nn.init.kaiming_normal_(adapter.weight, mode="fan_out", nonlinearity="relu")
        return adapter
    return nn.Linear(s[0], t[0], bias=False)


def _resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if x.dim() == 4 and tuple(x.shape[2:]) != tuple(size):
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x


@FEATURE_LOSSES.register("fitnet", help="MSE between adapted student and teacher features (FitNets)")
def fitnet_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error; the student's map is bilinearly resized to the teacher's size.

    Example:
        >>> float(fitnet_loss(torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)))
        1.0
    """
    s = _resize_to(student_feature.float(), teacher_feature.shape[2:])
    return F.mse_loss(s, teacher_feature.float())


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: mean over channels of the squared
    activations, ``[B, 1, H, W]`` (not yet normalised)."""
    return feature.float().pow(2).mean(1, keepdim=True)


@FEATURE_LOSSES.register("attention", help="attention transfer (Zagoruyko & Komodakis, 2017)")
def attention_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """``mean((a_s - a_t)^2)`` of the L2-normalised, flattened attention maps; the student's
    map is resized to the teacher's size first (the authors' ``at_loss``).

    Example:
        >>> f = torch.rand(2, 3, 4, 4)
        >>> float(attention_loss(f, 5 * f)) < 1e-12  # the maps are normalised: scale does not matter
        True
    """
    a_s = _resize_to(attention_map(student_feature), teacher_feature.shape[2:]).flatten(1)
    a_t = attention_map(teacher_feature).flatten(1)
    return (F.normalize(a_s, dim=1) - F.normalize(a_t, dim=1)).pow(2).mean()


class FeatureStudent(nn.Module):
    """The student plus its feature adapters: one module, so the Trainer's optimizer trains
    both; ``forward`` is the student's."""

    def __init__(self, student: nn.Module, adapters: Sequence[nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.adapters = nn.ModuleList(adapters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


class FeatureDistillLoss(DistillLoss):
    """Trainer loss of method ``feature``; train :attr:`model`, not the student alone.

    ``loss = response KD + feature_scale * sum over pairs of FEATURE_LOSSES[feature_loss]``
    with parts ``task_loss``, ``kd_loss`` and ``feature_loss``; ``kd_warmup_epochs`` warms
    up the response KD term only. The teacher runs on every
    batch (its features are needed; the logits cache does not apply).

    Attributes:
        model: the :class:`FeatureStudent` to train (student + adapters).
        student_shapes / teacher_shapes: per-image feature shapes of each named layer.
        adapted: the pairs that got a learned adapter.
    """

    def __init__(self, teacher: nn.Module, config: DistillConfig, student: nn.Module,
                 example: torch.Tensor) -> None:
        super().__init__(teacher, config)
        self._feature_fn = FEATURE_LOSSES.get(config.feature_loss)
        self.pairs = [tuple(p) for p in config.feature_pairs]
        self.s_hooks = FeatureHooks(student, [s for s, _ in self.pairs], "student")
        try:
            self.t_hooks = FeatureHooks(self.teacher, [t for _, t in self.pairs], "teacher")
        except ConfigError:
            self.s_hooks.remove()
            raise
        try:
            self.student_shapes = probe_shapes(student, self.s_hooks, example)
            self.teacher_shapes = probe_shapes(self.teacher, self.t_hooks, example)
            adapters = [make_adapter(self.student_shapes[s], self.teacher_shapes[t],
                                     config.feature_loss, (s, t)) for s, t in self.pairs]
        except BaseException:
            self.close()
            raise
        p = next(student.parameters(), None)
        self.model = FeatureStudent(student, adapters).to(p.device if p is not None else "cpu")
        self.adapted = [list(pair) for pair, a in zip(self.pairs, adapters) if not isinstance(a, nn.Identity)]

    def data(self, data):
        return data

    def feature_term(self) -> torch.Tensor:
        """Sum over pairs of the feature loss of the last forward of student and teacher."""
        total = None
        for (s, t), adapter in zip(self.pairs, self.model.adapters):
            v = self._feature_fn(adapter(self.s_hooks.features[s]), self.t_hooks.features[t])
            total = v if total is None else total + v
        return total

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        logits = model(x)
        out = self.kd(logits, self.teacher_logits(x), y, self.config, epoch=self.progress())
        feat = self.feature_term()
        out["loss"] = out["loss"] + self.config.feature_scale * feat
        out["feature_loss"] = feat.detach()
        return out

    def close(self) -> None:
        """Remove the hooks from student and teacher."""
        for h in (getattr(self, "s_hooks", None), getattr(self, "t_hooks", None)):
            if h is not None:
                h.remove()

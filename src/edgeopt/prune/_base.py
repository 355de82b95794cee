"""The pruning method registry and :func:`prune`, the one entry point.

A method (``edgeopt.prune.unstructured``, ``.structured``, ``.obs``) exposes
``METHOD(model, config, layers, ratios, data, progress) -> Pruned``: it prunes ``model`` (a
copy :func:`prune` made) in place. :func:`prune` chooses the layers, runs the method (or
the iterative / gradual schedule around it) and measures what changed: per-layer weight
counts, sparsity and channels, parameters and MACs before and after.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import time
from typing import Any

import torch
from torch import nn

from edgeopt.prune.config import PruneConfig
from edgeopt.prune.layers import prunable_layers, resolve_layer_ratios, select_layers
from edgeopt.registry import Registry

#: method name -> module holding its ``METHOD`` callable (imported on first use)
PRUNE_METHODS: Registry = Registry("pruning method")
PRUNE_METHODS.add("unstructured", "edgeopt.prune.unstructured",
                  help="zero the smallest-magnitude weights (local or global); masks")
PRUNE_METHODS.add("structured", "edgeopt.prune.structured",
                  help="remove channels through torch-pruning's DependencyGraph; smaller, faster model")
PRUNE_METHODS.add("obs", "edgeopt.prune.obs",
                  help="unstructured with Optimal Brain Surgeon updates from a calibration Hessian")


@dataclasses.dataclass
class Pruned:
    """What a method returns.

    Attributes:
        model: the pruned model (the copy it was given).
        masks: unstructured/obs: ``{layer: bool tensor, True = weight kept}``.
        record: structured: the structure record (:mod:`edgeopt.prune.record`) that
            rebuilds the pruned shapes from the base architecture.
        info: method details for the report (e.g. the importance used, OBS errors).
        warnings: one-line warnings for the result and the report.
    """

    model: nn.Module
    masks: dict[str, torch.Tensor] | None = None
    record: dict[str, Any] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: the pruned model (a new object; the input model is unchanged), in eval mode,
            carrying the input's ModelSpec and architecture, plus ``edgeopt_prune_record``
            (structured) and ``edgeopt_masks`` (unstructured) for saving.
        config: the config used.
        layers: one row per prunable layer: ``{"name", "type", "weight_before",
            "weight_after", "nonzero_after", "sparsity", "channels_before",
            "channels_after", "ratio", "protected"}``.
        protected: ``{layer: reason}`` of the prunable layers left alone.
        params_before / params_after: parameters of the model.
        nonzero_before / nonzero_after: non-zero parameters.
        macs_before / macs_after: MACs of one image (None when they cannot be counted).
        history: iterative/gradual: one dict per step (ratio, sparsity, MACs, accuracy).
        info: method details; warnings: one-line warnings.
        seconds: wall time.
    """

    model: nn.Module
    config: PruneConfig
    layers: list[dict[str, Any]]
    protected: dict[str, str]
    params_before: int
    params_after: int
    nonzero_before: int
    nonzero_after: int
    macs_before: int | None
    macs_after: int | None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights over the prunable layers of the pruned model."""
        total = sum(r["weight_after"] for r in self.layers)
        nz = sum(r["nonzero_after"] for r in self.layers)
        return 1.0 - nz / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no model)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d["config"] = self.config.to_dict()
        d["sparsity"] = self.sparsity
        if self.macs_before and self.macs_after is not None:
            d["macs_ratio"] = self.macs_after / self.macs_before
        d["params_ratio"] = self.params_after / self.params_before if self.params_before else None
        return d


def get_method(name: str):
    """The ``METHOD`` callable of pruning method ``name`` (its module is imported now)."""
    return importlib.import_module(PRUNE_METHODS.get(name)).METHOD


def list_methods() -> list[str]:
    """Names of the pruning methods.

    Example:
        >>> list_methods()
        ['obs', 'structured', 'unstructured']
    """
    return PRUNE_METHODS.names()


def _nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def _macs(model: nn.Module) -> int | None:
    from edgeopt.evaluate.macs import count_macs
    from edgeopt.spec import SPEC_ATTR

    if getattr(model, SPEC_ATTR, None) is None:
        return None
    try:
        return count_macs(model).total_macs
    except Exception:  # a model the counter cannot run still prunes; MACs are then unknown
        return None


def layer_table(before: nn.Module, after: nn.Module, ratios: dict[str, float],
                protected: dict[str, str]) -> list[dict[str, Any]]:
    """One row per prunable layer of ``before``: weights, non-zeros, channels, ratio."""
    mods_after = dict(after.named_modules())
    rows = []
    for name in prunable_layers(before):
        m0 = before.get_submodule(name)
        m1 = mods_after.get(name)
        w1 = m1.weight.detach() if m1 is not None else None
        rows.append({
            "name": name,
            "type": type(m0).__name__,
            "weight_before": m0.weight.numel(),
            "weight_after": w1.numel() if w1 is not None else 0,
            "nonzero_after": int(torch.count_nonzero(w1)) if w1 is not None else 0,
            "sparsity": (1.0 - int(torch.count_nonzero(w1)) / w1.numel()) if w1 is not None and w1.numel() else 1.0,
            "channels_before": int(m0.weight.shape[0]),
            "channels_after": int(w1.shape[0]) if w1 is not None else 0,
            "in_before": int(m0.weight.shape[1]),
            "in_after": int(w1.shape[1]) if w1 is not None else 0,
            "ratio": ratios.get(name, 0.0),
            "protected": protected.get(name),
        })
    return rows


def prune(model: nn.Module, config: PruneConfig | None = None, data: Any = None, *,
          progress: bool = False, out_dir: Any = None, teacher: nn.Module | None = None) -> PruneResult:
    """Prune a copy of ``model`` as ``config`` says; the input model is not changed.

    Args:
        model: a float model in eval mode, carrying its ModelSpec (``create_model`` and
            ``load_checkpoint`` attach it); MACs need the spec.
        config: the :class:`PruneConfig` (default: unstructured, 50 %, local).
        data: a DataModule: calibration images (``taylor``/``obd`` importance, OBS) and
            the train/val splits for fine-tuning; None is allowed for methods that need none.
        progress: progress bars on long work.
        out_dir: iterative schedule: where the checkpoint of each cycle goes (None: none).
        teacher: recover with a teacher: every fine-tuning (one-shot, each iterative cycle,
            gradual) trains on response KD from a frozen copy of it (``finetune_kd_*``;
            :mod:`edgeopt.prune.recovery`), typically the unpruned model itself. It must
            carry the model's ModelSpec. ``info["recovery"]`` records it. None: labels only.

    Returns:
        A :class:`PruneResult`.

    Raises:
        ConfigError: a pattern or table entry names no layer, or data is missing where
            the method needs it; a teacher without ``finetune_epochs`` or whose ModelSpec
            differs from the model's.
        UnsupportedModelError: the dependency graph cannot prune a layer (structured); the
            message names it and the ``exclude`` pattern that skips it.

    Example:
        >>> from edgeopt.models import create_model
        >>> from edgeopt.spec import ModelSpec
        >>> m = create_model("simple_cnn", ModelSpec((1, 8, 8), 10, (0.5,), (0.25,)))
        >>> r = prune(m, PruneConfig(method="unstructured", ratio=0.5))
        >>> [round(row["sparsity"], 2) for row in r.layers if row["protected"] is None]
        [0.5, 0.5, 0.5]
    """
    config = config or PruneConfig()
    t0 = time.perf_counter()
    kd = None
    if teacher is not None:  # checked before any pruning work
        from edgeopt.prune.recovery import recovery_loss

        kd = recovery_loss(model, teacher, config, data)
    base = copy.deepcopy(model).eval()
    layers, protected = select_layers(base, config.include, config.exclude, config.protect_first_last)
    ratios = resolve_layer_ratios(layers, config.layer_ratios, config.ratio,
                                  all_names=prunable_layers(base))
    params_before = sum(p.numel() for p in base.parameters())
    nonzero_before = _nonzero(base)
    macs_before = _macs(base)

    history: list[dict[str, Any]] = []
    if config.schedule == "oneshot":
        work = copy.deepcopy(base)
        out = get_method(config.method)(work, config, layers, ratios, data, progress)
        if config.recalibrate_bn and not config.finetune_epochs and data is not None:
            from edgeopt.prune.bn_recalibration import recalibrate_batchnorm_

            n = recalibrate_batchnorm_(out.model, data.calibration(config.calibration_samples, seed=config.seed))
            out.info["bn_recalibrated"] = n
        if config.finetune_epochs:
            from edgeopt.prune.schedule import finetune

            history.append(finetune(out, config, data, progress=progress, loss_fn=kd))
    else:
        from edgeopt.prune.schedule import run_schedule

        out, history = run_schedule(base, config, layers, ratios, data, progress=progress, out_dir=out_dir,
                                    loss_fn=kd)
    if kd is not None:
        out.info["recovery"] = {
            "kd": "response", "temperature": config.finetune_kd_temperature, "alpha": config.finetune_kd_alpha,
            "teacher": (getattr(teacher, "edgeopt_arch", None) or {}).get("name") or type(teacher).__name__,
            "teacher_forwards": kd.forwards, "teacher_cache": "on" if kd.cache is not None else "off",
        }

    pruned = out.model.eval()
    _carry_attributes(model, pruned)
    if out.record is not None:
        pruned.edgeopt_prune_record = out.record
    if out.masks is not None:
        pruned.edgeopt_masks = out.masks
    return PruneResult(
        model=pruned,
        config=config,
        layers=layer_table(base, pruned, ratios, protected),
        protected=protected,
        params_before=params_before,
        params_after=sum(p.numel() for p in pruned.parameters()),
        nonzero_before=nonzero_before,
        nonzero_after=_nonzero(pruned),
        macs_before=macs_before,
        macs_after=_macs(pruned),
        history=history,
        info=out.info,
        warnings=list(out.warnings),
        seconds=time.perf_counter() - t0,
    )


def _carry_attributes(src: nn.Module, dst: nn.Module) -> None:
    """Keep the spec, architecture and lineage (deepcopy keeps them; a method that rebuilt
    the model may not have)."""
    for attr in ("edgeopt_spec", "edgeopt_arch", "edgeopt_lineage"):
        if hasattr(src, attr) and not hasattr(dst, attr):
            setattr(dst, attr, copy.deepcopy(getattr(src, attr)))

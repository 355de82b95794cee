"""Recovery and schedules: fine-tune a pruned model; iterative and gradual pruning.

* :func:`finetune`: one fine-tuning through :class:`~edgeopt.train.Trainer` (SGD, cosine,
  ``finetune_*``), masks re-applied after every step: the sparsity stays exact.
  With a ``loss_fn`` from :func:`edgeopt.prune.recovery.recovery_loss`, every fine-tuning
  of a schedule trains on KD from a frozen teacher; the masks are re-applied all the same.
* ``iterative``: ``steps`` cycles of prune -> fine-tune -> measure, the ratio rising to
  ``config.ratio`` (linearly, or along the Zhu & Gupta cubic); a checkpoint per cycle
  (``out_dir/cycle_<k>``) that a re-run resumes from; it stops when validation accuracy
  has dropped more than ``max_drop`` points and keeps the last cycle within it.
* ``gradual``: one fine-tuning of ``finetune_epochs`` during which sparsity rises as
  ``s_j = s_f (1 - (1 - j/n)^3)`` (Zhu & Gupta, 2017; ``s_i = 0``) in ``n = steps`` steps
  over the first 75 % of training; magnitude masks are recomputed at each step (zeros are
  the smallest weights, so masks only grow) and re-applied after every optimizer step.

The history is one dict per step, step 0 being the unpruned model: ``{"step", "ratio",
"sparsity", "val_acc", "drop", ...}``, the accuracy-vs-sparsity curve. ``sparsity`` is
the fraction of the chosen layers' weights that are zero or removed; ``val_acc`` is a
fraction on the validation split; ``drop`` is in accuracy points.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.prune._base import Pruned, _macs, get_method
from edgeopt.prune.config import PruneConfig
from edgeopt.prune.masks import MaskCallback

#: how the iterative ratio rises: fraction of the final ratio after cycle k of n
RAMPS: dict[str, Callable[[float], float]] = {
    "linear": lambda f: f,
    "cubic": lambda f: 1.0 - (1.0 - f) ** 3,  # Zhu & Gupta: large steps first, small last
}


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _need_data(data: Any, what: str) -> None:
    if data is None:
        raise ConfigError(f"{what} trains on the train split, measures on val: pass data (a DataModule)")


@torch.no_grad()
def val_accuracy(model: nn.Module, data: Any, batch_size: int = 256) -> float | None:
    """Top-1 accuracy (a fraction) on the whole validation split; None when it is empty.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> 0.0 <= val_accuracy(create_model("simple_cnn", data.spec).eval(), data) <= 1.0
        True
    """
    if len(data.split("val")) == 0:
        return None
    was, dev = model.training, _device_of(model)
    model.eval()
    correct = count = 0
    for x, y in data.loader("val", batch_size):
        correct += int((model(x.to(dev)).argmax(1).cpu() == y).sum())
        count += y.numel()
    model.train(was)
    return correct / count


def weight_sparsity(model: nn.Module, layers: Sequence[str], numel: Mapping[str, int] | None = None) -> float:
    """Fraction of the weights of ``layers`` that are zero, or removed when ``numel``
    gives each layer's weight count before (structured) pruning.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> with torch.no_grad(): _ = m[0].weight.copy_(torch.tensor([[0., 1.], [0., 0.]]))
        >>> weight_sparsity(m, ["0"]), weight_sparsity(m, ["0"], {"0": 8})
        (0.75, 0.875)
    """
    mods = dict(model.named_modules())
    total = nz = 0
    for n in layers:
        w = mods[n].weight.detach() if n in mods else None
        total += numel[n] if numel is not None else (w.numel() if w is not None else 0)
        nz += int(torch.count_nonzero(w)) if w is not None else 0
    return 1.0 - nz / total if total else 0.0


def _train_config(config: PruneConfig, epochs: int, seed: int, progress: bool, out_dir: Any = None):
    from edgeopt.train import TrainConfig

    return TrainConfig(
        epochs=epochs, batch_size=config.finetune_batch_size, lr=config.finetune_lr, optimizer="sgd",
        schedule="cosine", seed=seed, out_dir=str(out_dir) if out_dir is not None else None,
        progress=bool(progress), max_steps_per_epoch=config.finetune_max_steps_per_epoch,
        augment=config.finetune_augment, eval_every=epochs, device="auto",
    )


def finetune(pruned: Pruned, config: PruneConfig, data: Any, progress: bool = False, *,
             seed: int | None = None, out_dir: str | Path | None = None,
             loss_fn: Any = None) -> dict[str, Any]:
    """Fine-tune ``pruned.model`` in place for ``config.finetune_epochs``; masks stay.

    Args:
        pruned: what a method returned; its ``masks`` are re-applied after every step.
        config: the ``finetune_*`` fields and ``seed``.
        data: the DataModule (train split to train, val split to measure).
        progress: the Trainer's progress output.
        seed: the training seed (default ``config.seed``).
        out_dir: the Trainer's checkpoint folder; None (default) writes nothing.
        loss_fn: the Trainer ``loss_fn``; None: cross-entropy on the labels; a
            :func:`~edgeopt.prune.recovery.recovery_loss` (it has ``data()``): KD from its teacher (``"kd": True``).

    Returns:
        ``{"step": "finetune", "epochs", "val_acc", "sparsity", "seconds"}`` (``"kd": True``
        with a teacher);
        ``sparsity`` is re-read from the weights (of the masked layers, else of all
        prunable layers).

    Raises:
        ConfigError: no data, or ``finetune_epochs`` is 0.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> from edgeopt.prune.unstructured import METHOD
        >>> data = get_dataset("digits")
        >>> out = METHOD(create_model("simple_cnn", data.spec), PruneConfig(), ["fc"], {"fc": 0.5})
        >>> cfg = PruneConfig(finetune_epochs=1, finetune_max_steps_per_epoch=2)
        >>> finetune(out, cfg, data)["sparsity"]
        0.5
    """
    from edgeopt.prune.layers import prunable_layers
    from edgeopt.train import Trainer

    _need_data(data, "fine-tuning")
    if config.finetune_epochs < 1:
        raise ConfigError("finetune needs PruneConfig.finetune_epochs >= 1")
    t0 = time.perf_counter()
    model, home = pruned.model, _device_of(pruned.model)
    callbacks = [MaskCallback(pruned.masks)] if pruned.masks else []
    seed = config.seed if seed is None else seed
    tcfg = _train_config(config, config.finetune_epochs, seed, progress, out_dir)
    train_data = loss_fn.data(data) if hasattr(loss_fn, "data") else data  # KD: teacher logits cache
    result = Trainer(tcfg, loss_fn=loss_fn, callbacks=callbacks).fit(model, train_data)
    model.to(home).eval()  # the callback re-applied the masks after the last step too
    layers = list(pruned.masks) if pruned.masks else prunable_layers(model)
    acc = result.metrics.get("val_acc") if len(data.split("val")) else None  # the Trainer says 0 for none
    entry = {"step": "finetune", "epochs": config.finetune_epochs, "val_acc": acc,
             "sparsity": weight_sparsity(model, layers), "seconds": round(time.perf_counter() - t0, 3)}
    if hasattr(loss_fn, "teacher"):  # recovered with a teacher (KD)
        entry["kd"] = True
    return entry


def run_schedule(base: nn.Module, config: PruneConfig, layers: list[str], ratios: dict[str, float],
                 data: Any, *, progress: bool = False, out_dir: str | Path | None = None,
                 ramp: str = "linear", loss_fn: Any = None) -> tuple[Pruned, list[dict[str, Any]]]:
    """Run the ``iterative`` or ``gradual`` schedule of ``config`` on a copy of ``base``.

    Args:
        base: the unpruned model (not changed).
        config: the PruneConfig (``schedule``, ``steps``, ``max_drop``, ``finetune_*``).
        layers: the chosen layers; ratios: ``{layer: final ratio}``; data: the DataModule.
        progress: progress output.
        out_dir: iterative: the folder of the per-cycle checkpoints; finished cycles found
            there are skipped (a long run resumes). None: nothing is written.
        ramp: iterative: ``linear`` or ``cubic`` rise of the ratio over the cycles.
        loss_fn: the loss of every fine-tuning (:func:`~edgeopt.prune.recovery.recovery_loss` for a teacher);
            None: cross-entropy.

    Returns:
        ``(Pruned, history)``: the result (iterative: the last cycle within ``max_drop``)
        and one history dict per step, step 0 being the unpruned model.

    Raises:
        ConfigError: no data; an unknown ramp; ``out_dir`` holds cycles of another config.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> cfg = PruneConfig(schedule="gradual", ratio=0.8, steps=4, finetune_epochs=1,
        ...                   finetune_max_steps_per_epoch=8)
        >>> out, hist = run_schedule(create_model("simple_cnn", data.spec), cfg, ["fc"], {"fc": 0.8}, data)
        >>> [round(h["sparsity"], 4) for h in hist]
        [0.0, 0.4625, 0.7, 0.7875, 0.8]
    """
    _need_data(data, f"schedule {config.schedule!r}")
    if config.schedule == "gradual":
        from edgeopt.prune.gradual import gradual

        return gradual(base, config, layers, ratios, data, progress, loss_fn=loss_fn)
    if config.schedule != "iterative" or ramp not in RAMPS:
        raise ConfigError(f"run_schedule runs 'iterative' (ramp {' or '.join(RAMPS)}) or 'gradual', "
                          f"not {config.schedule!r} (ramp {ramp!r})")
    return _iterative(base, config, layers, ratios, data, progress, out_dir, ramp, loss_fn)


# -- iterative ----------------------------------------------------------------------------
def _increment(before: float, after: float) -> float:
    """The ratio that takes a model with ``before`` of its channels removed to ``after``."""
    return max(0.0, 1.0 - (1.0 - after) / (1.0 - before))


def _record_from_base(base: nn.Module, out: Pruned, prev: dict | None) -> dict[str, Any]:
    """The structure record of ``out.model`` against the unpruned ``base`` (the method's is
    against the model it was given), with kept channel indices composed across cycles."""
    from edgeopt.prune.record import make_record

    p, q = (prev or {}).get("kept") or {}, (out.record or {}).get("kept") or {}
    kept = dict(p) | {n: [p[n][i] for i in idx] if n in p else list(idx) for n, idx in q.items()}
    return make_record(base, out.model, kept or None)


def _finished_cycles(out_dir: Path, steps: int, fp: Any) -> tuple[int, dict[str, Any] | None]:
    """The last contiguous finished cycle in ``out_dir`` and its sidecar (0, None: none)."""
    from edgeopt.models.checkpoint import checkpoint_paths, read_sidecar

    done, side = 0, None
    for k in range(1, steps + 1):
        weights, sidecar = checkpoint_paths(out_dir / f"cycle_{k}")
        if not (weights.is_file() and sidecar.is_file()):
            break
        sc = read_sidecar(sidecar)
        if ((sc.get("extra") or {}).get("prune_schedule") or {}).get("fingerprint") != fp:
            raise ConfigError(f"{out_dir} holds pruning cycles of another configuration ({sidecar.name}); "
                              f"use another out_dir or remove its cycle_* files to start over")
        done, side = k, sc
    return done, side


def _load_cycle(out_dir: Path, k: int, base: nn.Module, config: PruneConfig, layers: list[str],
                record: Any) -> Pruned:
    from edgeopt.models import load_checkpoint
    from edgeopt.prune.masks import masks_from_zeros

    if k == 0:
        return Pruned(model=copy.deepcopy(base))
    structured = config.method == "structured"  # then the sidecar's record rebuilds the shapes
    model, _ = load_checkpoint(out_dir / f"cycle_{k}", arch=None if structured else copy.deepcopy(base))
    model.edgeopt_lineage = copy.deepcopy(getattr(base, "edgeopt_lineage", []))
    return Pruned(model=model, masks=None if structured else masks_from_zeros(model, layers), record=record)


def _save_cycle(out_dir: Path, entry: dict[str, Any], out: Pruned, history: list, fp: Any,
                config: PruneConfig) -> None:
    from edgeopt.models import save_checkpoint

    m = out.model
    if out.record is not None:
        m.edgeopt_prune_record = out.record
    step = {"step": "prune", "method": config.method, "schedule": "iterative", "cycle": entry["step"],
            "ratio": entry["ratio"], "sparsity": entry["sparsity"]}
    save_checkpoint(out_dir / f"cycle_{entry['step']}", m, metrics={"val_acc": entry["val_acc"]},
                    lineage=list(getattr(m, "edgeopt_lineage", []) or []) + [step],
                    extra={"prune_schedule": {"fingerprint": fp, "history": history, "record": out.record}})


def _iterative(base: nn.Module, config: PruneConfig, layers: list[str], ratios: dict[str, float],
               data: Any, progress: bool, out_dir: Any, ramp_name: str,
               loss_fn: Any = None) -> tuple[Pruned, list]:
    ramp, n, structured = RAMPS[ramp_name], config.steps, config.method == "structured"
    method = get_method(config.method)
    numel = {name: base.get_submodule(name).weight.numel() for name in layers}
    macs0 = _macs(base) if structured else None
    fp = {"config": config.to_dict(), "layers": layers, "ratios": ratios}
    if hasattr(loss_fn, "teacher"):  # cycles fine-tuned with a teacher (this one) are not others'
        from edgeopt.prune.recovery import teacher_fingerprint

        fp["loss"], fp["teacher"] = "kd", teacher_fingerprint(loss_fn.teacher)
    elif loss_fn is not None:
        fp["loss"] = "custom"
    fp = json.loads(json.dumps(fp))
    warnings: list[str] = []
    out_dir = Path(out_dir) if out_dir is not None else None
    done, side = (0, None)
    if out_dir is not None:
        from edgeopt._outputs import ensure_writable_dir

        ensure_writable_dir(out_dir, "cycle checkpoints folder")  # before any work
        done, side = _finished_cycles(out_dir, n, fp)
    if side is not None:  # resume: the history and record travel in the cycle's sidecar
        sched = side["extra"]["prune_schedule"]
        history, record = list(sched["history"]), sched.get("record")
        kept = max(h["step"] for h in history if h.get("within_budget", True))
        result = _load_cycle(out_dir, kept, base, config, layers, record)
        current = result.model  # a stopped run (kept < done) runs no further cycle
        warnings.append(f"resumed iterative pruning after cycle {done} of {n} from {out_dir}")
    else:
        history = [{"step": 0, "ratio": 0.0, "sparsity": weight_sparsity(base, layers, numel),
                    "val_acc": val_accuracy(base, data), "drop": 0.0, "within_budget": True,
                    "params": sum(p.numel() for p in base.parameters()), "macs": macs0}]
        record, current, result = None, base, Pruned(model=copy.deepcopy(base))
    base_acc = history[0]["val_acc"]
    if config.max_drop is not None and base_acc is None:
        raise ConfigError("max_drop needs a validation split to measure; the data has none")
    k = done
    while k < n and history[-1].get("within_budget", True):
        k += 1
        t0 = time.perf_counter()
        f, f_prev = ramp(k / n), ramp((k - 1) / n)
        if structured:  # channels of the already pruned model: the step from the last cycle
            call = {name: _increment(r * f_prev, r * f) for name, r in ratios.items()}
            cfg_k = config.replace(ratio=_increment(config.ratio * f_prev, config.ratio * f))
        else:  # weights of the (same-shaped) model: zeros are the smallest, masks only grow
            call, cfg_k = {name: r * f for name, r in ratios.items()}, config.replace(ratio=config.ratio * f)
        out = method(copy.deepcopy(current), cfg_k, layers, call, data, progress)  # current stays
        if structured:
            out.record = _record_from_base(base, out, record)
        record = out.record
        ft = finetune(out, config, data, progress, seed=config.seed + k, loss_fn=loss_fn)
        acc = ft["val_acc"]
        drop = None if acc is None or base_acc is None else 100.0 * (base_acc - acc)
        within = config.max_drop is None or (drop is not None and drop <= config.max_drop)
        entry = {"step": k, "ratio": round(config.ratio * f, 6),
                 "sparsity": weight_sparsity(out.model, layers, numel), "val_acc": acc,
                 "drop": None if drop is None else round(drop, 4),
                 "params": sum(p.numel() for p in out.model.parameters()), "within_budget": within,
                 "seconds": round(time.perf_counter() - t0, 3)}
        if "kd" in ft:
            entry["kd"] = ft["kd"]
        if macs0:  # structured: what the removed channels saved
            entry["macs"] = _macs(out.model)
            entry["macs_ratio"] = entry["macs"] / macs0 if entry["macs"] is not None else None
            history[0]["macs_ratio"] = 1.0
        history.append(entry)
        warnings += [w for w in out.warnings if w not in warnings]
        if out_dir is not None:
            _save_cycle(out_dir, entry, out, history, fp, config)
        if within:
            result, current = out, out.model
    kept = max(h["step"] for h in history if h.get("within_budget", True))
    last = history[-1]
    if not last.get("within_budget", True):
        what = f"cycle {kept} (ratio {history[kept]['ratio']})" if kept else "the unpruned model"
        warnings.append(f"iterative pruning stopped at cycle {last['step']} of {n}: validation accuracy "
                        f"dropped {last['drop']:.2f} points > max_drop {config.max_drop}; "
                        f"the result is {what}")
    for h in history:
        h["result"] = h["step"] == kept
    result.info = {**result.info, "schedule": {
        "kind": "iterative", "ramp": ramp_name, "cycles": n, "cycles_run": len(history) - 1,
        "result_cycle": kept, "stopped": not last.get("within_budget", True), "base_val_acc": base_acc}}
    result.warnings = warnings
    return result, history

"""The Trainer: the one training loop that fine-tuning, QAT and distillation reuse.

Subclasses (or a custom ``loss_fn``) change what a step computes; the loop keeps the
rest: AMP, channels_last, ``torch.compile``, gradient clipping, per-step LR schedule,
NaN checks, evaluation, early stopping, atomic checkpoints, exact resume and DDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeopt._oom import batch_memory
from edgeopt._outputs import dir_lock, ensure_writable_dir
from edgeopt.errors import ConfigError, brief, note_interrupt
from edgeopt.train import _checkpoints as ckpt
from edgeopt.train._metrics import RunningMetrics
from edgeopt.train.config import TrainConfig
from edgeopt.train.distributed import DistContext, setup_distributed
from edgeopt.train.optim import build_optimizer, build_schedule, set_lr
from edgeopt.train.progress import EpochProgress
from edgeopt.train.state import restore_rng, seed_everything

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict]


@dataclasses.dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        model: the trained model (final weights, unwrapped from DDP/compile).
        history: one dict per epoch: epoch, train_loss (+ train_<part>), train_acc,
            val_loss, val_acc, lr, images_per_s, seconds.
        best_metric: best val accuracy seen, or None if never evaluated.
        best_path / last_path: ``best.safetensors`` / ``last.safetensors`` (None without out_dir).
        metrics: final metrics of the returned model: val_loss, val_acc, test_loss, test_acc.
        stopped_early: True if early stopping ended the run.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    best_metric: float | None
    best_path: Path | None
    last_path: Path | None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    stopped_early: bool = False


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """The default loss: cross-entropy with label smoothing; also returns the logits.

    Example:
        >>> fn = cross_entropy_loss(0.1)
        >>> out = fn(nn.Linear(4, 3), torch.randn(2, 4), torch.tensor([0, 2]))
        >>> sorted(out)
        ['logits', 'loss']
    """

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        logits = model(x)  # [B, classes]
        return {"loss": F.cross_entropy(logits, y, label_smoothing=label_smoothing),
                "logits": logits}

    return loss_fn


class Trainer:
    """Train an image classifier with a :class:`TrainConfig`.

    ``loss_fn(model, x, y)`` returns a dict with ``"loss"`` (the scalar to minimise),
    optionally ``"logits"`` (``[B, classes]``, used for train accuracy) and any other
    named scalar parts (e.g. ``task_loss``, ``kd_loss``), each logged as ``train_<name>``.
    Override :meth:`compute_loss`, :meth:`training_step` or :meth:`evaluate` to change a
    step; ``callbacks`` are objects with optional ``on_step_end(trainer, step)`` and
    ``on_epoch_end(trainer, record)`` methods.

    Example:
        >>> from edgeopt.data import get_dataset
        >>> from edgeopt.models import create_model
        >>> data = get_dataset("digits")
        >>> model = create_model("simple_cnn", data.spec)
        >>> res = Trainer(TrainConfig(epochs=3, lr=0.05, progress=False)).fit(model, data)
        >>> len(res.history), res.metrics["test_acc"] > 0.8
        (3, True)
    """

    def __init__(self, config: TrainConfig, loss_fn: LossFn | None = None,
                 callbacks: Sequence[Any] = ()) -> None:
        if not isinstance(config, TrainConfig):
            raise ConfigError(f"Trainer needs a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.loss_fn = loss_fn or cross_entropy_loss(config.label_smoothing)
        self.callbacks = list(callbacks)
        self.global_step = 0
        self.epoch = 0
        self.steps_per_epoch = 0  # set by fit(): optimizer steps per epoch (this rank's, capped)

    # -- overridable pieces --------------------------------------------------------------
    def compute_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        """The loss dict of one batch (runs under autocast). Default: ``self.loss_fn``."""
        return self.loss_fn(model, x, y)

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Forward, backward and optimizer step on one batch; returns the loss dict."""
        opt, scaler, clip = self.optimizer, self.scaler, self.config.grad_clip
        opt.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.compute_loss(self.forward_model, x, y)
        loss = out["loss"]
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip is not None:
                scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(self._params, clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(self._params, clip)
            opt.step()
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        """Mean cross-entropy and top-1 accuracy over ``loader`` (all ranks combined)."""
        was_training = model.training
        model.eval()
        dev, cl = self.device, self.config.channels_last
        sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss_sum, correct, count
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = model(x)
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.numel()
        model.train(was_training)
        loss_sum, correct, count = self.dist.all_reduce_sum(sums).tolist()
        count = max(count, 1.0)
        return {"loss": loss_sum / count, "acc": correct / count}

    # -- the loop -------------------------------------------------------------------------
    def fit(self, model: nn.Module, data) -> TrainResult:
        """Train ``model`` on ``data`` (a DataModule) for ``config.epochs`` epochs.

        Training updates ``model``'s weights in place, as every PyTorch training loop does
        (copying a model per step would cost memory for nothing); the same object comes
        back as ``TrainResult.model``. Pass ``copy.deepcopy(model)`` to keep the original.

        Args:
            model: an image classifier taking normalised float32 NCHW input.
            data: an ``edgeopt.data.DataModule`` (``spec``, ``loader(split, ...)``).

        Returns:
            A :class:`TrainResult`.

        Raises:
            ConfigError: bad settings for this device/model/data, a resume mismatch, an
                ``out_dir`` that is a file or not writable (before any work), or an
                ``out_dir`` another live run is writing to (its pid is in the message).
            OutputError: a checkpoint cannot be written (disk full, read-only).
            ModelLoadError: the saved train state belongs to another model.
            NumericalError: the loss became NaN/Inf (the message names the step).
        """
        cfg = self.config
        if cfg.out_dir:
            ensure_writable_dir(cfg.out_dir, "out_dir")  # not after an epoch of work
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self._saved_at: tuple[int, int] | None = None
        self.dist = ctx = setup_distributed(cfg.device)
        try:
            # One run per out_dir: two would overwrite each other's best checkpoint.
            lock = (dir_lock(cfg.out_dir, "out_dir") if cfg.out_dir and ctx.is_main
                    else contextlib.nullcontext())
            with lock, batch_memory("training", cfg.batch_size):  # an OOM is one line
                return self._fit(model, data, ctx)
        except KeyboardInterrupt as exc:
            note_interrupt(exc, self._interrupt_note())
            raise
        finally:
            ctx.close()

    def _interrupt_note(self) -> str:
        """What an interrupted run kept, and how to continue (printed by the CLI)."""
        out = self.config.out_dir
        if not out:
            return "interrupted: nothing was saved (no out_dir); give --out-dir to be able to resume"
        if self._saved_at is not None:
            epoch, step = self._saved_at
            where = f"epoch {epoch + 1}, step {step}" if step else f"after epoch {epoch}"
            return f"interrupted: finished steps are kept in {out} ({where}); re-run with --resume to continue"
        if (Path(out) / ckpt.STATE_FILE).is_file():
            return f"interrupted: finished steps are kept in {out}; re-run with --resume to continue"
        return f"interrupted before the first checkpoint; nothing to resume in {out}"

    def _fit(self, model: nn.Module, data, ctx: DistContext) -> TrainResult:
        cfg = self.config
        self.device = dev = ctx.device
        self._check_precision(dev)
        ckpt.check_model_matches_data(model, data)
        ckpt.check_classes(data)  # one class: nothing to learn, 100 % by construction
        seed_everything(cfg.seed)
        self.model = model = model.to(dev)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        out_dir = Path(cfg.out_dir) if cfg.out_dir else None
        write = out_dir is not None and ctx.is_main
        if write:
            ckpt.remove_stale_temps(out_dir)
        progress = EpochProgress(cfg.progress and ctx.is_main, cfg.epochs, messages=ctx.is_main)

        train_loader = data.loader("train", cfg.batch_size, shuffle=True, augment=cfg.augment,
                                   seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
        eval_bs = max(256, cfg.batch_size)
        val_loader = data.loader("val", eval_bs, rank=ctx.rank, world_size=ctx.world_size)
        steps_per_epoch = len(train_loader)
        if cfg.max_steps_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        if steps_per_epoch == 0:
            raise ConfigError(f"the train split of '{data.name}' is empty; nothing to train on")
        self.steps_per_epoch = steps_per_epoch

        self.optimizer = build_optimizer(model, cfg)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        schedule = build_schedule(cfg, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(dev.type) if cfg.precision == "fp16" else None

        # -- resume --------------------------------------------------------------------
        history: list[dict[str, Any]] = []
        best, bad_epochs, start_epoch, skip, finished = None, 0, 0, 0, False
        running_state, rng_state, seconds_done = None, None, 0.0
        state = ckpt.load_resume_state(cfg, model, data, progress) if out_dir else None
        if state is not None:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            history, best, bad_epochs = list(state["history"]), state["best_metric"], state["bad_epochs"]
            start_epoch, skip, finished = state["epoch"], state["step_in_epoch"], state["finished"]
            running_state, rng_state = state.get("running"), state["rng"]
            seconds_done = float(state.get("seconds", 0.0))

        fwd: nn.Module = model
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            fwd = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg.compile:
            fwd = torch.compile(fwd)
        self.forward_model = fwd
        compiled_pending = cfg.compile

        def save_state(epoch: int, step_in_epoch: int, running: RunningMetrics | None,
                       seconds: float, done: bool = False) -> None:
            if write:
                ckpt.save_state(out_dir, self, data, epoch=epoch, step_in_epoch=step_in_epoch,
                                history=history, best=best, bad_epochs=bad_epochs,
                                running=running, seconds=seconds, finished=done)
                self._saved_at = (epoch, step_in_epoch)

        stopped_early = False
        model.train()
        try:
            # A run that stopped early stays stopped; otherwise finish the planned epochs.
            for epoch in range(start_epoch, start_epoch if finished else cfg.epochs):
                self.epoch = epoch
                t_epoch = time.perf_counter()
                train_loader.set_epoch(epoch)
                it = iter(train_loader)
                run = RunningMetrics()
                done = 0
                if skip:  # resume mid-epoch: same shuffle, skip the batches already trained
                    for _ in itertools.islice(it, skip):
                        pass
                    done, skip = skip, 0
                    run.load_state_dict(running_state)
                if rng_state is not None:  # after the skip, so the stream continues exactly
                    restore_rng(rng_state)
                    rng_state = None
                self.global_step = epoch * steps_per_epoch + done
                progress.start_epoch(epoch + 1, steps_per_epoch, done)
                log_every, ck_every = cfg.log_every_steps, cfg.checkpoint_every_steps
                constant_lr = schedule.is_constant
                cl, callbacks = cfg.channels_last, self.callbacks
                lr = schedule(self.global_step)
                t_train, save_seconds = time.perf_counter(), 0.0
                for x, y in itertools.islice(it, steps_per_epoch - done):
                    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                    if cl:
                        x = x.contiguous(memory_format=torch.channels_last)
                    if not constant_lr:
                        lr = schedule(self.global_step)
                        set_lr(self.optimizer, lr)
                    if compiled_pending:
                        out = self._first_compiled_step(x, y, progress)
                        compiled_pending = False
                    else:
                        out = self.training_step(x, y)
                    logits = out.get("logits")
                    correct = None if logits is None else (logits.detach().argmax(1) == y).sum()
                    parts = {k: v for k, v in out.items() if k not in ("loss", "logits")
                             and isinstance(v, torch.Tensor) and v.numel() == 1}
                    self.global_step += 1
                    done += 1
                    run.add(out["loss"], parts, correct, y.shape[0], self.global_step)
                    progress.advance()
                    if run.pending >= log_every:
                        run.flush(lr)
                        el = time.perf_counter() - t_train - save_seconds
                        progress.update_stats(run.mean_loss(), run.accuracy(),
                                              run.count * ctx.world_size / max(el, 1e-9))
                    if ck_every and done % ck_every == 0 and done < steps_per_epoch:
                        run.flush(lr)  # never save a state that already holds a NaN
                        t_save = time.perf_counter()
                        save_state(epoch, done, run, seconds_done + t_save - t_epoch)
                        save_seconds += time.perf_counter() - t_save
                    if callbacks:
                        for cb in callbacks:
                            if hasattr(cb, "on_step_end"):
                                cb.on_step_end(self, self.global_step)
                run.flush(lr)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                train_seconds = time.perf_counter() - t_train - save_seconds
                rec = self._epoch_record(epoch, run, lr, train_seconds)
                last_epoch = epoch + 1 == cfg.epochs
                if (epoch + 1) % cfg.eval_every == 0 or last_epoch:
                    val = self.evaluate(model, val_loader)
                    rec["val_loss"], rec["val_acc"] = val["loss"], val["acc"]
                rec["seconds"] = seconds_done + time.perf_counter() - t_epoch
                seconds_done = 0.0
                history.append(rec)
                if rec["val_acc"] is not None:
                    if best is None or rec["val_acc"] > best:
                        best, bad_epochs = rec["val_acc"], 0
                        if write:
                            ckpt.save_model(out_dir / "best", model, history, cfg,
                                            {"val_loss": rec["val_loss"], "val_acc": rec["val_acc"],
                                             "epoch": rec["epoch"]})
                    else:
                        bad_epochs += 1
                patience = cfg.early_stop_patience
                stopped_early = patience is not None and bad_epochs >= patience and not last_epoch
                if write:
                    ckpt.save_model(out_dir / "last", model, history, cfg,
                                    {"val_loss": rec["val_loss"], "val_acc": rec["val_acc"],
                                     "epoch": rec["epoch"]})
                save_state(epoch + 1, 0, None, 0.0, done=stopped_early)
                progress.end_epoch(rec)
                for cb in callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(self, rec)
                if stopped_early:
                    progress.message(f"early stop: val_acc did not improve for {patience} "
                                     f"evaluated epochs (best {best:.4f})")
                    break
        finally:
            progress.close()

        metrics = self._final_metrics(model, data, eval_bs, history)
        last_path = best_path = None
        if out_dir is not None:
            last_path = out_dir / "last.safetensors"
            best_path = out_dir / "best.safetensors" if best is not None else None
            if write:
                ckpt.save_model(out_dir / "last", model, history, cfg, metrics)
        ctx.barrier()  # no rank leaves (and destroys the group) before rank 0 has written
        return TrainResult(model=model, history=history, best_metric=best, best_path=best_path,
                           last_path=last_path, metrics=metrics,
                           stopped_early=stopped_early or finished)

    # -- helpers --------------------------------------------------------------------------
    def _autocast(self):
        p = self.config.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def _check_precision(self, dev: torch.device) -> None:
        if self.config.precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision='bf16' is not supported by this GPU; use fp16 or fp32")

    def _first_compiled_step(self, x, y, progress: EpochProgress) -> dict:
        """Run the first step compiled; if compilation fails, warn and go on in eager mode."""
        try:
            return self.training_step(x, y)
        except Exception as exc:  # noqa: BLE001 - inductor/dynamo failures come in many types
            msg = brief(exc, 160)
            progress.message(f"warning: torch.compile failed ({type(exc).__name__}: {msg}); "
                             "training in eager mode instead")
            self.forward_model = getattr(self.forward_model, "_orig_mod", self.model)
            return self.training_step(x, y)

    def _epoch_record(self, epoch: int, run: RunningMetrics, lr: float, seconds: float) -> dict:
        names = sorted(run.part_sums)
        vec = torch.tensor([run.loss_sum, run.correct, run.count] +
                           [run.part_sums[k] for k in names], dtype=torch.float64)
        vec = self.dist.all_reduce_sum(vec).tolist()
        count = max(vec[2], 1.0)
        rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": vec[0] / count}
        for k, v in zip(names, vec[3:]):
            rec[f"train_{k}"] = v / count
        rec.update(train_acc=vec[1] / count if run.has_acc else None, val_loss=None,
                   val_acc=None, lr=lr, images_per_s=vec[2] / max(seconds, 1e-9),
                   seconds=seconds)
        return rec

    def _final_metrics(self, model, data, eval_bs: int, history: list) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if history and history[-1].get("val_acc") is not None:
            metrics["val_loss"], metrics["val_acc"] = history[-1]["val_loss"], history[-1]["val_acc"]
        if len(getattr(data, "test", ())) > 0:
            test = self.evaluate(model, data.loader("test", eval_bs, rank=self.dist.rank,
                                                    world_size=self.dist.world_size))
            metrics["test_loss"], metrics["test_acc"] = test["loss"], test["acc"]
        return metrics

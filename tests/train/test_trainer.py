"""Trainer behaviour on a tiny CNN and the synthetic dataset (each test ~1 s on one core)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgeopt.errors import ConfigError, ModelLoadError, NumericalError
from edgeopt.train import TrainConfig, Trainer, load_train_state
from edgeopt.train.optim import build_schedule


def cfg(**kw) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 64, "lr": 0.05, "progress": False, "threads": 1}
    base.update(kw)
    return TrainConfig(**base)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_decreases_and_history_has_every_field(tiny_model, synthetic_data):
    res = Trainer(cfg(epochs=3)).fit(tiny_model(), synthetic_data)
    h = res.history
    assert [r["epoch"] for r in h] == [1, 2, 3]
    assert h[-1]["train_loss"] < 0.7 * h[0]["train_loss"]
    for r in h:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s",
                    "seconds"):
            assert isinstance(r[key], float), key
        assert r["images_per_s"] > 0 and 0 <= r["val_acc"] <= 1
    assert res.best_metric == max(r["val_acc"] for r in h)
    assert set(res.metrics) == {"val_loss", "val_acc", "test_loss", "test_acc"}
    assert res.best_path is None and res.last_path is None  # no out_dir: nothing written


def test_same_seed_gives_identical_weights(tiny_model, synthetic_data):
    c = cfg(epochs=1, augment=True)
    a = Trainer(c).fit(tiny_model(seed=1), synthetic_data).model
    b = Trainer(c).fit(tiny_model(seed=1), synthetic_data).model
    for (k, va), vb in zip(weights(a).items(), weights(b).values()):
        assert torch.equal(va, vb), k
    d = Trainer(c.replace(seed=7)).fit(tiny_model(seed=1), synthetic_data).model
    assert not torch.equal(weights(d)["fc.weight"], weights(a)["fc.weight"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(tiny_model, synthetic_data, precision):
    res = Trainer(cfg(epochs=2, precision=precision)).fit(tiny_model(), synthetic_data)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.model.fc.weight.dtype == torch.float32  # master weights stay fp32


def test_lr_applied_per_step_matches_schedule(tiny_model, synthetic_data):
    seen: list[float] = []

    class Spy:
        def on_step_end(self, trainer, step):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    c = cfg(epochs=2, warmup_epochs=1, batch_size=58)
    Trainer(c, callbacks=[Spy()]).fit(tiny_model(), synthetic_data)
    steps = len(synthetic_data.loader("train", 58))  # 580 train images / 58 = 10
    assert steps == 10 and len(seen) == 20
    s = build_schedule(c, steps)
    assert seen == pytest.approx([s(i) for i in range(20)])
    # hand-computed: warm-up 0.05 * (i + 1) / 10, then 0.05 * (1 + cos(pi * (i - 10) / 10)) / 2
    assert seen[0] == pytest.approx(0.005) and seen[9] == pytest.approx(0.05)
    assert seen[10] == pytest.approx(0.05) and seen[15] == pytest.approx(0.025)
    assert seen[19] == pytest.approx(0.025 * (1 + math.cos(math.pi * 0.9)))


def test_label_smoothing_changes_the_default_loss(tiny_model, synthetic_data):
    from edgeopt.train import cross_entropy_loss

    torch.manual_seed(0)
    m, x, y = tiny_model(), torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    m.eval()
    out = cross_entropy_loss(0.2)(m, x, y)
    logp = F.log_softmax(m(x), 1)
    # smoothed target: 0.8 on the label + 0.2 / 10 on every class
    expected = -(0.8 * logp.gather(1, y[:, None]).squeeze(1) + 0.02 * logp.sum(1)).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    h0 = Trainer(cfg(epochs=1)).fit(tiny_model(), synthetic_data).history[0]
    h1 = Trainer(cfg(epochs=1, label_smoothing=0.3)).fit(tiny_model(), synthetic_data).history[0]
    assert h1["train_loss"] > h0["train_loss"]  # smoothing puts a floor under the loss


def test_grad_clip_bounds_the_gradient_norm(tiny_model, synthetic_data):
    norms: list[float] = []

    class Spy:
        def on_step_end(self, trainer, step):
            g = [p.grad for p in trainer.model.parameters() if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([t.norm() for t in g])).item())

    Trainer(cfg(epochs=1, lr=0.5), callbacks=[Spy()]).fit(tiny_model(), synthetic_data)
    assert max(norms) > 0.05  # unclipped gradients are larger than the clip below
    norms.clear()
    Trainer(cfg(epochs=1, lr=0.5, grad_clip=0.05), callbacks=[Spy()]).fit(tiny_model(), synthetic_data)
    assert max(norms) <= 0.05 * 1.001


def test_huge_lr_raises_numerical_error_naming_the_step(tiny_model, synthetic_data):
    with pytest.raises(NumericalError, match=r"at step \d+ .*lower the learning rate"):
        Trainer(cfg(epochs=1, lr=1e9, momentum=0.0)).fit(tiny_model(), synthetic_data)


def test_nan_input_raises_numerical_error(tiny_model, synthetic_data):
    class Poison:
        def __init__(self, data):
            self.data, self.name, self.spec = data, data.name, data.spec
            self.train, self.val, self.test = data.train, data.val, data.test

        def loader(self, split, batch_size, **kw):
            inner = self.data.loader(split, batch_size, **kw)

            class L:
                def __len__(self):
                    return len(inner)

                def set_epoch(self, e):
                    inner.set_epoch(e)

                def __iter__(self):
                    for i, (x, y) in enumerate(inner):
                        if i == 3 and split == "train":
                            x = x.clone()
                            x[0, 0, 0, 0] = float("nan")
                        yield x, y

            return L()

    with pytest.raises(NumericalError, match="at step 4 "):
        Trainer(cfg(epochs=1)).fit(tiny_model(), Poison(synthetic_data))


def test_custom_loss_parts_are_logged(tiny_model, synthetic_data):
    def loss_fn(model, x, y):
        logits = model(x)
        task = F.cross_entropy(logits, y)
        reg = 1e-3 * logits.pow(2).mean()
        return {"loss": task + reg, "task_loss": task, "reg_loss": reg, "logits": logits}

    r = Trainer(cfg(epochs=1), loss_fn=loss_fn).fit(tiny_model(), synthetic_data).history[0]
    assert r["train_loss"] == pytest.approx(r["train_task_loss"] + r["train_reg_loss"], rel=1e-5)
    assert r["train_reg_loss"] > 0


def test_early_stopping_with_patience(tiny_model, synthetic_data):
    # lr=0: val accuracy never improves after epoch 1, so patience 2 stops after epoch 3.
    res = Trainer(cfg(epochs=10, lr=0.0, early_stop_patience=2)).fit(tiny_model(), synthetic_data)
    assert len(res.history) == 3 and res.stopped_early


def test_checkpoints_written_and_loadable(tiny_model, synthetic_data, tmp_path):
    from edgeopt.models import load_checkpoint

    res = Trainer(cfg(epochs=2, out_dir=str(tmp_path))).fit(tiny_model(), synthetic_data)
    assert res.last_path == tmp_path / "last.safetensors" and res.best_path.is_file()
    m, side = load_checkpoint(res.last_path, arch=tiny_model())
    assert torch.equal(m.fc.weight, res.model.fc.weight)
    assert len(side["history"]) == 2 and side["metrics"]["test_acc"] == res.metrics["test_acc"]
    assert side["lineage"][-1]["step"] == "train" and side["lineage"][-1]["epochs"] == 2
    _, best = load_checkpoint(res.best_path, arch=tiny_model())
    assert best["metrics"]["val_acc"] == res.best_metric
    state = load_train_state(tmp_path)
    assert (state["epoch"], state["step_in_epoch"], len(state["history"])) == (2, 0, 2)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


class Crash(Exception):
    pass


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tiny_model, synthetic_data, tmp_path):
    c = cfg(epochs=2, augment=True, checkpoint_every_steps=3, out_dir=str(tmp_path / "a"))
    full = Trainer(c).fit(tiny_model(), synthetic_data)

    class Killer:
        def on_step_end(self, trainer, step):
            if step == 15:  # epoch 2, step 5 of 10; the last state is from step 13
                raise Crash

    cb = c.replace(out_dir=str(tmp_path / "b"))
    with pytest.raises(Crash):
        Trainer(cb, callbacks=[Killer()]).fit(tiny_model(), synthetic_data)
    st = load_train_state(tmp_path / "b")
    assert (st["epoch"], st["step_in_epoch"], st["global_step"]) == (1, 3, 13)
    res = Trainer(cb.replace(resume=True)).fit(tiny_model(seed=99), synthetic_data)
    assert len(res.history) == 2
    for k, v in weights(full.model).items():
        assert torch.equal(v, weights(res.model)[k]), k
    for ra, rb in zip(full.history, res.history):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert ra[key] == rb[key], key


def test_resume_after_finish_extends_to_more_epochs(tiny_model, synthetic_data, tmp_path):
    c = cfg(epochs=1, out_dir=str(tmp_path), schedule="constant")
    Trainer(c).fit(tiny_model(), synthetic_data)
    res = Trainer(c.replace(epochs=2, resume=True)).fit(tiny_model(), synthetic_data)
    assert [r["epoch"] for r in res.history] == [1, 2]


def test_resume_with_fewer_epochs_than_run_is_refused_and_changes_nothing(tiny_model, synthetic_data,
                                                                          tmp_path):
    c = cfg(epochs=2, out_dir=str(tmp_path), max_steps_per_epoch=2)
    Trainer(c).fit(tiny_model(), synthetic_data)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()}
    with pytest.raises(ConfigError, match=r"cannot resume .* with epochs=1: that run has run 2 "
                                          r"epoch\(s\); resume with --epochs 2 or more"):
        Trainer(c.replace(epochs=1, resume=True)).fit(tiny_model(), synthetic_data)
    after = {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()}
    assert after == before  # the finished run's lineage is not rewritten


def test_one_class_is_refused_and_a_one_class_split_warns(synthetic_data, tiny_model):
    from edgeopt.data._module import DataModule, Split
    from edgeopt.errors import DataError, EdgeoptWarning
    from edgeopt.spec import ModelSpec, attach_spec

    d = synthetic_data
    def zeros(s):
        return Split(s.images, torch.zeros_like(s.labels))

    one = ModelSpec(d.spec.input_shape, 1, d.spec.mean, d.spec.std, class_names=("cat",))
    dm1 = DataModule("one", one, zeros(d.train), zeros(d.val), zeros(d.test))
    with pytest.raises(DataError, match=r"has 1 class \(cat\): a classifier needs at least 2"):
        Trainer(cfg(epochs=1)).fit(attach_spec(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 1)),
                                               one), dm1)
    # 10 classes, but the train split holds only class 0: it trains, with a warning
    dm = DataModule("skewed", d.spec, zeros(d.train), d.val, d.test)
    with pytest.warns(EdgeoptWarning, match=r"the train split of 'skewed' holds only class 'class0'"):
        Trainer(cfg(epochs=1, max_steps_per_epoch=1)).fit(tiny_model(), dm)


def test_out_of_memory_in_a_step_is_one_line_naming_the_batch_size(tiny_model, synthetic_data, monkeypatch):
    def oom(self, x, y):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 256000000000 bytes")

    monkeypatch.setattr(Trainer, "training_step", oom)
    with pytest.raises(ConfigError, match=r"^training: batch_size=64 does not fit in memory "
                                          r"\(RuntimeError: .*\); lower --batch-size$"):
        Trainer(cfg(epochs=1)).fit(tiny_model(), synthetic_data)


def test_resume_without_state_starts_fresh_with_a_warning(tiny_model, synthetic_data, tmp_path, capsys):
    res = Trainer(cfg(epochs=1, out_dir=str(tmp_path), resume=True)).fit(tiny_model(), synthetic_data)
    assert len(res.history) == 1
    err = capsys.readouterr().err
    assert "does not exist; starting fresh" in err and len(err.strip().splitlines()) == 1


def test_resume_onto_another_model_or_batch_size_is_a_clear_error(tiny_model, synthetic_data, tmp_path):
    c = cfg(epochs=1, out_dir=str(tmp_path))
    Trainer(c).fit(tiny_model(), synthetic_data)
    with pytest.raises(ModelLoadError, match="was saved for model 'tinynet8', not 'tinynet16'"):
        Trainer(c.replace(resume=True)).fit(tiny_model(width=16), synthetic_data)
    with pytest.raises(ConfigError, match="batch_size=64, not 32"):
        Trainer(c.replace(resume=True, batch_size=32)).fit(tiny_model(), synthetic_data)


def test_model_for_other_data_is_rejected(synthetic_data, digits_data, tiny_model):
    with pytest.raises(ConfigError, match="expects input"):
        Trainer(cfg(epochs=1)).fit(tiny_model(), digits_data)


def test_channels_last_and_max_steps(tiny_model, synthetic_data):
    seen = []

    class Spy:
        def on_step_end(self, trainer, step):
            seen.append(step)

    res = Trainer(cfg(epochs=2, channels_last=True, max_steps_per_epoch=3),
                  callbacks=[Spy()]).fit(tiny_model(), synthetic_data)
    assert seen == [1, 2, 3, 4, 5, 6] and len(res.history) == 2


def test_compile_failure_falls_back_to_eager_with_one_warning(tiny_model, synthetic_data,
                                                             monkeypatch, capsys):
    class Broken(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

        def forward(self, x):
            raise RuntimeError("inductor: no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda m, **kw: Broken(m))
    res = Trainer(cfg(epochs=1, compile=True)).fit(tiny_model(), synthetic_data)
    assert len(res.history) == 1 and res.history[0]["train_loss"] > 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.compile failed" in err[0] and "eager" in err[0]


def test_progress_without_tty_prints_one_line_per_epoch(tiny_model, synthetic_data, capsys):
    Trainer(cfg(epochs=2, progress=True)).fit(tiny_model(), synthetic_data)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 2
    assert lines[0].startswith("epoch 1/2  loss ") and "img/s" in lines[1]

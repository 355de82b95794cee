"""Recovery with a teacher: pruning's fine-tuning trains on KD from the unpruned model.

The teacher is a separate copy of the trained digits CNN with a forward hook, so every
forward it runs is counted and checked (eval mode, no autograd, frozen parameters).
"""

from __future__ import annotations

import copy

import pytest
import torch
from _cli import one_line, run_cli

from edgeopt.errors import ConfigError
from edgeopt.prune import PruneConfig, prune


class _Watch:
    """Forward hook: counts the teacher's forwards and what each saw."""

    def __init__(self) -> None:
        self.calls = 0
        self.seen: set[tuple[bool, bool, bool]] = set()  # (training, grad enabled, any param requires grad)

    def __call__(self, module, inputs, output) -> None:
        self.calls += 1
        self.seen.add((module.training, torch.is_grad_enabled(),
                       any(p.requires_grad for p in module.parameters())))


@pytest.fixture
def teacher(digits_cnn):
    t = copy.deepcopy(digits_cnn)
    t.watch = watch = _Watch()
    # a closure, not the object: the frozen copy prune makes deep-copies the hooks, and a
    # function is copied by reference, so the copy's forwards are counted here
    t.register_forward_hook(lambda module, inputs, output: watch(module, inputs, output))
    return t


def _acc(model, data) -> float:
    x, y = data.samples(10_000, split="test")
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).double().mean())


def _zeros_exact(model, result, ratio: float) -> None:
    """Each pruned layer holds exactly its share of zeros after the KD fine-tuning."""
    for row in result.layers:
        if row["protected"] is None:
            w = model.get_submodule(row["name"]).weight
            assert int((w == 0).sum()) == round(ratio * w.numel()), row["name"]


@pytest.mark.parametrize("schedule", ["oneshot", "gradual"])
def test_unstructured_kd_recovery_runs_the_frozen_teacher_and_keeps_sparsity_exact(
        schedule, teacher, digits_cnn, digits_data):
    cfg = PruneConfig(method="unstructured", ratio=0.7, schedule=schedule, steps=3, finetune_epochs=1,
                      finetune_max_steps_per_epoch=5, finetune_kd_temperature=2.0, finetune_kd_alpha=0.5)
    r = prune(digits_cnn, cfg, digits_data, teacher=teacher)
    # augmentation is on by default (no logits cache): one teacher forward per training step
    assert teacher.watch.calls == 5 == r.info["recovery"]["teacher_forwards"]
    assert teacher.watch.seen == {(False, False, False)}  # eval mode, no autograd, frozen
    assert teacher.training is False and all(p.requires_grad for p in teacher.parameters())  # input unchanged
    assert r.info["recovery"] == {"kd": "response", "temperature": 2.0, "alpha": 0.5, "teacher": "simple_cnn",
                                  "teacher_forwards": 5, "teacher_cache": "off"}
    fine_tuned = [h for h in r.history if h["step"] != 0]
    assert fine_tuned and all(h["kd"] is True for h in fine_tuned)
    assert r.to_dict()["info"]["recovery"]["alpha"] == 0.5
    _zeros_exact(r.model, r, 0.7)  # the masks were re-applied after every KD step


def test_iterative_cycles_share_the_teacher_logits_cache(teacher, digits_cnn, digits_data):
    cfg = PruneConfig(method="unstructured", ratio=0.6, schedule="iterative", steps=2, finetune_epochs=1,
                      finetune_augment=False)
    r = prune(digits_cnn, cfg, digits_data, teacher=teacher)
    steps = len(digits_data.loader("train", cfg.finetune_batch_size))
    # cycle 1 ran the teacher once per batch; cycle 2 found every image's logits cached
    assert r.info["recovery"]["teacher_cache"] == "on"
    assert teacher.watch.calls == steps == r.info["recovery"]["teacher_forwards"]
    assert [h.get("kd") for h in r.history] == [None, True, True]
    _zeros_exact(r.model, r, 0.6)
    assert _acc(r.model, digits_data) >= 0.90  # measured 0.95 (2 cycles of 1 KD epoch)


def test_iterative_cycles_of_one_teacher_are_not_resumed_with_another(digits_cnn, digits_data, tmp_path):
    cfg = PruneConfig(method="unstructured", ratio=0.6, schedule="iterative", steps=2, finetune_epochs=1,
                      finetune_max_steps_per_epoch=2, finetune_augment=False)
    prune(digits_cnn, cfg, digits_data, teacher=digits_cnn, out_dir=tmp_path)
    again = prune(digits_cnn, cfg, digits_data, teacher=digits_cnn, out_dir=tmp_path)
    assert any("resumed iterative pruning after cycle 2 of 2" in w for w in again.warnings)
    other = copy.deepcopy(digits_cnn)
    with torch.no_grad():
        other.fc.weight.mul_(0.5)  # same architecture and spec, other weights: another teacher
    with pytest.raises(ConfigError, match="cycles of another configuration"):
        prune(digits_cnn, cfg, digits_data, teacher=other, out_dir=tmp_path)


def test_structured_kd_recovery_gives_the_smaller_model_back_its_accuracy(teacher, digits_cnn, digits_data):
    cfg = PruneConfig(method="structured", ratio=0.5, finetune_epochs=2)
    r = prune(digits_cnn, cfg, digits_data, teacher=teacher)
    assert r.params_after < 0.4 * r.params_before
    assert teacher.watch.calls == r.info["recovery"]["teacher_forwards"] > 0
    assert teacher.watch.seen == {(False, False, False)}
    assert _acc(r.model, digits_data) >= 0.90  # measured 0.958 after 2 KD epochs


def test_a_teacher_without_finetuning_or_of_another_spec_is_a_config_error(digits_cnn, digits_data):
    from edgeopt.models import create_model
    from edgeopt.spec import ModelSpec

    with pytest.raises(ConfigError, match="finetune_epochs >= 1"):
        prune(digits_cnn, PruneConfig(), digits_data, teacher=digits_cnn)
    s = digits_data.spec
    other = create_model("simple_cnn", ModelSpec(s.input_shape, 5, s.mean, s.std))
    with pytest.raises(ConfigError, match="num_classes 5 vs 10"):
        prune(digits_cnn, PruneConfig(finetune_epochs=1), digits_data, teacher=other)
    with pytest.raises(ConfigError, match="finetune_kd_alpha"):
        PruneConfig(finetune_kd_alpha=1.5)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, digits_cnn):
    from edgeopt.models import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("recover") / "cnn", digits_cnn)


def test_cli_recover_with_teacher_records_the_teacher_in_the_sidecar(capsys, ckpt, tmp_path):
    from edgeopt.models import load_checkpoint

    out = tmp_path / "u50kd.safetensors"
    code, stdout, err = run_cli(capsys, "prune", ckpt, "--method", "unstructured", "--ratio", "0.5",
                                "--finetune-epochs", "1", "--finetune-max-steps", "3",
                                "--recover-with-teacher", ckpt, "--kd-temperature", "3", "--kd-alpha", "0.8",
                                "--out", out, "--no-eval", "--no-sparse")
    assert code == 0, err
    assert f"recovered with teacher {ckpt}" in stdout and "T=3.0, alpha=0.8" in stdout
    model, side = load_checkpoint(out)
    step = side["lineage"][-1]
    assert step["step"] == "prune" and step["finetune_epochs"] == 1
    assert step["recovery"] == {"kd": "response", "teacher": "simple_cnn", "teacher_checkpoint": str(ckpt),
                                "temperature": 3.0, "alpha": 0.8}
    pr = side["extra"]["pruning"]
    assert pr["config"]["finetune_kd_temperature"] == 3.0 and pr["config"]["finetune_kd_alpha"] == 0.8
    assert pr["info"]["recovery"]["teacher_forwards"] == 3 and pr["history"][0]["kd"] is True
    for row in pr["layers"]:
        if row["protected"] is None:
            w = model.get_submodule(row["name"]).weight
            assert int((w == 0).sum()) == round(0.5 * w.numel())


def test_cli_dump_config_holds_the_kd_settings(capsys, ckpt):
    import yaml

    code, stdout, err = run_cli(capsys, "prune", ckpt, "--kd-alpha", "0.7", "--dump-config")
    assert code == 0, err
    d = yaml.safe_load(stdout)
    assert d["finetune_kd_alpha"] == 0.7 and d["finetune_kd_temperature"] == 4.0


def test_cli_errors_are_one_line(capsys, ckpt, tmp_path, digits_data):
    from edgeopt.models import create_model, save_checkpoint
    from edgeopt.spec import ModelSpec

    code, _, err = run_cli(capsys, "prune", ckpt, "--recover-with-teacher", ckpt, "--out", tmp_path / "a",
                           "--no-eval")
    line = one_line(err)
    assert code == 2 and line.startswith("ConfigError:") and "--finetune-epochs" in line
    assert not (tmp_path / "a.safetensors").exists()
    s = digits_data.spec
    other = save_checkpoint(tmp_path / "other",
                            create_model("simple_cnn", ModelSpec(s.input_shape, s.num_classes, (0.0,), (1.0,),
                                                                 dataset=s.dataset)))
    code, _, err = run_cli(capsys, "prune", ckpt, "--finetune-epochs", "1", "--recover-with-teacher", other,
                           "--out", tmp_path / "b", "--no-eval")
    line = one_line(err)
    assert code == 2 and "ModelSpec differs" in line and "mean" in line
    code, _, err = run_cli(capsys, "prune", ckpt, "--finetune-epochs", "1", "--recover-with-teacher",
                           tmp_path / "missing.safetensors", "--out", tmp_path / "c", "--no-eval")
    assert code == 2 and "missing" in one_line(err)


@pytest.mark.parametrize("name", ["edgeopt.prune.recovery", "edgeopt.prune._base", "edgeopt.prune.schedule"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0

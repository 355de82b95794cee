"""The teacher is frozen and checked against the data; its logits cache is used exactly
when the training batches are not augmented."""

from __future__ import annotations

import math

import pytest
import torch

from edgeopt.distill import DistillConfig, DistillLoss, check_teacher, distill, distill_loss_fn
from edgeopt.distill.teacher import cache_status
from edgeopt.errors import ConfigError, DataError
from edgeopt.models import create_model
from edgeopt.spec import ModelSpec
from edgeopt.train import TrainConfig, Trainer

FAST = {"epochs": 2, "batch_size": 64, "lr": 0.05}


def test_teacher_is_frozen_in_eval_mode_and_unchanged(make_student, teacher, digits_data, forward_log):
    teacher.register_forward_hook(forward_log)  # copied with the teacher: sees distill's copy
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert all(p.requires_grad for p in teacher.parameters())
    r = distill(make_student(), teacher, DistillConfig(**FAST), digits_data, progress=False)
    # every teacher forward (test accuracy and training) ran in eval mode without autograd
    steps = math.ceil(1295 / 64)
    assert len(forward_log.calls) >= steps
    assert {(training, grad) for training, grad, _ in forward_log.calls} == {(False, False)}
    # the object passed is not touched: same weights, no gradients, flags as given
    assert not teacher.training
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters())
    assert r.teacher_acc >= 0.95


def test_teacher_stays_in_eval_mode_when_given_in_train_mode(make_student, teacher, digits_data, forward_log):
    teacher.train()
    teacher.register_forward_hook(forward_log)
    distill(make_student(), teacher, DistillConfig(epochs=1, batch_size=64, baseline=False),
            digits_data, progress=False)
    assert teacher.training  # the caller's object keeps its mode
    assert {(training, grad) for training, grad, _ in forward_log.calls} == {(False, False)}


@pytest.mark.parametrize("spec, match", [
    (ModelSpec((1, 8, 8), 5, (0.5,), (0.25,)), r"expects input \(1, 8, 8\) with 5 classes but the data 'digits' has"),
    (ModelSpec((3, 8, 8), 10, (0.5,) * 3, (0.25,) * 3), r"expects input \(3, 8, 8\) with 10 classes"),
    (None, "trained on inputs normalised with mean"),
])
def test_teacher_spec_mismatch_is_a_one_line_config_error(make_student, digits_data, spec, match):
    if spec is None:  # right shape and classes, other normalisation
        d = digits_data.spec
        spec = ModelSpec(d.input_shape, d.num_classes, (0.1,), (0.9,), d.class_names)
    wrong = create_model("simple_cnn", spec)
    with pytest.raises(ConfigError, match=match) as info:
        distill(make_student(), wrong, DistillConfig(**FAST), digits_data, progress=False)
    assert "\n" not in str(info.value)


def test_teacher_without_spec_is_checked_by_a_forward(digits_data):
    bare = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7))
    with pytest.raises(ConfigError, match=r"carries no ModelSpec and gives \(2, 7\) for 2 images"):
        check_teacher(bare, digits_data)
    check_teacher(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), digits_data)


def test_missing_teacher_or_data_is_refused(make_student, teacher, digits_data):
    with pytest.raises(ConfigError, match="method='response' needs a teacher"):
        distill(make_student(), None, DistillConfig(**FAST), digits_data)
    with pytest.raises(ConfigError, match="pass data"):
        distill(make_student(), teacher, DistillConfig(**FAST), None)
    with pytest.raises(ConfigError, match="DistillConfig.method='self' needs a teacher"):
        distill(make_student(), None, DistillConfig(method="self", **FAST), digits_data)


def _count_forwards(teacher, forward_log, student, data, augment: bool, epochs: int = 2):
    teacher.register_forward_hook(forward_log)
    fn = distill_loss_fn(teacher, DistillConfig(augment=augment))
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, augment=augment, progress=False)
    Trainer(cfg, loss_fn=fn).fit(student, fn.data(data))
    return fn


def test_logits_cache_runs_the_teacher_once_per_image_without_augmentation(
        make_student, teacher, digits_data, forward_log):
    fn = _count_forwards(teacher, forward_log, make_student(), digits_data, augment=False, epochs=3)
    steps = math.ceil(1295 / 64)  # 21 batches per epoch
    # epoch 1 fills the cache, one forward per batch; epochs 2 and 3 run no teacher
    assert len(forward_log.calls) == steps == fn.forwards
    assert sum(b for _, _, b in forward_log.calls) == 1295
    assert fn.cache is not None and fn.cache.filled == 1295
    # the cached logits are the teacher's logits of the un-augmented image at that position
    x = digits_data.normalize(digits_data.train.images[[0, 500, 1294]])
    with torch.no_grad():
        want = fn.teacher(x)
    assert torch.allclose(fn.cache.logits[[0, 500, 1294]], want, atol=1e-5)


def test_no_cache_with_augmentation_the_teacher_sees_each_augmented_batch(
        make_student, teacher, digits_data, forward_log):
    fn = _count_forwards(teacher, forward_log, make_student(), digits_data, augment=True, epochs=2)
    assert fn.cache is None
    assert len(forward_log.calls) == 2 * math.ceil(1295 / 64) == fn.forwards
    assert cache_status(DistillConfig(augment=True), digits_data).startswith("off: augment=True")


def test_distill_reports_cache_use_and_teacher_forwards(make_student, teacher, digits_data):
    steps = math.ceil(1295 / 64)
    on = distill(make_student(), teacher, DistillConfig(**FAST, baseline=False), digits_data, progress=False)
    assert on.info["teacher_cache"] == "on" and on.info["teacher_forwards"] == steps
    off = distill(make_student(), teacher, DistillConfig(**FAST, baseline=False, augment=True), digits_data,
                  progress=False)
    assert off.info["teacher_cache"].startswith("off: augment=True") and off.info["teacher_forwards"] == 2 * steps
    no = distill(make_student(), teacher, DistillConfig(**FAST, baseline=False, cache_teacher_logits=False),
                 digits_data, progress=False)
    assert no.info["teacher_cache"] == "off: cache_teacher_logits=False" and no.info["teacher_forwards"] == 2 * steps
    # cached or not, the same logits: the same student comes out
    assert on.runs[0]["student"]["test_acc"] == no.runs[0]["student"]["test_acc"]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in
               zip(on.model.state_dict().values(), no.model.state_dict().values()))


def test_distill_loss_fn_refuses_methods_that_train_more_than_the_model(teacher):
    with pytest.raises(ConfigError, match="method 'feature' also trains adapters or peers"):
        distill_loss_fn(teacher, DistillConfig(method="feature", feature_pairs=[["a", "b"]]))
    assert isinstance(distill_loss_fn(teacher, DistillConfig(method="dkd")), DistillLoss)


def test_no_test_split_is_a_data_error(make_student, teacher, digits_data):
    from edgeopt.data import DataModule

    empty = digits_data.test.subset(torch.tensor([], dtype=torch.int64))
    data = DataModule("digits", digits_data.spec, digits_data.train, digits_data.val, empty)
    with pytest.raises(DataError, match="has no test images"):
        distill(make_student(), teacher, DistillConfig(**FAST), data)

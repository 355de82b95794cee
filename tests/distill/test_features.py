"""Feature hooks capture the named layers; adapters map channels and are trained with the
student but not returned; FitNet and attention-transfer losses equal hand computations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.distill import DistillConfig, FeatureHooks, distill, make_adapter
from edgeopt.distill.features import FeatureDistillLoss, attention_loss, fitnet_loss
from edgeopt.errors import ConfigError
from edgeopt.train import TrainConfig, Trainer
from edgeopt.train.optim import build_optimizer


def test_hooks_capture_the_named_layers_with_their_shapes(make_student, teacher):
    student = make_student()
    x = torch.randn(3, 1, 8, 8)
    with FeatureHooks(student, ["features.1", "features.6", "fc"]) as hs, \
            FeatureHooks(teacher, ["features.0.0", "features.3", "features.5"]) as ht, torch.no_grad():
        student(x)
        teacher(x)
    assert {k: tuple(v.shape) for k, v in hs.features.items()} == {
        "features.1": (3, 8, 8, 8), "features.6": (3, 16, 4, 4), "fc": (3, 10)}
    assert {k: tuple(v.shape) for k, v in ht.features.items()} == {
        "features.0.0": (3, 32, 8, 8), "features.3": (3, 128, 4, 4), "features.5": (3, 128, 2, 2)}
    # the captured BN output is before the in-place ReLU that follows it in simple_cnn
    assert float(ht.features["features.0.0"].min()) < 0
    # the hooks are gone afterwards
    assert not any(m._forward_hooks for m in student.modules())
    assert not any(m._forward_hooks for m in teacher.modules())


def test_a_wrong_layer_name_lists_near_names(make_student, teacher, digits_data):
    with pytest.raises(ConfigError, match=r"the student has no layer 'features\.9'; nearest: features\.[0-9]"):
        FeatureHooks(make_student(), ["features.9"], "student")
    cfg = DistillConfig(method="feature", feature_pairs=[["features.5", "feature.3"]], epochs=1)
    with pytest.raises(ConfigError, match=r"the teacher has no layer 'feature\.3'; nearest: features\.3") as info:
        distill(make_student(), teacher, cfg, digits_data, progress=False)
    assert "\n" not in str(info.value)


def test_adapters_match_channels_only_where_they_differ():
    conv = make_adapter((16, 4, 4), (128, 2, 2), "fitnet")
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (128, 16, 1, 1)
    assert isinstance(make_adapter((128, 4, 4), (128, 2, 2), "fitnet"), nn.Identity)
    lin = make_adapter((16,), (10,), "fitnet")
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (10, 16)
    assert isinstance(make_adapter((16, 4, 4), (128, 2, 2), "attention"), nn.Identity)
    with pytest.raises(ConfigError, match="attention transfer needs"):
        make_adapter((16,), (10,), "attention")
    with pytest.raises(ConfigError, match="fitnet matches"):
        make_adapter((16, 4, 4), (10,), "fitnet")


def test_fitnet_loss_resizes_bilinearly_and_is_mse():
    s = torch.arange(16.0).view(1, 1, 4, 4)
    t = torch.ones(1, 1, 2, 2)
    want = F.interpolate(s, size=(2, 2), mode="bilinear", align_corners=False)  # 2x2 block means
    assert want.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    expected = sum((v - 1.0) ** 2 for v in (2.5, 4.5, 10.5, 12.5)) / 4
    assert float(fitnet_loss(s, t)) == pytest.approx(expected) == 59.25


def test_attention_loss_equals_hand_computation():
    s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[2.0, 2.0], [0.0, 0.0]]]])  # [2, 1, 2, 2]
    t = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[0.0, 3.0], [0.0, 0.0]]]])
    # attention maps: squares averaged over channels, flattened, L2-normalised
    a_s = [[1, 0, 0, 1], [4, 4, 0, 0]]
    a_t = [[1, 1, 1, 1], [0, 9, 0, 0]]

    def unit(v):
        n = sum(x * x for x in v) ** 0.5
        return [x / n for x in v]

    diff = [(p - q) ** 2 for ss, tt in zip(a_s, a_t) for p, q in zip(unit(ss), unit(tt))]
    assert float(attention_loss(s, t)) == pytest.approx(sum(diff) / 8, abs=1e-6)
    # channels do not matter (pooled), sizes are matched: a 4x4 student against a 2x2 teacher
    assert attention_loss(torch.rand(2, 16, 4, 4), torch.rand(2, 128, 2, 2)).shape == ()


def test_adapter_is_trained_with_the_student_and_not_returned(make_student, teacher, digits_data):
    student = make_student()
    cfg = DistillConfig(method="feature", feature_pairs=[["features.5", "features.3"]], feature_weight=1.0)
    loss = FeatureDistillLoss(teacher, cfg, student, digits_data.spec.example_input(2))
    try:
        assert loss.student_shapes == {"features.5": (16, 4, 4)}
        assert loss.teacher_shapes == {"features.3": (128, 4, 4)}
        adapter = loss.model.adapters[0]
        assert isinstance(adapter, nn.Conv2d) and adapter.weight.shape == (128, 16, 1, 1)
        assert loss.adapted == [["features.5", "features.3"]]
        tcfg = TrainConfig(epochs=1, max_steps_per_epoch=3, batch_size=32, lr=0.05, progress=False)
        opt_params = {id(p) for g in build_optimizer(loss.model, tcfg).param_groups for p in g["params"]}
        assert id(adapter.weight) in opt_params  # the Trainer's optimizer sees the adapter
        before = adapter.weight.detach().clone()
        res = Trainer(tcfg, loss_fn=loss).fit(loss.model, digits_data)
        assert not torch.equal(before, adapter.weight.detach())  # the adapter learnt
        assert res.history[0]["train_feature_loss"] > 0
    finally:
        loss.close()
    assert not any(m._forward_hooks for m in student.modules())


def test_feature_distill_returns_the_bare_student(make_student, teacher, digits_data):
    student = make_student()
    keys = list(student.state_dict())
    cfg = DistillConfig(method="feature", feature_pairs=[["features.5", "features.3"]], feature_weight=1.0,
                        epochs=2, batch_size=64, baseline=False)
    r = distill(student, teacher, cfg, digits_data, progress=False)
    assert type(r.model) is type(student) and list(r.model.state_dict()) == keys  # no adapter inside
    assert not any(m._forward_hooks for m in r.model.modules())
    run = r.runs[0]["student"]
    assert run["adapted_pairs"] == [["features.5", "features.3"]]
    assert run["feature_pairs"] == {"features.5 -> features.3": {"student": [16, 4, 4], "teacher": [128, 4, 4]}}
    assert r.info["adapter_parameters"] == 16 * 128
    assert all(h["train_feature_loss"] > 0 for h in run["history"])
    assert run["test_acc"] > 0.5
    copy.deepcopy(r.model)  # a plain module: no hook closures holding the teacher

"""Zoo models: shapes on 3x32x32 and 1x8x8, parameter counts, CIFAR adaptations, kwargs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.models import (
    count_parameters,
    create_model,
    describe_models,
    list_models,
    model_summary,
)
from edgeopt.spec import ModelSpec, get_spec

RGB32 = ModelSpec((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3, dataset="cifar10")
GREY8 = ModelSpec((1, 8, 8), 10, (0.5,), (0.25,), dataset="digits")

# Parameters at 10 classes, 3x32x32, and the brief's targets (target, relative tolerance).
EXPECTED = {
    "simple_cnn": (250_000, 0.05),
    "cnn_teacher": (1_382_730, 0.0),  # the mnist-cnn KD pair (1,381,578 / 24,058 at 1 channel)
    "cnn_assistant": (94_762, 0.0),
    "cnn_student": (24_346, 0.0),
    "mobilenetv2": (2_236_682, 0.0),  # torchvision's count: strides do not change it
    "mobilenetv2_teacher": (4_200_000, 0.05),
    "mobilenetv2_student": (1_800_000, 0.05),
    "resnet20": (270_000, 0.02),  # paper: 0.27M
    "resnet32": (460_000, 0.02),  # paper: 0.46M
    "resnet44": (660_000, 0.02),  # paper: 0.66M
    "resnet56": (850_000, 0.02),  # paper: 0.85M
    "resnet18": (11_173_962, 0.0),  # torchvision 11,181,642 minus 7x7 stem plus 3x3 stem
}


def test_zoo_names():
    assert list_models() == sorted(EXPECTED)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("spec", [RGB32, GREY8], ids=["3x32x32", "1x8x8"])
def test_forward_shape_and_finite(name, spec):
    torch.manual_seed(0)
    model = create_model(name, spec).eval()
    x = spec.example_input(2)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()
    assert get_spec(model) is spec
    assert model.edgeopt_arch == {"name": name, "kwargs": {}}


@pytest.mark.parametrize("name", list_models())
def test_train_mode_backward_on_tiny_input(name):
    # BatchNorm in train mode needs >1 value per channel: batch 2 on 8x8 must still work.
    model = create_model(name, GREY8).train()
    loss = model(GREY8.example_input(2)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list_models())
def test_parameter_counts(name):
    target, tol = EXPECTED[name]
    n = count_parameters(create_model(name, RGB32))
    assert abs(n - target) <= tol * target, f"{name}: {n} parameters, expected {target} ±{tol:.0%}"


def test_exact_counts_documented():
    rows = {r["name"]: r for r in describe_models()}
    assert rows["resnet20"]["params"] == 272_474
    assert rows["resnet56"]["params"] == 855_770
    assert rows["mobilenetv2_teacher"]["params"] == 4_198_026
    assert rows["mobilenetv2_student"]["params"] == 1_798_410
    assert rows["simple_cnn"]["params"] == 242_474
    assert rows["simple_cnn"]["fp32_mb"] == pytest.approx(242_474 * 4 / 1e6)
    assert all(r["help"] for r in rows.values())


def test_mobilenetv2_cifar_strides():
    m = create_model("mobilenetv2", GREY8)
    stem = m.features[0][0]
    assert stem.stride == (1, 1) and stem.in_channels == 1
    # only the stem changes: stage 2 (24 channels, features.2) keeps torchvision's stride 2,
    # total stride 16: 32x32 -> 2x2
    assert m.features[2].conv[1][0].stride == (2, 2)
    with torch.no_grad():
        fmap = m.eval().features(torch.zeros(1, 1, 32, 32))
    assert fmap.shape == (1, 1280, 2, 2)
    heavy = create_model("mobilenetv2", GREY8, stage2_stride=1)
    assert heavy.features[2].conv[1][0].stride == (1, 1)
    with torch.no_grad():
        assert heavy.eval().features(torch.zeros(1, 1, 32, 32)).shape == (1, 1280, 4, 4)


@pytest.mark.parametrize("width,expected", [(0.5, 0.25), (1.0, 1.0)])
def test_mobilenetv2_width_mult(width, expected):
    full = count_parameters(create_model("mobilenetv2", RGB32))
    m = create_model("mobilenetv2", RGB32, width_mult=width)
    assert m.edgeopt_arch == {"name": "mobilenetv2", "kwargs": {"width_mult": width}}
    # parameters scale roughly with width^2 (last_channel stays 1280 below 1.0)
    ratio = count_parameters(m) / full
    assert ratio == pytest.approx(expected, abs=0.2)
    assert m.eval()(RGB32.example_input(1)).shape == (1, 10)


def test_resnet18_cifar_stem():
    m = create_model("resnet18", RGB32)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)


def test_resnet20_option_b_shortcuts():
    m = create_model("resnet20", RGB32)
    projections = [
        n
        for n, mod in m.named_modules()
        if n.endswith("shortcut") and not isinstance(mod, nn.Identity)
    ]
    assert projections == ["layer2.0.shortcut", "layer3.0.shortcut"]


def test_num_classes_and_channels_follow_spec():
    spec = ModelSpec((1, 28, 28), 7, (0.1,), (0.3,))
    for name in list_models():
        y = create_model(name, spec).eval()(spec.example_input(1))
        assert y.shape == (1, 7), name


def test_bad_names_and_kwargs():
    with pytest.raises(ConfigError, match="Did you mean 'resnet20'"):
        create_model("resnet_20", RGB32)
    with pytest.raises(ConfigError, match="width_mult"):
        create_model("resnet20", RGB32, width_mult=0.5)
    with pytest.raises(ConfigError, match="disagrees with the ModelSpec"):
        create_model("resnet20", RGB32, num_classes=100)
    with pytest.raises(ConfigError, match="JSON"):
        create_model("simple_cnn", RGB32, dropout=object())
    # agreeing values are accepted and not recorded twice
    m = create_model("resnet20", RGB32, num_classes=10, in_channels=3)
    assert m.edgeopt_arch["kwargs"] == {}


def test_model_summary_adds_up():
    m = create_model("resnet20", RGB32)
    rows = model_summary(m)
    assert sum(r["params"] for r in rows) == count_parameters(m) == 272_474
    assert rows[0] == {"name": "conv1", "type": "Conv2d", "params": 3 * 16 * 9}

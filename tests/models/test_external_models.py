"""tv:NAME and package.module:factory models."""

from __future__ import annotations

import textwrap

import pytest
import torch

from edgeopt.errors import ConfigError
from edgeopt.models import count_parameters, create_model, load_checkpoint, save_checkpoint
from edgeopt.spec import ModelSpec

RGB32 = ModelSpec((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3)
GREY32 = ModelSpec((1, 32, 32), 10, (0.5,), (0.25,))


def test_tv_resnet18():
    m = create_model("tv:resnet18", RGB32).eval()
    assert count_parameters(m) == 11_181_642  # torchvision's ImageNet stem, 10 classes
    assert m.edgeopt_arch == {"name": "tv:resnet18", "kwargs": {}}
    with torch.no_grad():
        assert m(RGB32.example_input(2)).shape == (2, 10)


def test_tv_grey_replaces_first_conv():
    m = create_model("tv:resnet18", GREY32).eval()
    assert m.conv1.in_channels == 1 and m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    # 64 filters of 7x7 on 1 channel instead of 3: 2 * 64 * 49 fewer parameters
    assert count_parameters(m) == 11_181_642 - 2 * 64 * 49
    with torch.no_grad():
        assert m(GREY32.example_input(1)).shape == (1, 10)


def test_tv_kwargs_and_nested_first_conv():
    m = create_model("tv:mobilenet_v3_small", GREY32, dropout=0.1).eval()
    assert m.features[0][0].in_channels == 1
    assert m(GREY32.example_input(1)).shape == (1, 10)


def test_tv_unknown_name_lists_close_names():
    with pytest.raises(ConfigError, match=r"tv:resnet18") as info:
        create_model("tv:resnet19", RGB32)
    assert "tv:resnet19" in str(info.value)
    with pytest.raises(ConfigError, match="not a classification model"):
        create_model("tv:fasterrcnn_resnet50_fpn", RGB32)
    with pytest.raises(ConfigError, match="never downloads"):
        create_model("tv:resnet18", RGB32, weights="DEFAULT")


def test_tv_checkpoint_round_trip(tmp_path):
    m = create_model("tv:resnet18", GREY32).eval()
    m2, side = load_checkpoint(save_checkpoint(tmp_path / "tv", m))
    assert side["arch"]["name"] == "tv:resnet18"
    x = GREY32.example_input(2)
    with torch.no_grad():
        assert (m(x) - m2(x)).abs().max().item() == 0.0


USER_MODULE = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, num_classes, in_channels, hidden=8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))

def build(num_classes=10, in_channels=3, hidden=8):
    return Tiny(num_classes, in_channels, hidden)

def build_no_args():
    return Tiny(3, 1)

def not_a_model(num_classes):
    return "hello"
"""


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_user_factory(user_pkg, tmp_path):
    m = create_model("mynets.tiny:build", GREY32, hidden=4).eval()
    assert m.conv.in_channels == 1 and m.conv.out_channels == 4 and m.fc.out_features == 10
    assert m.edgeopt_arch == {"name": "mynets.tiny:build", "kwargs": {"hidden": 4}}
    assert m(GREY32.example_input(2)).shape == (2, 10)
    # a class works as the factory too, and the checkpoint rebuilds it by name once the
    # user allows that code (the sidecar alone may not: see tests/models/test_trust.py)
    c = create_model("mynets.tiny:Tiny", RGB32).eval()
    path = save_checkpoint(tmp_path / "user", c)
    x = RGB32.example_input(2)
    for kwargs in ({"trust_model_code": True}, {"arch": "mynets.tiny:Tiny"}):
        c2, _ = load_checkpoint(path, **kwargs)
        with torch.no_grad():
            assert torch.equal(c(x), c2(x))


def test_user_factory_without_args_gets_none(user_pkg):
    m = create_model("mynets.tiny:build_no_args", GREY32)
    assert m.fc.out_features == 3  # nothing was passed: the factory decides


def test_user_factory_errors(user_pkg):
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        create_model("mynets.tiny:not_a_model", RGB32)
    with pytest.raises(ConfigError, match="cannot import 'mynets.nothere'"):
        create_model("mynets.nothere:build", RGB32)
    with pytest.raises(ConfigError, match="no attribute 'missing'"):
        create_model("mynets.tiny:missing", RGB32)
    with pytest.raises(ConfigError, match="failed"):
        create_model("mynets.tiny:build", RGB32, depth=3)


def test_timm_factory_gets_in_chans_on_grey_data():
    """timm spells the input channels in_chans and hides it behind **kwargs."""
    pytest.importorskip("timm")
    m = create_model("timm.models:mobilenetv3_small_050", GREY32).eval()
    assert m.conv_stem.in_channels == 1
    assert m(GREY32.example_input(2)).shape == (2, 10)

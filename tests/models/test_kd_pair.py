"""The mnist-cnn KD pair (cnn_teacher, cnn_assistant, cnn_student): sizes, shapes, layer names."""

from __future__ import annotations

import doctest

import pytest
import torch

from edgeopt.models import count_parameters, create_model
from edgeopt.spec import ModelSpec

SPECS = {
    "digits 1x8x8": ModelSpec((1, 8, 8), 10, (0.3,), (0.4,), dataset="digits"),
    "fashion-mnist 1x28x28": ModelSpec((1, 28, 28), 10, (0.286,), (0.353,), dataset="fashion-mnist"),
    "cifar 3x32x32": ModelSpec((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3, dataset="cifar10"),
}
# exact parameter counts at 10 classes: (1 channel, 3 channels)
COUNTS = {"cnn_teacher": (1_381_578, 1_382_730), "cnn_assistant": (94_186, 94_762), "cnn_student": (24_058, 24_346)}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_pair_runs_on_8x8_to_32x32_with_the_same_block_shapes(spec):
    torch.manual_seed(0)
    t, s = create_model("cnn_teacher", spec).eval(), create_model("cnn_student", spec).eval()
    x = spec.example_input(2)
    feats = {}
    for name, m in (("t", t), ("s", s)):
        m.block3.register_forward_hook(lambda mod, i, o, name=name: feats.__setitem__(name, o.shape))
        with torch.no_grad():
            y = m(x)
        assert y.shape == (2, 10) and torch.isfinite(y).all()
    h = spec.input_shape[1] // 4  # two 2x2 max-pools: block3:block3 needs no resizing
    assert feats["t"] == (2, 256, h, h) and feats["s"] == (2, 64, h, h)
    assert count_parameters(t) == COUNTS["cnn_teacher"][spec.channels == 3]
    assert count_parameters(s) == COUNTS["cnn_student"][spec.channels == 3]


def test_sizes_student_is_a_fiftieth_of_the_teacher():
    spec = SPECS["fashion-mnist 1x28x28"]
    n = {k: count_parameters(create_model(k, spec)) for k in COUNTS}
    assert n == {k: v[0] for k, v in COUNTS.items()}
    assert n["cnn_teacher"] / n["cnn_student"] > 50  # 57x
    assert n["cnn_student"] < n["cnn_assistant"] < n["cnn_teacher"]


def test_docstring_examples():
    from edgeopt.models import zoo_cnn

    result = doctest.testmod(zoo_cnn, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.errors import DataError, NumericalError
from edgeopt.evaluate import evaluate_accuracy


def _batches(labels, batch=3, shape=(1, 2, 2)):
    y = np.asarray(labels, dtype=np.int64)
    return [(np.zeros((len(y[i : i + batch]), *shape), np.float32), y[i : i + batch]) for i in range(0, len(y), batch)]


def test_top1_top5_confusion_exact(fixed_runner):
    # 6 classes, 5 images. Rank of the label among the logits: 1st, 1st, 2nd, 6th, 5th.
    logits = np.array(
        [
            [9, 1, 2, 3, 4, 5],  # label 0: top-1 hit
            [0, 9, 2, 3, 4, 5],  # label 1: top-1 hit
            [0, 1, 8, 9, 4, 5],  # label 2: predicted 3, rank 2 -> top-5 hit
            [9, 8, 7, 6, 5, 0],  # label 5: predicted 0, rank 6 -> miss
            [9, 8, 7, 6, 5, 0],  # label 4: predicted 0, rank 5 -> top-5 hit
        ],
        dtype=np.float32,
    )
    labels = [0, 1, 2, 5, 4]
    r = evaluate_accuracy(fixed_runner(logits), _batches(labels), batch_size=3)
    assert r.n == 5 and r.correct == 2
    assert r.top1 == pytest.approx(2 / 5)
    assert r.top5 == pytest.approx(4 / 5)
    expected = np.zeros((6, 6), dtype=int)
    for t, p in [(0, 0), (1, 1), (2, 3), (5, 0), (4, 0)]:
        expected[t, p] += 1
    assert r.confusion == expected.tolist()
    by_class = {c["index"]: c for c in r.per_class}
    assert by_class[0]["accuracy"] == 1.0 and by_class[2]["accuracy"] == 0.0
    assert by_class[3]["n"] == 0 and by_class[3]["accuracy"] is None
    assert r.class_names == ["0", "1", "2", "3", "4", "5"]


def test_no_top5_with_fewer_than_five_classes(fixed_runner):
    logits = np.array([[1, 0, 0], [0, 0, 1]], np.float32)
    r = evaluate_accuracy(fixed_runner(logits), _batches([0, 1]))
    assert r.top1 == 0.5 and r.top5 is None


def test_a_split_of_one_class_warns_that_accuracy_measures_nothing(fixed_runner):
    import warnings

    from edgeopt.errors import EdgeoptWarning

    always_0 = np.tile(np.array([[1, 0, 0]], np.float32), (4, 1))  # answers class 0 for every image
    with pytest.warns(EdgeoptWarning, match=r"accuracy on split 'test' measures nothing: all 4 images "
                                            r"are of one class \('0'\)"):
        r = evaluate_accuracy(fixed_runner(always_0), _batches([0, 0, 0, 0]))
    assert r.top1 == 1.0  # "100 %", which is why it warns
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgeoptWarning)  # two classes: no warning
        evaluate_accuracy(fixed_runner(always_0), _batches([0, 1, 0, 0]))


def test_class_names_come_from_the_datamodule(fixed_runner):
    from edgeopt.spec import ModelSpec

    spec = ModelSpec((1, 2, 2), 2, (0.0,), (1.0,), class_names=("cat", "dog"))

    class Data:
        def __init__(self):
            self.spec = spec

        def loader(self, split, batch_size):
            assert split == "val"
            return _batches([1, 1, 0], batch=batch_size)

    r = evaluate_accuracy(fixed_runner(np.array([[0, 1], [1, 0], [1, 0]])), Data(), split="val", batch_size=2)
    assert [c["name"] for c in r.per_class] == ["cat", "dog"]
    assert r.top1 == pytest.approx(2 / 3) and r.split == "val"
    assert r.confusion == [[1, 0], [1, 1]]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_logits_raise_numerical_error(fixed_runner, bad):
    logits = np.array([[1, 0], [bad, 0]], np.float32)
    with pytest.raises(NumericalError) as err:
        evaluate_accuracy(fixed_runner(logits), _batches([0, 1]))
    assert "\n" not in str(err.value) and "NaN/Inf" in str(err.value)


def test_nan_logits_can_be_counted_as_wrong(fixed_runner):
    logits = np.array([[1, 0], [np.nan, 0], [0, 1]], np.float32)
    r = evaluate_accuracy(fixed_runner(logits), _batches([0, 0, 1]), nan_policy="count")
    assert r.nan_outputs == 1 and r.correct == 2 and r.n == 3
    assert sum(map(sum, r.confusion)) == 2  # the NaN row has no prediction


def test_wrong_logit_shape_is_a_data_error(fixed_runner):
    with pytest.raises(DataError):
        evaluate_accuracy(fixed_runner(np.zeros((1, 3))), _batches([0, 1]))


def test_accuracy_on_synthetic_data_matches_eager_argmax(synthetic_data, tiny_net, module_runner):
    import torch

    r = evaluate_accuracy(module_runner(tiny_net), synthetic_data, split="test", batch_size=64)
    x, y = synthetic_data.samples(len(synthetic_data.test), split="test")
    with torch.no_grad():
        expected = (tiny_net(x).argmax(1) == y).float().mean().item()
    assert r.n == len(synthetic_data.test) == len(x)
    assert r.top1 == pytest.approx(expected)
    assert r.class_names == list(synthetic_data.spec.class_names)

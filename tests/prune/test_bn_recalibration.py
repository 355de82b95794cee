"""Batch-norm re-estimation after one-shot pruning: weights untouched, accuracy recovered."""

from __future__ import annotations

import torch

from edgeopt.prune import PruneConfig, prune
from edgeopt.prune.bn_recalibration import recalibrate_batchnorm_


def _acc(model, data) -> float:
    x, y = data.samples(10_000, split="test")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def test_statistics_equal_the_batch_average_and_weights_do_not_move():
    conv_bn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, bias=False), torch.nn.BatchNorm2d(4)).eval()
    x = torch.randn(96, 1, 8, 8) * 2 + 0.5
    w = conv_bn[0].weight.clone()
    assert recalibrate_batchnorm_(conv_bn, x, batch_size=32) == 1
    y = conv_bn[0](x)
    # three equal batches: the cumulative average of batch means is the mean over all images
    assert torch.allclose(conv_bn[1].running_mean, y.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.equal(conv_bn[0].weight, w) and not conv_bn.training
    assert conv_bn[1].momentum == 0.1  # restored


def test_one_shot_pruning_with_re_estimated_statistics_loses_less(digits_cnn, digits_data):
    plain = prune(digits_cnn, PruneConfig(ratio=0.8, recalibrate_bn=False), digits_data)
    recal = prune(digits_cnn, PruneConfig(ratio=0.8), digits_data)
    assert recal.info["bn_recalibrated"] == 4  # every batch norm of simple_cnn
    for name, mask in plain.model.edgeopt_masks.items():  # the same weights were removed
        assert torch.equal(mask, recal.model.edgeopt_masks[name])
    a_plain, a_recal = _acc(plain.model, digits_data), _acc(recal.model, digits_data)
    assert a_recal >= a_plain, (a_recal, a_plain)

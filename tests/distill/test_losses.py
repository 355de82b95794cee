"""KD losses equal hand computations on fixed logits; the config refuses bad values."""

from __future__ import annotations

import math

import pytest
import torch

from edgeopt.distill import (
    KD_LOSSES,
    DistillConfig,
    dkd_loss,
    dkd_parts,
    kd_kl,
    list_kd_losses,
    mutual_loss,
    response_loss,
)
from edgeopt.errors import ConfigError

S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]  # student logits, 2 images x 3 classes
T_ = [[3.0, 1.0, 0.0], [0.5, 0.5, 2.0]]  # teacher logits
Y = [0, 2]


def _softmax(v):
    m = max(v)
    e = [math.exp(a - m) for a in v]
    return [a / sum(e) for a in e]


def _kl(p_t, p_s):  # KL(p_t || p_s)
    return sum(q * math.log(q / p) for p, q in zip(p_s, p_t))


def _tensors():
    return torch.tensor(S), torch.tensor(T_), torch.tensor(Y)


def test_response_kd_equals_hand_computation_with_t2_scaling_and_alpha_mixing():
    T, alpha = 2.0, 0.7
    kl = sum(_kl(_softmax([x / T for x in t]), _softmax([x / T for x in s])) for s, t in zip(S, T_)) / 2
    ce = sum(-math.log(_softmax(s)[y]) for s, y in zip(S, Y)) / 2
    s, t, y = _tensors()
    out = response_loss(s, t, y, DistillConfig(temperature=T, alpha=alpha))
    assert float(out["kd_loss"]) == pytest.approx(T * T * kl, abs=1e-6)
    assert float(out["kd_loss"]) == pytest.approx(0.7446981, abs=1e-6)  # = 4 x batch-mean KL
    assert float(out["task_loss"]) == pytest.approx(ce, abs=1e-6)
    assert float(out["task_loss"]) == pytest.approx(0.7651263, abs=1e-6)
    assert float(out["loss"]) == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, abs=1e-6)
    assert float(out["loss"]) == pytest.approx(0.7508266, abs=1e-6)
    assert out["logits"] is s
    # the T^2 factor: the same KL at T=1 is not scaled
    kl1 = sum(_kl(_softmax(t), _softmax(s)) for s, t in zip(S, T_)) / 2
    assert float(kd_kl(*_tensors()[:2], 1.0)) == pytest.approx(kl1, abs=1e-6)
    # alpha = 0 is plain cross-entropy, alpha = 1 plain KD
    assert float(response_loss(s, t, y, DistillConfig(alpha=0.0))["loss"]) == pytest.approx(ce, abs=1e-6)
    one = response_loss(s, t, y, DistillConfig(alpha=1.0, temperature=T))
    assert float(one["loss"]) == pytest.approx(T * T * kl, abs=1e-6)


def test_response_kd_gradient_reaches_only_the_student():
    s, t, y = _tensors()
    s.requires_grad_(True)
    t.requires_grad_(True)
    response_loss(s, t.detach(), y, DistillConfig())["loss"].backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None


def test_dkd_equals_hand_computation_of_tckd_and_nckd():
    T = 2.0
    tckd = nckd = 0.0
    for s, t, y in zip(S, T_, Y):
        ps, pt = _softmax([x / T for x in s]), _softmax([x / T for x in t])
        tckd += _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])  # binary: target vs the rest
        ns = _softmax([x / T for i, x in enumerate(s) if i != y])  # among the non-target classes
        nt = _softmax([x / T for i, x in enumerate(t) if i != y])
        nckd += _kl(nt, ns)
    tckd, nckd = T * T * tckd / 2, T * T * nckd / 2
    s, t, y = _tensors()
    got_t, got_n = dkd_parts(s, t, y, T)
    assert float(got_t) == pytest.approx(tckd, abs=1e-6)
    assert float(got_n) == pytest.approx(nckd, abs=1e-6)
    assert (float(got_t), float(got_n)) == pytest.approx((0.7093136, 0.0762180), abs=1e-6)

    cfg = DistillConfig(method="dkd", temperature=T, alpha=0.6, dkd_alpha=1.5, dkd_beta=8.0)
    out = dkd_loss(s, t, y, cfg)
    ce = sum(-math.log(_softmax(r)[c]) for r, c in zip(S, Y)) / 2
    kd = 1.5 * tckd + 8.0 * nckd
    assert float(out["kd_loss"]) == pytest.approx(kd, abs=1e-5)
    assert float(out["loss"]) == pytest.approx(0.6 * kd + 0.4 * ce, abs=1e-5)
    assert float(out["tckd"]) == pytest.approx(tckd, abs=1e-6)
    assert float(out["nckd"]) == pytest.approx(nckd, abs=1e-6)


def test_classical_kd_is_tckd_plus_one_minus_pt_times_nckd_per_sample():
    # Zhao et al. Eq. 7, per sample (the 1 - p_t weight differs between samples)
    T = 3.0
    for i in range(2):
        s, t, y = torch.tensor([S[i]]), torch.tensor([T_[i]]), torch.tensor([Y[i]])
        pt = _softmax([x / T for x in T_[i]])[Y[i]]
        tckd, nckd = dkd_parts(s, t, y, T)
        assert float(kd_kl(s, t, T)) == pytest.approx(float(tckd) + (1 - pt) * float(nckd), abs=1e-5)


def test_dkd_is_finite_for_a_very_confident_teacher():
    s = torch.tensor([[0.0, 0.0, 0.0]])
    t = torch.tensor([[60.0, 0.0, 0.0]])  # p_target = 1 - 2e-26: log(1 - p) would be -inf
    tckd, nckd = dkd_parts(s, t, torch.tensor([0]), 1.0)
    assert math.isfinite(float(tckd)) and math.isfinite(float(nckd))
    assert float(tckd) == pytest.approx(math.log(3.0) - 0.0, abs=1e-4)  # KL([1,0] || [1/3,2/3])
    assert float(nckd) == pytest.approx(0.0, abs=1e-6)


def test_mutual_loss_sums_peers_and_detaches_the_others():
    a = torch.tensor([[2.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 1.0]], requires_grad=True)
    y = torch.tensor([0])
    cfg = DistillConfig(method="online", temperature=1.0, alpha=0.5)
    out = mutual_loss([a, b], y, cfg)
    pa, pb = _softmax([2.0, 0.0]), _softmax([0.0, 1.0])
    want = 0.5 * (-math.log(pa[0]) + _kl(pb, pa)) + 0.5 * (-math.log(pb[0]) + _kl(pa, pb))
    assert float(out["loss"].detach()) == pytest.approx(want, abs=1e-6)
    assert float(out["kd_loss"]) == pytest.approx((_kl(pb, pa) + _kl(pa, pb)) / 2, abs=1e-6)
    # d loss / d a only through a's own CE and its KL to (detached) b
    out["loss"].backward()
    ga = 0.5 * (torch.tensor(pa) - torch.tensor([1.0, 0.0])) + 0.5 * (torch.tensor(pa) - torch.tensor(pb))
    assert torch.allclose(a.grad[0], ga, atol=1e-6)


def test_registry_lists_the_losses():
    assert list_kd_losses() == ["dkd", "response"]
    assert KD_LOSSES.get("dkd") is dkd_loss
    with pytest.raises(ConfigError, match="unknown KD loss 'dk'. Did you mean 'dkd'"):
        KD_LOSSES.get("dk")


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "hinton"}, "method='hinton' must be one of response, dkd"),
    ({"temperature": 0.0}, "temperature=0.0 must be > 0"),
    ({"alpha": -0.1}, r"alpha=-0.1 must be in \[0.0, 1.0\]"),
    ({"method": "feature"}, "needs feature_pairs"),
    ({"feature_pairs": [["a", "b"]]}, "feature_pairs is used by method='feature' only"),
    ({"method": "feature", "feature_pairs": [["a"]]}, "must be two layer names"),
    ({"method": "progressive"}, "needs assistants"),
    ({"peers": 1, "method": "online"}, r"peers=1 must be in \[2, 100\]"),
    ({"seeds": 0}, r"seeds=0 must be in \[1, 1000\]"),
    ({"feature_loss": "mse"}, "feature_loss='mse' must be one of fitnet, attention"),
    ({"init": "random"}, "init='random' must be one of given, seed"),
    ({"epochs": "3"}, "epochs must be an integer"),
])
def test_config_errors_are_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        DistillConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_config_builds_the_train_config_and_round_trips():
    cfg = DistillConfig(method="feature", feature_pairs=[["a", "b"]], epochs=3, lr=0.02,
                       batch_size=32, weight_decay=0.0, augment=True, threads=2)
    tc = cfg.to_train_config(seed=5, progress=False)
    assert (tc.epochs, tc.lr, tc.batch_size, tc.weight_decay, tc.augment, tc.seed, tc.threads,
            tc.eval_every, tc.out_dir) == (3, 0.02, 32, 0.0, True, 5, 2, 1, None)
    assert cfg.feature_pairs == (("a", "b"),)
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.feature_scale == 100.0
    assert cfg.replace(feature_loss="attention").feature_scale == 1000.0
    assert cfg.replace(feature_weight=2.5).feature_scale == 2.5

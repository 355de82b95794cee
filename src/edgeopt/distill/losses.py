"""KD losses on logits, registered by name; each returns a dict of named parts.

A KD loss is ``LOSS(student_logits, teacher_logits, y, config) -> dict`` with ``loss`` (the
scalar to minimise), ``task_loss`` (hard-label cross-entropy), ``kd_loss`` (the
distillation term, before the ``alpha`` weighting and the warm-up) and ``logits`` (the
student's), so the Trainer logs every part (DESIGN habit 5). Logits are ``[B, classes]``;
the losses are computed in float32 whatever the autocast precision.

A loss also takes ``epoch``, the training progress in epochs (fractional: 0.5 is half-way
through the first epoch), for the warm-up of ``DistillConfig.kd_warmup_epochs``: the KD
term is multiplied by :func:`kd_warmup_weight` and, with a warm-up, the multiplier is
returned as ``kd_weight``. The hard-label term is never scaled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edgeopt.distill.config import DistillConfig
from edgeopt.registry import Registry

#: KD loss name -> ``LOSS(student_logits, teacher_logits, y, config) -> dict``
KD_LOSSES: Registry = Registry("KD loss")


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch (``batchmean``).

    Example:
        >>> s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]])
        >>> float(kd_kl(s, t, 4.0))
        0.0
    """
    T = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    # log_target: p_t * (log p_t - log p_s) is exactly 0 where the two agree
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def kd_warmup_weight(epoch: float | None, warmup_epochs: float) -> float:
    """Multiplier of the KD term: ``min(epoch / warmup_epochs, 1)``, a linear ramp from 0.

    As in DKD's recipe (Zhao et al., CVPR 2022: 20 of 240 epochs on CIFAR-100, where the
    official mdistiller code multiplies the loss by ``min(epoch / warmup, 1)`` with 1-based
    epochs). ``epoch`` is the training progress in epochs once the current step is taken
    (the Trainer of :func:`~edgeopt.distill.distill` passes ``(global_step + 1) /
    steps_per_epoch``, so the ramp grows every step and reaches 1 at the end of the
    warm-up). ``warmup_epochs`` 0 or ``epoch`` None (progress unknown): 1.

    Example:
        >>> kd_warmup_weight(5.0, 20.0), kd_warmup_weight(30.0, 20.0), kd_warmup_weight(None, 20.0)
        (0.25, 1.0, 1.0)
    """
    if warmup_epochs <= 0 or epoch is None:
        return 1.0
    return min(max(float(epoch), 0.0) / float(warmup_epochs), 1.0)


def _mix(kd: torch.Tensor, task: torch.Tensor, config: DistillConfig,
         epoch: float | None) -> tuple[torch.Tensor, dict]:
    """``w * alpha * kd + (1 - alpha) * task`` (elementwise), the one mixing every KD loss
    uses, and the extra parts: ``kd_weight`` (the warm-up multiplier ``w``, logged as
    ``train_kd_weight``) when a warm-up is set, else none."""
    w = kd_warmup_weight(epoch, config.kd_warmup_epochs)
    loss = w * config.alpha * kd + (1.0 - config.alpha) * task
    return loss, ({"kd_weight": torch.tensor(w)} if config.kd_warmup_epochs > 0 else {})


@KD_LOSSES.register("response", help="Hinton KD: alpha T^2 KL(teacher/T || student/T) + (1-alpha) CE")
def response_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                  config: DistillConfig, epoch: float | None = None) -> dict:
    """Response-based KD (Hinton, Vinyals & Dean, 2015).

    ``loss = w * alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``,
    the KL averaged over the batch, ``w = kd_warmup_weight(epoch, config.kd_warmup_epochs)``
    (1 without a warm-up). ``kd_loss`` is the ``T^2``-scaled KL.

    Example:
        >>> s, t, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([0])
        >>> out = response_loss(s, t, y, DistillConfig(alpha=0.5))
        >>> round(float(out["loss"]), 4), float(out["kd_loss"])
        (0.0635, 0.0)
    """
    task = F.cross_entropy(student_logits.float(), y)
    kd = kd_kl(student_logits, teacher_logits, config.temperature)
    loss, warm = _mix(kd, task, config, epoch)
    return {"loss": loss, "task_loss": task.detach(), "kd_loss": kd.detach(), "logits": student_logits, **warm}


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(TCKD, NCKD)`` of Decoupled KD, each ``T^2``-scaled and averaged over the batch.

    TCKD is the KL between the binary distributions (target class, all other classes) of
    teacher and student; NCKD the KL between their distributions over the non-target
    classes alone. Classical KD equals ``TCKD + (1 - p_t) * NCKD`` with ``p_t`` the
    teacher's target-class probability (Zhao et al., 2022, Eq. 7).

    Example:
        >>> s, t, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0])
        >>> [round(float(v), 4) for v in dkd_parts(s, t, y, 1.0)]
        [0.9957, 0.4621]
    """
    T = float(temperature)
    s, t = student_logits.float() / T, teacher_logits.float() / T
    gt = F.one_hot(y, s.shape[1]).bool()  # [B, C]
    # log of the binary (target, non-target) probabilities, through logsumexp: stable
    # where the non-target mass is tiny (a confident teacher), unlike log(1 - p).
    neg = torch.finfo(s.dtype).min

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:  # [B, 2]
        all_ = torch.logsumexp(z, dim=1)
        target = z.gather(1, y[:, None])[:, 0]
        others = torch.logsumexp(z.masked_fill(gt, neg), dim=1)
        return torch.stack([target - all_, others - all_], dim=1)

    log_bs, log_bt = binary_log_probs(s), binary_log_probs(t)
    tckd = F.kl_div(log_bs, log_bt, reduction="batchmean", log_target=True) * (T * T)
    # distributions over the non-target classes: the target logit pushed far down (as in
    # the authors' code, 1000 below) so its probability is 0 to float precision
    log_ns = F.log_softmax(s - 1000.0 * gt, dim=1)
    p_nt = F.softmax(t - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_ns, p_nt, reduction="batchmean") * (T * T)
    return tckd, nckd


@KD_LOSSES.register("dkd", help="Decoupled KD (Zhao et al., CVPR 2022): TCKD + beta NCKD; strong teachers")
def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
             config: DistillConfig, epoch: float | None = None) -> dict:
    """Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022,
    arXiv:2203.08679).

    Classical KD weights its non-target-class term (NCKD, the "dark knowledge") by
    ``1 - p_t``, the teacher's probability of wrong classes, so the more strong and
    confident the teacher is on a sample, the less of that knowledge reaches the
    student. DKD decouples the two terms and weights them freely, which addresses this
    weakness of classical KD with strong, confident teachers:

    ``kd_loss = dkd_alpha * TCKD + dkd_beta * NCKD`` and
    ``loss = w * alpha * kd_loss + (1 - alpha) * CE(s, y)`` with
    ``w = kd_warmup_weight(epoch, config.kd_warmup_epochs)``.

    (The paper adds DKD to a cross-entropy of weight 1 and warms its weight up over the
    first 20 epochs: ``kd_warmup_epochs=20``; here the same ``alpha`` mixing as
    ``response`` applies.) Also returned: ``tckd`` and ``nckd``.

    Example:
        >>> s, t, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0])
        >>> cfg = DistillConfig(method="dkd", alpha=1.0, temperature=1.0, dkd_beta=2.0)
        >>> round(float(dkd_loss(s, t, y, cfg)["kd_loss"]), 4)  # 0.9957 + 2 * 0.4621
        1.92
    """
    task = F.cross_entropy(student_logits.float(), y)
    tckd, nckd = dkd_parts(student_logits, teacher_logits, y, config.temperature)
    kd = config.dkd_alpha * tckd + config.dkd_beta * nckd
    loss, warm = _mix(kd, task, config, epoch)
    return {"loss": loss, "task_loss": task.detach(), "kd_loss": kd.detach(),
            "tckd": tckd.detach(), "nckd": nckd.detach(), "logits": student_logits, **warm}


def mutual_loss(peer_logits: Sequence[torch.Tensor], y: torch.Tensor, config: DistillConfig,
                epoch: float | None = None) -> dict:
    """Deep mutual learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018) for a cohort.

    Peer ``k`` minimises ``(1 - alpha) * CE(z_k, y) + alpha * mean_{l != k} T^2
    KL(softmax(z_l/T) || softmax(z_k/T))`` with the other peers' predictions detached (each
    peer learns from the others; nobody is pushed towards it by its own loss). ``loss`` is
    the sum over peers (each peer gets the gradient it would get training alone);
    ``task_loss`` and ``kd_loss`` are means over peers; ``logits`` are peer 0's. The
    paper's setting is ``temperature=1`` and equal weights (``alpha=0.5``, up to a factor 2).
    The KL terms are multiplied by ``kd_warmup_weight(epoch, config.kd_warmup_epochs)``.

    Example:
        >>> z = [torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]])]
        >>> out = mutual_loss(z, torch.tensor([0]), DistillConfig(method="online", alpha=0.5))
        >>> float(out["kd_loss"]), round(float(out["loss"]), 4)
        (0.0, 0.1269)
    """
    k = len(peer_logits)
    tasks, kds = [], []
    for i, z in enumerate(peer_logits):
        others = [kd_kl(z, peer_logits[j].detach(), config.temperature) for j in range(k) if j != i]
        tasks.append(F.cross_entropy(z.float(), y))
        kds.append(torch.stack(others).mean())
    task, kd = torch.stack(tasks), torch.stack(kds)
    loss, warm = _mix(kd, task, config, epoch)
    return {"loss": loss.sum(), "task_loss": task.mean().detach(), "kd_loss": kd.mean().detach(),
            "logits": peer_logits[0], **warm}


def get_kd_loss(name: str):
    """The KD loss registered as ``name``.

    Example:
        >>> list_kd_losses()
        ['dkd', 'response']
        >>> get_kd_loss("response") is response_loss
        True
    """
    return KD_LOSSES.get(name)


def list_kd_losses() -> list[str]:
    """Names of the registered KD losses."""
    return KD_LOSSES.names()

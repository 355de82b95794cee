"""The distillation methods: how one seed's distilled student is trained.

A method is ``METHOD(student, teacher, config, data, seed, progress, ctx) -> ArmRun``: it
trains ``student`` (a copy :func:`~edgeopt.distill.distill` made, already at this seed's
starting weights) and returns the run. ``ctx`` is shared by the seeds of one call:
``ctx["info"]`` collects details for the result, and a method may keep state there (the
response loss keeps its teacher copy and logits cache, valid for every seed).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeopt.distill._run import ArmRun, accuracy, reinit, train_arm
from edgeopt.distill.config import DistillConfig
from edgeopt.distill.features import FeatureDistillLoss
from edgeopt.distill.losses import mutual_loss
from edgeopt.distill.teacher import DistillLoss, cache_status
from edgeopt.registry import Registry

#: method name -> ``METHOD(student, teacher, config, data, seed, progress, ctx) -> ArmRun``
DISTILL_METHODS: Registry = Registry("distillation method")

# Seed offsets of the extra models one seed trains, far apart so that seed s's peer 1 is
# not seed s+1's peer 0 (primes, so no two offsets collide for small counts).
_PEER_SEED, _GENERATION_SEED, _ASSISTANT_SEED = 7919, 10007, 15485863


@DISTILL_METHODS.register("response", help="Hinton KD on softened logits")
@DISTILL_METHODS.register("dkd", help="Decoupled KD (Zhao et al., CVPR 2022)")
def logit_kd(student: nn.Module, teacher: nn.Module, config: DistillConfig, data, seed: int,
             progress: bool, ctx: dict) -> ArmRun:
    """Response KD or DKD from ``teacher``; the teacher copy and its logits cache are
    shared by all seeds."""
    loss = ctx.get("loss")
    if loss is None:
        loss = ctx["loss"] = DistillLoss(teacher, config)
    run = train_arm(student, config, data, seed, loss, progress, f"student ({config.method} KD)")
    ctx["info"].update(teacher_cache=cache_status(config, data), teacher_forwards=loss.forwards)
    return run


@DISTILL_METHODS.register("feature", help="response KD + FitNet / attention transfer on named layers")
def feature_kd(student: nn.Module, teacher: nn.Module, config: DistillConfig, data, seed: int,
               progress: bool, ctx: dict) -> ArmRun:
    """Response KD plus the feature loss; the adapters train with the student and are
    dropped from the returned model."""
    loss = FeatureDistillLoss(teacher, config, student, data.spec.example_input(2))
    try:
        run = train_arm(loss.model, config, data, seed, loss, progress,
                        f"student ({config.feature_loss} feature KD)")
    finally:
        loss.close()
    run.model = loss.model.student.eval()
    shapes = {f"{s} -> {t}": {"student": list(loss.student_shapes[s]),
                              "teacher": list(loss.teacher_shapes[t])} for s, t in loss.pairs}
    run.extra["feature_pairs"] = shapes
    run.extra["adapted_pairs"] = loss.adapted
    ctx["info"].update(teacher_cache="off: method 'feature' runs the teacher on every batch for its features",
                       teacher_forwards=ctx["info"].get("teacher_forwards", 0) + loss.forwards,
                       adapter_parameters=sum(p.numel() for p in loss.model.adapters.parameters()))
    return run


def _arch_name(model: nn.Module) -> str:
    arch = getattr(model, "edgeopt_arch", None)
    return arch["name"] if isinstance(arch, dict) and "name" in arch else type(model).__name__


def _link(name: str, run: ArmRun, loss: DistillLoss) -> dict:
    return {"model": name, "test_acc": run.test_acc, "val_acc": run.val_acc,
            "best_epoch": run.best_epoch, "teacher_forwards": loss.forwards}


@DISTILL_METHODS.register("progressive", help="teacher -> assistants -> student (TAKD)")
def progressive_kd(student: nn.Module, teacher: nn.Module, config: DistillConfig, data, seed: int,
                   progress: bool, ctx: dict) -> ArmRun:
    """Teacher-assistant KD (Mirzadeh et al., AAAI 2020): each assistant, created fresh,
    learns by response KD from the previous model of the chain; the student from the last
    assistant. ``extra["links"]`` holds each link's accuracies."""
    from edgeopt.models import create_model

    prev, links = teacher, []
    for i, name in enumerate(config.assistants, start=1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + _ASSISTANT_SEED * i)
            assistant = create_model(name, data.spec)
        loss = DistillLoss(prev, config)
        run = train_arm(assistant, config, data, seed, loss, progress, f"assistant {i} ({name})")
        links.append(_link(name, run, loss))
        prev = run.model
    loss = DistillLoss(prev, config)
    run = train_arm(student, config, data, seed, loss, progress, "student (from the last assistant)")
    links.append(_link(f"student ({_arch_name(student)})", run, loss))
    run.extra["links"] = links
    ctx["info"]["teacher_cache"] = cache_status(config, data)
    return run


@DISTILL_METHODS.register("self", help="born-again networks: generations of the same architecture")
def self_kd(student: nn.Module, teacher: nn.Module, config: DistillConfig, data, seed: int,
            progress: bool, ctx: dict) -> ArmRun:
    """Born-again networks (Furlanello et al., ICML 2018): generation 1 learns from
    ``teacher``; each next generation, a freshly initialised copy of the student, from the
    previous one. Returns the generation with the best val accuracy (the first on ties;
    the last without a val split); ``extra["generations"]`` holds each one's accuracies."""
    prev, gens, runs = teacher, [], []
    for g in range(1, config.generations + 1):
        model = student if g == 1 else reinit(student, seed + _GENERATION_SEED * (g - 1))
        loss = DistillLoss(prev, config)
        run = train_arm(model, config, data, seed, loss, progress, f"born-again generation {g}")
        gens.append({"generation": g, **_link(_arch_name(student), run, loss)})
        runs.append(run)
        prev = run.model
    if runs[0].val_acc is None:
        chosen = len(runs) - 1
    else:
        chosen = max(range(len(runs)), key=lambda i: (runs[i].val_acc, -i))
    run = runs[chosen]
    run.extra["generations"] = gens
    run.extra["chosen_generation"] = chosen + 1
    ctx["info"]["teacher_cache"] = cache_status(config, data)
    return run


class Cohort(nn.Module):
    """The peers of deep mutual learning as one module; ``forward`` is peer 0's, so the
    Trainer's evaluation measures peer 0."""

    def __init__(self, peers: list[nn.Module]) -> None:
        super().__init__()
        self.peers = nn.ModuleList(peers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.peers[0](x)


class MutualLoss:
    """Trainer loss of the cohort: every peer's CE + KL to the others (single process);
    ``epoch`` (set by the Trainer of ``train_arm``) drives the KD warm-up."""

    def __init__(self, cohort: Cohort, config: DistillConfig) -> None:
        self.cohort, self.config = cohort, config
        self.epoch: float | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        return mutual_loss([peer(x) for peer in self.cohort.peers], y, self.config, epoch=self.epoch)


@DISTILL_METHODS.register("online", help="deep mutual learning of peers, no pre-trained teacher")
def online_kd(student: nn.Module, teacher: nn.Module | None, config: DistillConfig, data, seed: int,
              progress: bool, ctx: dict) -> ArmRun:
    """Deep mutual learning (Zhang et al., CVPR 2018): ``peers`` copies of the student
    (peer 0 at this seed's starting weights, the others re-initialised under their own
    seeds) train together in one Trainer run; the teacher is not used. The cohort keeps
    the epoch where peer 0 was best on val; the peer with the best val accuracy is
    returned. ``extra["peers"]`` holds every peer's accuracies."""
    peers = [student] + [reinit(student, seed + _PEER_SEED * j) for j in range(1, config.peers)]
    cohort = Cohort(peers)
    run = train_arm(cohort, config, data, seed, MutualLoss(cohort, config), progress,
                    f"cohort of {config.peers} peers (mutual learning)")
    records = []
    for j, peer in enumerate(cohort.peers):
        peer.eval()
        records.append({"peer": j, "test_acc": accuracy(peer, data, "test"),
                        "val_acc": accuracy(peer, data, "val")})
    if records[0]["val_acc"] is None:
        best = 0
    else:
        best = max(range(len(records)), key=lambda j: (records[j]["val_acc"], -j))
    return ArmRun(model=cohort.peers[best], test_acc=records[best]["test_acc"],
                  val_acc=records[best]["val_acc"], history=run.history, best_epoch=run.best_epoch,
                  extra={"peers": records, "chosen_peer": best})


def list_methods() -> list[str]:
    """Names of the distillation methods.

    Example:
        >>> list_methods()
        ['dkd', 'feature', 'online', 'progressive', 'response', 'self']
    """
    return DISTILL_METHODS.names()

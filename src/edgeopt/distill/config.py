"""DistillConfig: which distillation, its loss weights, and how the student is trained."""

from __future__ import annotations

import dataclasses
import math

from edgeopt.config import Config
from edgeopt.errors import ConfigError
from edgeopt.train.config import DEVICES, OPTIMIZERS, SCHEDULES

#: ``response``: Hinton KD on softened logits; ``dkd``: Decoupled KD (TCKD + beta NCKD);
#: ``feature``: response KD plus a loss between named intermediate layers (FitNet or
#: attention transfer); ``progressive``: teacher -> assistants -> student (TAKD);
#: ``self``: born-again generations of the same architecture; ``online``: deep mutual
#: learning of ``peers`` students without a pre-trained teacher.
METHODS = ("response", "dkd", "feature", "progressive", "self", "online")
#: ``fitnet``: MSE between features (1x1-conv adapter when channels differ, bilinear resize
#: when sizes differ); ``attention``: attention transfer (Zagoruyko & Komodakis, 2017).
FEATURE_LOSSES = ("fitnet", "attention")
#: Weight of the feature term when ``feature_weight`` is None: the values the CRD benchmark
#: (Tian et al., ICLR 2020) uses for these losses on CIFAR-100.
DEFAULT_FEATURE_WEIGHTS = {"fitnet": 100.0, "attention": 1000.0}
#: Starting weights of each seed: ``given``: the student you pass (every seed; seeds change
#: the data order, augmentation and dropout), ``seed``: re-initialised under
#: ``torch.manual_seed(seed)``, so the spread across seeds includes initialisation too.
INITS = ("given", "seed")


@dataclasses.dataclass(frozen=True)
class DistillConfig(Config):
    """How to distil a teacher into a student, and how to measure it against a baseline.

    Attributes:
        method: one of ``response``, ``dkd``, ``feature``, ``progressive``, ``self``,
            ``online`` (see :data:`METHODS`).
        temperature: softmax temperature ``T`` of the KD term (> 0); the term is scaled by
            ``T**2`` so its gradients keep their size (Hinton et al., 2015).
        alpha: weight of the KD term in ``[0, 1]``; the hard-label cross-entropy gets
            ``1 - alpha``. ``online`` weights the KL to the other peers with it (the
            paper's setting is ``alpha=0.5, temperature=1``).
        dkd_alpha: ``dkd``: weight of the target-class term (TCKD).
        dkd_beta: ``dkd``: weight of the non-target-class term (NCKD); 8 is the paper's
            CIFAR-100 setting.
        kd_warmup_epochs: linear warm-up of the KD term (>= 0, may be fractional): its
            weight is multiplied by ``min(epoch / kd_warmup_epochs, 1)``, updated every
            step (``epoch``: the epochs done once the step is taken), so it grows from
            about 0 to full weight over the first ``kd_warmup_epochs`` epochs; the
            hard-label term is never scaled. Applies to the logit KD term of every method
            (``response``, ``dkd``, the response part of ``feature``, the peers' KL of
            ``online``), not to the feature term. DKD's recipe warms up over 20 of 240
            epochs (Zhao et al., 2022). 0: none.
        feature_pairs: ``feature``: ``(student_layer, teacher_layer)`` qualified names whose
            outputs are matched.
        feature_loss: ``fitnet`` or ``attention``.
        feature_weight: weight of the feature term; None: 100 (fitnet) or 1000 (attention),
            the CRD benchmark's values for CIFAR-sized maps (32x32 to 8x8). The attention
            loss is a mean over map positions, so small maps need smaller weights: on 8x8
            digits, 1000 on a 2x2 map wrecked training, 10 did not.
        assistants: ``progressive``: zoo model names of the teacher assistants, largest
            first (Mirzadeh et al., AAAI 2020); each is created fresh from the data's spec.
        generations: ``self``: born-again generations (Furlanello et al., ICML 2018).
        peers: ``online``: students trained together (Zhang et al., CVPR 2018).
        epochs / lr / batch_size / optimizer / schedule / weight_decay / augment /
            max_steps_per_epoch / device / threads: as in
            :class:`~edgeopt.train.TrainConfig`, for every model trained here.
        seeds: train each arm this many times, with seeds ``seed .. seed + seeds - 1``.
        seed: the first seed.
        init: ``given`` (every seed starts from the student's weights: fine-tuning a
            pruned or pre-trained student works) or ``seed`` (each seed re-initialises
            the student under that seed; both arms start from the same draw).
        baseline: also train the same student from the same weights without a teacher
            (same data, epochs, augmentation, seeds) and report the gain.
        cache_teacher_logits: without augmentation, run the teacher once per training
            image and reuse its logits in later epochs.
        out_dir: where the students' checkpoints and ``distill.json`` go; None: nothing
            is written.

    Example:
        >>> DistillConfig(method="dkd", epochs=2).to_train_config(seed=3).seed
        3
        >>> DistillConfig(alpha=1.5)
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: DistillConfig.alpha=1.5 must be in [0.0, 1.0]
    """

    method: str = "response"
    temperature: float = 4.0
    alpha: float = 0.9
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    kd_warmup_epochs: float = 0.0
    feature_pairs: tuple[tuple[str, str], ...] = ()
    feature_loss: str = "fitnet"
    feature_weight: float | None = None
    assistants: tuple[str, ...] = ()
    generations: int = 2
    peers: int = 2
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    optimizer: str = "sgd"
    schedule: str = "cosine"
    weight_decay: float = 5e-4
    augment: bool = False
    seeds: int = 1
    seed: int = 0
    init: str = "given"
    baseline: bool = True
    cache_teacher_logits: bool = True
    max_steps_per_epoch: int | None = None
    device: str = "auto"
    threads: int | None = None
    out_dir: str | None = None

    def validate(self) -> None:
        self._check_choice("method", METHODS)
        self._check_choice("feature_loss", FEATURE_LOSSES)
        self._check_choice("optimizer", OPTIMIZERS)
        self._check_choice("schedule", SCHEDULES)
        self._check_choice("device", DEVICES)
        self._check_choice("init", INITS)
        if not self.temperature > 0:
            raise ConfigError(f"DistillConfig.temperature={self.temperature!r} must be > 0")
        self._check_range("alpha", 0.0, 1.0)
        self._check_range("dkd_alpha", 0.0, None)
        self._check_range("dkd_beta", 0.0, None)
        if not 0.0 <= self.kd_warmup_epochs < math.inf:  # also refuses NaN
            raise ConfigError(f"DistillConfig.kd_warmup_epochs={self.kd_warmup_epochs!r} must be a "
                              f"finite number >= 0 (epochs of the KD term's warm-up; 0: none)")
        self._check_range("feature_weight", 0.0, None)
        self._check_range("generations", 1, 100)
        self._check_range("peers", 2, 100)
        self._check_range("epochs", 1, None)
        self._check_range("lr", 0.0, None)
        self._check_batch_size("batch_size")
        self._check_range("weight_decay", 0.0, None)
        self._check_range("seeds", 1, 1000)
        self._check_range("seed", 0, None)
        self._check_range("max_steps_per_epoch", 1, None)
        self._check_threads("threads")
        for pair in self.feature_pairs:
            if len(pair) != 2 or not all(pair):
                raise ConfigError(
                    f"DistillConfig.feature_pairs entry {list(pair)!r} must be two layer names: "
                    f"[student_layer, teacher_layer]"
                )
        if self.method == "feature" and not self.feature_pairs:
            raise ConfigError(
                "DistillConfig.method='feature' needs feature_pairs: [[student_layer, teacher_layer], ...]"
            )
        if self.feature_pairs and self.method != "feature":
            raise ConfigError(
                f"DistillConfig.feature_pairs is used by method='feature' only, not {self.method!r}"
            )
        if self.method == "progressive" and not self.assistants:
            raise ConfigError(
                "DistillConfig.method='progressive' needs assistants: zoo model names, largest first"
            )
        if self.assistants and self.method != "progressive":
            raise ConfigError(
                f"DistillConfig.assistants is used by method='progressive' only, not {self.method!r}"
            )
        if self.out_dir is not None and not isinstance(self.out_dir, str):
            object.__setattr__(self, "out_dir", str(self.out_dir))

    @property
    def feature_scale(self) -> float:
        """The feature term's weight (``feature_weight`` or the loss's default)."""
        if self.feature_weight is not None:
            return self.feature_weight
        return DEFAULT_FEATURE_WEIGHTS[self.feature_loss]

    def to_train_config(self, seed: int | None = None, progress: bool = False):
        """The :class:`~edgeopt.train.TrainConfig` every model of this run is trained with.

        Validation runs every epoch (the best epoch's weights are kept); checkpoints are
        written by :func:`~edgeopt.distill.distill`, not by the Trainer.
        """
        from edgeopt.train import TrainConfig

        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
            schedule=self.schedule, weight_decay=self.weight_decay, augment=self.augment,
            seed=self.seed if seed is None else seed, max_steps_per_epoch=self.max_steps_per_epoch,
            device=self.device, threads=self.threads, progress=bool(progress), eval_every=1,
            out_dir=None,
        )

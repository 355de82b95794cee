"""Knowledge distillation: a small student learns from a trained teacher, measured honestly.

``distill(student, teacher, DistillConfig(...), data)`` returns a :class:`DistillResult`
with a new distilled student and, by default, the same student trained without a teacher
from the same weights on the same data and seeds, so the gain is measured, not assumed:
with several seeds the result gives mean and spread of both and calls a gain inside twice
the combined spread "no measurable gain".

Methods (:data:`METHODS`): ``response`` (Hinton KD), ``dkd`` (Decoupled KD, for strong
and confident teachers), ``feature`` (FitNet or attention transfer on named layers, plus
response KD), ``progressive`` (teacher assistants), ``self`` (born-again generations) and
``online`` (deep mutual learning, no teacher). The teacher is a frozen copy (eval mode,
no gradients); without augmentation its logits are computed once per training image.

Public API:

* :class:`DistillConfig`, :func:`distill` -> :class:`DistillResult`, :func:`summarize`.
* :func:`distill_loss_fn` ``(teacher, config)``: a Trainer ``loss_fn`` (e.g. to fine-tune a
  pruned model with its unpruned teacher).
* :func:`sweep` -> :class:`SweepResult`: a temperature x alpha grid, CSV/JSON and heatmap.
* Losses: :data:`KD_LOSSES` (:func:`response_loss`, :func:`dkd_loss`), :func:`kd_kl`,
  :func:`dkd_parts`, :func:`mutual_loss`, :func:`kd_warmup_weight`; :data:`FEATURE_LOSSES` (``fitnet``,
  ``attention``); :class:`FeatureHooks`, :func:`make_adapter`.
* :data:`DISTILL_METHODS`, :func:`list_methods`, :func:`list_kd_losses`.

Example:
    >>> from edgeopt.data import get_dataset
    >>> from edgeopt.models import create_model
    >>> data = get_dataset("digits")
    >>> teacher = create_model("simple_cnn", data.spec)
    >>> student = create_model("simple_cnn", data.spec, dropout=0.0)
    >>> cfg = DistillConfig(method="dkd", epochs=1, max_steps_per_epoch=2, batch_size=32)
    >>> r = distill(student, teacher, cfg, data, progress=False)
    >>> r.summary["verdict"] in VERDICTS
    True
"""

from edgeopt.distill._base import VERDICTS, DistillResult, distill, save_result, summarize
from edgeopt.distill.config import FEATURE_LOSSES as FEATURE_LOSS_NAMES
from edgeopt.distill.config import METHODS, DistillConfig
from edgeopt.distill.features import FEATURE_LOSSES, FeatureHooks, make_adapter
from edgeopt.distill.losses import (
    KD_LOSSES,
    dkd_loss,
    dkd_parts,
    get_kd_loss,
    kd_kl,
    kd_warmup_weight,
    list_kd_losses,
    mutual_loss,
    response_loss,
)
from edgeopt.distill.methods import DISTILL_METHODS, list_methods
from edgeopt.distill.sweep import SweepResult, sweep
from edgeopt.distill.teacher import DistillLoss, TeacherCache, check_teacher, distill_loss_fn

__all__ = [
    "DISTILL_METHODS",
    "FEATURE_LOSSES",
    "FEATURE_LOSS_NAMES",
    "KD_LOSSES",
    "METHODS",
    "VERDICTS",
    "DistillConfig",
    "DistillLoss",
    "DistillResult",
    "FeatureHooks",
    "SweepResult",
    "TeacherCache",
    "check_teacher",
    "distill",
    "distill_loss_fn",
    "dkd_loss",
    "dkd_parts",
    "get_kd_loss",
    "kd_kl",
    "kd_warmup_weight",
    "list_kd_losses",
    "list_methods",
    "make_adapter",
    "mutual_loss",
    "response_loss",
    "save_result",
    "summarize",
    "sweep",
]

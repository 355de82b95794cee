"""Distillation presets: a teacher/student pair from the zoo and the settings that go with it.

A preset names the zoo architectures of the pair, the data its settings were chosen for,
and :class:`~edgeopt.distill.DistillConfig` values, each with where it comes from. It fills
in what the user did not say: ``edgeopt distill --preset NAME`` (or ``preset:`` in a job
file) puts the preset's values under the file's and the flags' (:func:`preset_config`).

* ``mnist-cnn``: ``cnn_teacher`` -> ``cnn_student`` (1.38M -> 24k parameters) for 1-channel
  28x28 data (Fashion-MNIST, MNIST; digits too);
* ``mobilenetv2``: ``mobilenetv2_teacher`` -> ``mobilenetv2_student`` (4.2M -> 1.8M), the
  pair of the knowledge-distillation workshop notebooks, for CIFAR-10;
* ``resnet``: ``resnet56`` -> ``resnet20`` (0.86M -> 0.27M), a pair of the CRD benchmark.

The teacher is always a trained checkpoint: train it first, e.g.
``edgeopt train --model cnn_teacher --data fashion-mnist``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeopt.distill.config import DistillConfig
from edgeopt.registry import Registry

#: preset name -> :class:`DistillPreset`
PRESETS: Registry = Registry("distillation preset")

# Where the shared values come from (one line each, quoted by the presets' ``sources``).
_HINTON = ("temperature 4: Hinton et al. 2015, MNIST: with a student much smaller than its teacher, "
           "temperatures 2.5-4 worked best")
_CRD_KD = ("alpha 0.9, temperature 4: the KD baseline of the CRD benchmark (Tian et al., ICLR 2020; "
           "its `-r 0.1 -a 0.9`, kd_T 4: 0.1 cross-entropy + 0.9 KD)")


@dataclasses.dataclass(frozen=True)
class DistillPreset:
    """A teacher/student pair and its distillation settings.

    Attributes:
        name: the preset's name (``--preset``).
        teacher: zoo name of the teacher architecture (train it, then pass its checkpoint).
        student: zoo name of the student created fresh when no student is given.
        data: the dataset the settings were chosen for.
        settings: :class:`~edgeopt.distill.DistillConfig` fields.
        sources: where each setting comes from.
        assistants: teacher assistants used when ``method='progressive'`` names none.
        feature_pairs: ``(student_layer, teacher_layer)`` used when ``method='feature'``
            names none.
        per_method: settings of one method over ``settings`` (a value given by the user
            still wins), e.g. ``online``'s temperature 1 and alpha 0.5.
        help: one line for listings.

    Example:
        >>> get_preset("resnet").student, get_preset("resnet").settings["epochs"]
        ('resnet20', 240)
    """

    name: str
    teacher: str
    student: str
    data: str
    settings: dict[str, Any]
    sources: tuple[str, ...]
    assistants: tuple[str, ...] = ()
    feature_pairs: tuple[tuple[str, str], ...] = ()
    per_method: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    help: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = dataclasses.asdict(self)
        d["sources"], d["assistants"] = list(self.sources), list(self.assistants)
        d["feature_pairs"] = [list(p) for p in self.feature_pairs]
        return d


#: deep mutual learning's own setting (Zhang et al., CVPR 2018): each peer's loss is its
#: cross-entropy plus the KL to the others at temperature 1, equally weighted
_DML = {"online": {"temperature": 1.0, "alpha": 0.5}}
_DML_SOURCE = ("method online: temperature 1, alpha 0.5 (Zhang et al., CVPR 2018); measured with cnn_student "
               "on digits (2 epochs, 2 seeds): with T 4, alpha 0.9 the peers reached 22 % against 69-79 % for "
               "the student alone, with T 1, alpha 0.5 64-75 %")


def _add(p: DistillPreset) -> None:
    for extra in [{}, *p.per_method.values()]:  # a bad preset fails at import, not in a user's run
        DistillConfig.from_dict({**p.settings, **extra})
    PRESETS.add(p.name, p, help=p.help)


_add(DistillPreset(
    name="mnist-cnn", teacher="cnn_teacher", student="cnn_student", data="fashion-mnist",
    settings={"temperature": 4.0, "alpha": 0.9, "epochs": 10, "lr": 0.05, "batch_size": 128,
              "augment": False, "feature_weight": 10.0, "dkd_beta": 1.0},
    sources=(_HINTON, _CRD_KD, _DML_SOURCE,
             ("dkd_beta 1 (method dkd): measured on digits (3 epochs, 2 seeds): the paper's CIFAR-100 value 8, "
              "without the paper's 20-epoch warm-up of the KD term, gave 77-79 %, beta 1 87-89 %"),
             ("feature_weight 10 (method feature, FitNet block3:block3): measured on digits (4 epochs, 2 seeds): "
              "the CRD weight 100 left the student at 18-20 % test accuracy, 10 gave 89 % (response KD alone 92 %)"),
             ("epochs 10, lr 0.05 (SGD, cosine), batch 128, no augmentation: edgeopt's CPU budget for "
              "Fashion-MNIST (the teacher's logits are then computed once and cached), not from a paper")),
    assistants=("cnn_assistant",), feature_pairs=(("block3", "block3"),), per_method=_DML,
    help="cnn_teacher -> cnn_student (1.38M -> 24k params), 1x28x28 data (Fashion-MNIST, MNIST)",
))
_add(DistillPreset(
    name="mobilenetv2", teacher="mobilenetv2_teacher", student="mobilenetv2_student", data="cifar10",
    settings={"temperature": 4.0, "alpha": 0.9, "epochs": 30, "lr": 0.05, "batch_size": 128,
              "augment": True},
    sources=(_CRD_KD, _DML_SOURCE,
             ("epochs 30, lr 0.05 (SGD, cosine), batch 128, augmentation on: edgeopt's CPU budget for "
              "CIFAR-10 (CRD trains 240 epochs on a GPU), not from a paper")),
    # features.16 / features.18: the last 1x1 conv (1280 channels) of the student / the teacher
    feature_pairs=(("features.16", "features.18"),), per_method=_DML,
    help="mobilenetv2_teacher -> mobilenetv2_student (4.2M -> 1.8M params), the workshop pair, CIFAR-10",
))
_add(DistillPreset(
    name="resnet", teacher="resnet56", student="resnet20", data="cifar10",
    settings={"temperature": 4.0, "alpha": 0.9, "epochs": 240, "lr": 0.05, "batch_size": 64,
              "weight_decay": 5e-4, "augment": True},
    sources=(_CRD_KD, _DML_SOURCE,
             ("epochs 240, lr 0.05, batch 64, weight decay 5e-4, SGD: CRD's student recipe (CIFAR-100; "
              "it decays the lr 10x at epochs 150/180/210, edgeopt uses a cosine schedule)")),
    feature_pairs=(("layer3", "layer3"),), per_method=_DML,
    help="resnet56 -> resnet20 (0.86M -> 0.27M params), the CRD benchmark's recipe, CIFAR-10",
))


def get_preset(name: str) -> DistillPreset:
    """The preset ``name``; an unknown name is a ConfigError listing the choices.

    Example:
        >>> get_preset("mnist-cnn").teacher
        'cnn_teacher'
        >>> get_preset("mnist")
        Traceback (most recent call last):
        ...
        edgeopt.errors.ConfigError: unknown distillation preset 'mnist'. Did you mean 'mnist-cnn'? Choices: ...
    """
    return PRESETS.get(name)


def list_presets() -> list[str]:
    """Names of the presets.

    Example:
        >>> list_presets()
        ['mnist-cnn', 'mobilenetv2', 'resnet']
    """
    return PRESETS.names()


def preset_config(name: str | None, values: dict[str, Any] | None = None) -> DistillConfig:
    """A :class:`DistillConfig`: the preset's settings, then ``values`` over them.

    The preset's ``per_method`` settings of the method come next; its ``assistants`` /
    ``feature_pairs`` are used only when the method needs them and ``values`` names none
    (they would be refused with another method).

    Args:
        name: a preset name, or None (``values`` over the DistillConfig defaults).
        values: DistillConfig fields, e.g. from a job file and the command line.

    Example:
        >>> cfg = preset_config("mnist-cnn", {"method": "progressive", "epochs": 2})
        >>> cfg.temperature, cfg.epochs, cfg.assistants
        (4.0, 2, ('cnn_assistant',))
        >>> cfg = preset_config("mnist-cnn", {"method": "online", "alpha": 0.7})
        >>> cfg.temperature, cfg.alpha
        (1.0, 0.7)
    """
    values = dict(values or {})
    if name is None:
        return DistillConfig.from_dict(values)
    p = get_preset(name)
    method = values.get("method", p.settings.get("method", "response"))
    d = {**p.settings, **p.per_method.get(method, {}), **values}
    if method == "progressive" and not d.get("assistants") and p.assistants:
        d["assistants"] = list(p.assistants)
    if method == "feature" and not d.get("feature_pairs") and p.feature_pairs:
        d["feature_pairs"] = [list(pair) for pair in p.feature_pairs]
    return DistillConfig.from_dict(d)

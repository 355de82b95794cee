"""MobileNetV2 adapted to small images (CIFAR 32x32, digits 8x8), plus a KD teacher/student.

What changes against ``torchvision.models.MobileNetV2`` (ImageNet, total stride 32):

* the stem conv (``features.0.0``) has stride 1 instead of 2 and takes ``in_channels``
  (the reference MobileNetV2-CIFAR workload changes only this);
* optionally (``stage2_stride=1``) the 24-channel stage keeps the resolution too, the
  heavier adaptation of kuangliu/pytorch-cifar (about 3x the MACs at 32x32).

With the defaults the total stride is 16: a 32x32 input ends as a 2x2x1280 feature map,
an 8x8 input as 1x1x1280 (a 3x3/stride-2/padding-1 conv on a 1x1 map still gives 1x1, so
even smaller inputs run). Parameter counts do not depend on strides: 2,236,682 at 10 classes.

``mobilenetv2_teacher`` and ``mobilenetv2_student`` are the pair used in knowledge-distillation
workshop notebooks: a teacher with a larger classifier head (~4.2M parameters) and a student
with fewer inverted-residual blocks (~1.8M parameters), both with the same CIFAR stem.
"""

from __future__ import annotations

from torch import nn

from edgeopt.models._registry import MODELS

# torchvision's setting (t expansion, c channels, n blocks, s stride of the first block);
# the stride of the 24-channel stage is set by ``stage2_stride``.
CIFAR_SETTING: list[list[int]] = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]

# The student drops one block of the 96- and of the 160-channel stages (3 -> 2 each):
# 1,798,410 parameters at 10 classes instead of 2,236,682.
STUDENT_SETTING: list[list[int]] = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 2, 1],
    [6, 160, 2, 2],
    [6, 320, 1, 1],
]


def _cifar_mobilenetv2(
    num_classes: int,
    in_channels: int,
    width_mult: float,
    setting: list[list[int]],
    dropout: float,
    stage2_stride: int = 2,
) -> nn.Module:
    from torchvision.models import MobileNetV2  # heavy import on first use

    from edgeopt.errors import ConfigError

    if stage2_stride not in (1, 2):
        raise ConfigError(f"stage2_stride must be 1 or 2, got {stage2_stride!r}")
    setting = [list(s) for s in setting]
    setting[1][3] = stage2_stride

    model = MobileNetV2(
        num_classes=num_classes,
        width_mult=width_mult,
        inverted_residual_setting=[list(s) for s in setting],
        dropout=dropout,
    )
    old = model.features[0][0]  # Conv2d(3, 32*width, 3, stride=2, padding=1, bias=False)
    stem = nn.Conv2d(in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out")  # torchvision's init for convs
    model.features[0][0] = stem
    return model


@MODELS.register("mobilenetv2", help="MobileNetV2 with a stride-1 CIFAR stem, ~2.24M params")
def mobilenetv2(
    *, num_classes: int, in_channels: int, width_mult: float = 1.0, dropout: float = 0.2,
    stage2_stride: int = 2,
) -> nn.Module:
    """torchvision MobileNetV2 adapted to 32x32 inputs (stem stride 1).

    Args:
        num_classes: outputs of the classifier.
        in_channels: channels of the input image (1 for grey).
        width_mult: channel multiplier of every layer (torchvision's ``width_mult``).
        dropout: dropout before the classifier.
        stage2_stride: stride of the 24-channel stage (2 as torchvision; 1 keeps 16x16
            maps there for about 3x the MACs).

    Returns:
        A ``torchvision.models.MobileNetV2`` with the changed stem and strides.

    Example:
        >>> import torch
        >>> m = mobilenetv2(num_classes=10, in_channels=1, width_mult=0.5)
        >>> m.eval()(torch.zeros(1, 1, 8, 8)).shape
        torch.Size([1, 10])
    """
    return _cifar_mobilenetv2(num_classes, in_channels, width_mult, CIFAR_SETTING, dropout, stage2_stride)


@MODELS.register(
    "mobilenetv2_teacher", help="KD teacher: CIFAR MobileNetV2 + 3-layer head, ~4.2M params"
)
def mobilenetv2_teacher(
    *, num_classes: int, in_channels: int, width_mult: float = 1.0, dropout: float = 0.2,
    stage2_stride: int = 2,
) -> nn.Module:
    """CIFAR MobileNetV2 with a bigger classifier, the teacher for distillation.

    The head is Dropout-Linear(1280,1024)-ReLU-Dropout-Linear(1024,640)-ReLU-Dropout-
    Linear(640,classes): 1,974,154 parameters at 10 classes, 4,198,026 in all.

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(mobilenetv2_teacher(num_classes=10, in_channels=3))
        4198026
    """
    model = _cifar_mobilenetv2(num_classes, in_channels, width_mult, CIFAR_SETTING, dropout, stage2_stride)
    last = model.last_channel  # 1280 (or more for width_mult > 1)
    model.classifier = nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(last, 1024),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(1024, 640),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(640, num_classes),
    )
    for m in model.classifier:
        if isinstance(m, nn.Linear):  # torchvision's init for its classifier
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


@MODELS.register(
    "mobilenetv2_student", help="KD student: CIFAR MobileNetV2 with fewer blocks, ~1.8M params"
)
def mobilenetv2_student(
    *, num_classes: int, in_channels: int, width_mult: float = 1.0, dropout: float = 0.2,
    stage2_stride: int = 2,
) -> nn.Module:
    """CIFAR MobileNetV2 with one block fewer in the 96- and 160-channel stages.

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(mobilenetv2_student(num_classes=10, in_channels=3))
        1798410
    """
    return _cifar_mobilenetv2(num_classes, in_channels, width_mult, STUDENT_SETTING, dropout, stage2_stride)

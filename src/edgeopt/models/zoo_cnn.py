"""Small conv nets for tiny images: ``simple_cnn`` and the KD pair ``cnn_teacher`` / ``cnn_student``.

``simple_cnn`` (~243k parameters, ~0.97 MB fp32) runs on anything from 4x4 (sklearn digits
are 8x8) to 32x32 and larger: every conv is 3x3 with padding 1 (spatial size kept), there
are only two 2x2 max-pools (H/4 x W/4 before the head), and an adaptive average pool makes
the head independent of the input size. ``cnn_teacher`` (~1.38M) and ``cnn_student``
(~24k, 1/57 of it) follow the same rules, for 1- or 3-channel images of 8x8 to 32x32; they
are the pair of the ``mnist-cnn`` distillation preset (:mod:`edgeopt.distill.presets`).
"""

from __future__ import annotations

from torch import nn

from edgeopt.models._registry import MODELS


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    # bias=False because BatchNorm's shift makes a conv bias redundant; conv-bn-relu is
    # also the pattern every quantization backend fuses.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SimpleCNN(nn.Module):
    """conv32-conv64-pool-conv128-pool-conv128, global average pool, dropout, fc.

    Shapes for a [N, C, H, W] input: [N,32,H,W] -> [N,64,H,W] -> [N,64,H/2,W/2]
    -> [N,128,H/2,W/2] -> [N,128,H/4,W/4] -> [N,128,H/4,W/4] -> [N,128] -> [N,classes].

    Example:
        >>> import torch
        >>> SimpleCNN(10, 1)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 32),
            _conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            _conv_bn_relu(64, 128),
            nn.MaxPool2d(2),
            _conv_bn_relu(128, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)  # any H/4 x W/4 -> 1x1
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(128, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)  # [N, 128]
        return self.fc(self.dropout(x))


@MODELS.register("simple_cnn", help="small 4-conv net, ~0.24M params, for 8x8 to 32x32 images")
def simple_cnn(*, num_classes: int, in_channels: int, dropout: float = 0.2) -> nn.Module:
    """Build :class:`SimpleCNN`.

    Example:
        >>> simple_cnn(num_classes=10, in_channels=3).fc.out_features
        10
    """
    return SimpleCNN(num_classes, in_channels, dropout=dropout)


# -- the KD pair for MNIST-like data -------------------------------------------------------
class CNNTeacher(nn.Module):
    """The distillation teacher for MNIST-like data: conv64, pool, conv128 x2, pool, conv256 x2,
    global average pool and a wide two-layer head with dropout.

    Shapes for a [N, C, H, W] input (named blocks, so feature KD can name them):
    ``block1`` [N,64,H/2,W/2] -> ``block2`` [N,128,H/4,W/4] -> ``block3`` [N,256,H/4,W/4]
    -> ``pool`` [N,256,1,1] -> ``head`` [N,1024] -> [N,classes]. At 28x28 it costs about
    87M multiply-accumulates per image. The pool is global (1x1) because Core ML converts
    adaptive pooling to other sizes only for a fixed input size.

    Example:
        >>> import torch
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(CNNTeacher(10, 1)), count_parameters(CNNTeacher(10, 3))
        (1381578, 1382730)
        >>> CNNTeacher(10, 3).eval()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.block1 = nn.Sequential(_conv_bn_relu(in_channels, 64), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(_conv_bn_relu(64, 128), _conv_bn_relu(128, 128), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(_conv_bn_relu(128, 256), _conv_bn_relu(256, 256))
        self.pool = nn.AdaptiveAvgPool2d(1)  # any H/4 x W/4 -> 1x1
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(256, 1024), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(1024, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.pool(self.block3(self.block2(self.block1(x)))))


class CNNStudent(nn.Module):
    """The distillation student for MNIST-like data: three narrow convs (16-32-64 channels),
    two max-pools, global average pool and one linear layer.

    Shapes: ``block1`` [N,16,H/2,W/2] -> ``block2`` [N,32,H/4,W/4] -> ``block3``
    [N,64,H/4,W/4] -> ``pool`` [N,64,1,1] -> ``fc`` [N,classes]: the same block names and
    spatial sizes as :class:`CNNTeacher`, so ``block3:block3`` is a feature-KD pair without
    resizing. About 1.9M multiply-accumulates per image at 28x28, 1/45 of the teacher's.

    Example:
        >>> import torch
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(CNNStudent(10, 1)), count_parameters(CNNStudent(10, 3))
        (24058, 24346)
        >>> CNNStudent(10, 1).eval()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.block1 = nn.Sequential(_conv_bn_relu(in_channels, width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(_conv_bn_relu(width, 2 * width), nn.MaxPool2d(2))
        self.block3 = _conv_bn_relu(2 * width, 4 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.pool(self.block3(self.block2(self.block1(x)))).flatten(1)  # [N, 4 * width]
        return self.fc(self.dropout(x))


@MODELS.register("cnn_teacher", help="KD teacher for MNIST-like data: conv 64-128-256 + wide head, ~1.38M params")
def cnn_teacher(*, num_classes: int, in_channels: int, dropout: float = 0.3) -> nn.Module:
    """Build :class:`CNNTeacher` (the teacher of the ``mnist-cnn`` distillation preset).

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(cnn_teacher(num_classes=10, in_channels=1))
        1381578
    """
    return CNNTeacher(num_classes, in_channels, dropout=dropout)


@MODELS.register("cnn_student", help="KD student for MNIST-like data: 3 narrow convs + fc, ~24k params")
def cnn_student(*, num_classes: int, in_channels: int, width: int = 16, dropout: float = 0.0) -> nn.Module:
    """Build :class:`CNNStudent` (the student of the ``mnist-cnn`` distillation preset);
    ``width`` is the first conv's channels (the others have 2x and 4x).

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(cnn_student(num_classes=10, in_channels=1))
        24058
    """
    return CNNStudent(num_classes, in_channels, width=width, dropout=dropout)


@MODELS.register("cnn_assistant", help="KD teacher assistant for MNIST-like data: cnn_student at width 32, ~94k params")
def cnn_assistant(*, num_classes: int, in_channels: int, dropout: float = 0.0) -> nn.Module:
    """:class:`CNNStudent` at width 32 (32-64-128 channels): the teacher assistant between
    ``cnn_teacher`` and ``cnn_student`` for progressive KD (Mirzadeh et al., AAAI 2020). It
    has 3.9x the student's parameters and 1/15 of the teacher's, and about 4x the
    student's multiply-accumulates (kept narrow so that progressive KD stays affordable on a CPU).

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(cnn_assistant(num_classes=10, in_channels=1))
        94186
    """
    return CNNStudent(num_classes, in_channels, width=32, dropout=dropout)

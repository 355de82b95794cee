"""CIFAR ResNets (He et al. 2016, section 4.2) and torchvision ResNet-18 with a CIFAR stem.

``resnet20`` / ``resnet32`` / ``resnet44`` / ``resnet56``: a 3x3 conv to 16 channels, then 3 stages of n basic blocks
(16, 32, 64 channels; 32x32 -> 32x32 -> 16x16 -> 8x8), global average pool, fc; depth 6n+2.

Shortcut: **option B** (a 1x1 conv + BatchNorm projection where the shape changes, identity
elsewhere), not the paper's option A (zero-padding). Option B costs only 2,752 parameters
(+1%) but is an ordinary conv, so structured pruning, quantization fusion and ONNX/TFLite
export treat it like any other layer; option A's strided slice and channel padding are
special cases for all of them. Checkpoints trained with option A (the common public CIFAR
ResNets) import exactly: ``edgeopt import`` turns each zero-padding shortcut into the
equivalent fixed 1x1 projection (edgeopt.models.converters).
"""

from __future__ import annotations

from torch import nn

from edgeopt.models._registry import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut; [N,cin,H,W] -> [N,cout,H/stride,W/stride]."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)  # a module, not F.relu, so it can be fused
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:  # option B projection
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images.

    Example:
        >>> import torch
        >>> CifarResNet(3, num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # [N,64,H/4,W/4] -> [N,64,1,1]
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@MODELS.register("resnet20", help="CIFAR ResNet-20 (He et al. 2016, option B), ~0.27M params")
def resnet20(*, num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR ResNet-20 (n=3).

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(resnet20(num_classes=10, in_channels=3))
        272474
    """
    return CifarResNet(3, num_classes, in_channels)


@MODELS.register("resnet32", help="CIFAR ResNet-32 (He et al. 2016, option B), ~0.47M params")
def resnet32(*, num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR ResNet-32 (n=5).

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(resnet32(num_classes=10, in_channels=3))
        466906
    """
    return CifarResNet(5, num_classes, in_channels)


@MODELS.register("resnet44", help="CIFAR ResNet-44 (He et al. 2016, option B), ~0.66M params")
def resnet44(*, num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR ResNet-44 (n=7).

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(resnet44(num_classes=10, in_channels=3))
        661338
    """
    return CifarResNet(7, num_classes, in_channels)


@MODELS.register("resnet56", help="CIFAR ResNet-56 (He et al. 2016, option B), ~0.86M params")
def resnet56(*, num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR ResNet-56 (n=9).

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(resnet56(num_classes=10, in_channels=3))
        855770
    """
    return CifarResNet(9, num_classes, in_channels)


@MODELS.register("resnet18", help="torchvision ResNet-18 with a CIFAR stem, ~11.2M params")
def resnet18(*, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem conv and no max-pool.

    The ImageNet stem (7x7 stride 2 + max-pool, stride 4) would shrink 32x32 to 8x8 before
    the first block; the CIFAR stem keeps 32x32, so layer4 sees 4x4 (8x8 input: 1x1).

    Example:
        >>> from edgeopt.models import count_parameters
        >>> count_parameters(resnet18(num_classes=10, in_channels=3))
        11173962
    """
    from torchvision.models import resnet18 as tv_resnet18  # heavy import on first use

    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model

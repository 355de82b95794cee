"""``simple_cnn``: a small conv net (~243k parameters, ~0.97 MB fp32) for tiny images.

It runs on anything from 4x4 (sklearn digits are 8x8) to 32x32 and larger: every conv is
3x3 with padding 1 (spatial size kept), there are only two 2x2 max-pools (H/4 x W/4 before
the head), and an adaptive average pool makes the head independent of the input size.
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

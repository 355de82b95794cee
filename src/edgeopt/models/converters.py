"""State-dict converters: checkpoints trained with another layout of a zoo architecture.

A converter is registered by name in :data:`CONVERTERS` as an object with two methods:
``applies(state, model) -> bool`` (does this file have that layout, for that model?) and
``convert(state, model) -> (state, notes)`` (the same weights in the model's layout, plus
one line per change for the import report). ``edgeopt import`` tries each one whose
``applies`` is true (``--convert auto``) or the one the user names.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from edgeopt.registry import Registry


class Converter(Protocol):
    def applies(self, state: dict[str, torch.Tensor], model: nn.Module) -> bool: ...

    def convert(
        self, state: dict[str, torch.Tensor], model: nn.Module
    ) -> tuple[dict[str, torch.Tensor], list[str]]: ...


CONVERTERS: Registry[Converter] = Registry("converter")


class CifarResNetOptionA:
    """CIFAR ResNet checkpoints with the paper's option-A shortcuts (zero padding) -> the zoo's
    ``resnet20/32/44/56`` (option B: a 1x1 conv + BatchNorm where the shape changes).

    Option A's shortcut ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, c // 4, c // 4))`` takes every
    second pixel and puts the ``c/2`` input channels in the middle of ``c`` outputs, zeros
    around. That is exactly a stride-2 1x1 convolution whose weight is a shifted identity,
    followed by an identity BatchNorm (weight 1, bias 0, mean 0, variance ``1 - eps``), so the
    imported model computes the same logits (to float rounding) and every later step
    (pruning, quantization, export) sees ordinary layers. The final ``linear.`` layer of the
    common public code is renamed ``fc.``.
    """

    def applies(self, state: dict[str, torch.Tensor], model: nn.Module) -> bool:
        from edgeopt.models.zoo_resnet import CifarResNet

        own = model.state_dict()
        missing_shortcuts = [k for k in own if ".shortcut." in k and k not in state]
        return isinstance(model, CifarResNet) and bool(missing_shortcuts) and not any(
            ".shortcut." in k for k in state
        )

    def convert(
        self, state: dict[str, torch.Tensor], model: nn.Module
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        out = dict(state)
        notes: list[str] = []
        if "linear.weight" in out and "fc.weight" not in out:
            for part in ("weight", "bias"):
                if f"linear.{part}" in out:
                    out[f"fc.{part}"] = out.pop(f"linear.{part}")
            notes.append("renamed linear.* -> fc.*")
        for name, module in model.named_modules():
            if not name.endswith(".shortcut") or not isinstance(module, nn.Sequential):
                continue
            conv, bn = module[0], module[1]
            cout, cin = conv.out_channels, conv.in_channels
            pad = (cout - cin) // 2  # option A pads planes // 4 on each side; cin = planes / 2
            w = torch.zeros(cout, cin, 1, 1)
            w[torch.arange(cin) + pad, torch.arange(cin), 0, 0] = 1.0
            out[f"{name}.0.weight"] = w
            out[f"{name}.1.weight"] = torch.ones(cout)
            out[f"{name}.1.bias"] = torch.zeros(cout)
            out[f"{name}.1.running_mean"] = torch.zeros(cout)
            # (x - 0) / sqrt(var + eps) = x needs var = 1 - eps
            out[f"{name}.1.running_var"] = torch.full((cout,), 1.0 - bn.eps)
            out[f"{name}.1.num_batches_tracked"] = torch.tensor(0)
            notes.append(f"{name}: option-A zero-padding shortcut -> exact 1x1 projection ({cin} -> {cout})")
        return out, notes


CONVERTERS.add(
    "cifar-resnet-option-a",
    CifarResNetOptionA(),
    help="CIFAR ResNet-20/32/44/56 with zero-padding (option A) shortcuts, e.g. the common public .th files",
)

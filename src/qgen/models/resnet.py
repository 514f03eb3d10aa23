"""ResNets for small images: the CIFAR family of He et al. 2016 (depth 6n+2) and a ResNet-18.

- depth 20, 32, 44, 56, 110: three stages of n BasicBlocks with 16/32/64 x ``spec.width``
  channels (width 1 is the paper's network), stride 2 at the start of stages 2 and 3.
- depth 18: the ImageNet ResNet-18 layout (four stages of two BasicBlocks, 64/128/256/512 x
  ``spec.width`` channels) adapted to 32x32 inputs the usual way: a 3x3 stride-1 stem and no
  max-pool.

Both use "option B" shortcuts (a 1x1 conv + BN) wherever a block changes shape; He et al. used
option A (zero padding) on CIFAR, so our ResNet-20 has 2,752 more parameters (272,474 against
~269.7k for 10 classes). Option B keeps every weight in an ``nn.Conv2d`` the quantizer can see.
Convolutions have no bias (BN follows each); conv weights use He (fan-out) normal init, BN
starts at weight 1 and bias 0. ``spec.dropout`` > 0 adds an ``nn.Dropout`` before the classifier.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from qgen.config import ModelSpec
from qgen.models.registry import check_depth, dropout_or_none, register_model

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
DEPTHS = (18, *CIFAR_DEPTHS)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers plus a shortcut; ReLU after the sum.

    The shortcut is registered after the main path (and run after it), so module order is
    execution order. It is a 1x1 conv + BN when stride or channels change, else the identity
    (``shortcut`` is then ``None`` and adds no module).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False)),
                ("bn", nn.BatchNorm2d(channels)),
            ]))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(out + identity)


class ResNet(nn.Module):
    """A stem conv, stages of BasicBlocks, global average pool and one Linear classifier.

    ``stages`` is a list of (channels, blocks, first stride). Module names: ``stem.conv``,
    ``stages.<s>.<b>.conv1|conv2|shortcut.conv``, ``fc`` (the logits layer).
    """

    def __init__(self, in_channels: int, num_classes: int, stem_channels: int,
                 stages: list[tuple[int, int, int]], dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False)),
            ("bn", nn.BatchNorm2d(stem_channels)),
            ("relu", nn.ReLU()),
        ]))
        stage_modules = []
        prev = stem_channels
        for channels, blocks, stride in stages:
            layer = []
            for b in range(blocks):
                layer.append(BasicBlock(prev, channels, stride if b == 0 else 1))
                prev = channels
            stage_modules.append(nn.Sequential(*layer))
        self.stages = nn.Sequential(*stage_modules)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.drop = nn.Sequential(*dropout_or_none(dropout))
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages, pool, classifier."""
        x = self.stages(self.stem(x))
        return self.fc(self.drop(self.flatten(self.pool(x))))


@register_model("resnet")
def build_resnet(spec: ModelSpec, in_channels: int, num_classes: int,
                 input_size: int) -> ResNet:
    """ResNet factory: ``spec.depth`` in 18, 20, 32, 44, 56, 110; ``spec.width`` multiplies
    every stage's channels (1 = the standard network)."""
    check_depth(spec, DEPTHS)
    w = spec.width
    if spec.depth == 18:
        stages = [(64 * w, 2, 1), (128 * w, 2, 2), (256 * w, 2, 2), (512 * w, 2, 2)]
        return ResNet(in_channels, num_classes, 64 * w, stages, spec.dropout)
    n = (spec.depth - 2) // 6
    stages = [(16 * w, n, 1), (32 * w, n, 2), (64 * w, n, 2)]
    return ResNet(in_channels, num_classes, 16 * w, stages, spec.dropout)

"""VGG-11 and VGG-16 with batch norm (Simonyan & Zisserman 2015, configs A and D), for small
images.

The convolution stack is the standard one: 3x3 convs (padding 1) each followed by BN and ReLU,
2x2 max-pools between groups, channels 64..512 x ``spec.width`` (width 1 = the standard network,
~9.2M parameters for VGG-11 and ~14.7M for VGG-16, which is slow on a CPU). The classifier is
small-image style: global average pool and a single ``nn.Linear`` (the ImageNet network's three
4096-wide layers would hold most of the parameters for a 1x1 map).

The five pools would take a 28x28 input below 1x1 (28, 14, 7, 3, 1, -); a pool is left out when
the map is already 1x1, decided once at construction from ``input_size``, so the module
structure is fixed. Convs have no bias (BN follows); conv weights use He (fan-out) normal init.
``spec.dropout`` > 0 adds an ``nn.Dropout`` before the classifier.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from qgen.config import ModelSpec
from qgen.models.registry import check_depth, dropout_or_none, register_model

# Channel counts per conv; "M" = 2x2 max-pool.
CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG features (``features.conv<i>``, ``bn<i>``, ``relu<i>``, ``pool<j>``), global
    average pool and the ``fc`` classifier (the logits layer)."""

    def __init__(self, in_channels: int, num_classes: int, config: list[int | str],
                 width: int, input_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []
        prev, size, n_conv, n_pool = in_channels, input_size, 0, 0
        for item in config:
            if item == "M":
                if size >= 2:  # never pool a 1x1 map away
                    n_pool += 1
                    layers.append((f"pool{n_pool}", nn.MaxPool2d(2)))
                    size //= 2
                continue
            channels = int(item) * width
            n_conv += 1
            layers += [
                (f"conv{n_conv}", nn.Conv2d(prev, channels, 3, padding=1, bias=False)),
                (f"bn{n_conv}", nn.BatchNorm2d(channels)),
                (f"relu{n_conv}", nn.ReLU()),
            ]
            prev = channels
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.drop = nn.Sequential(*dropout_or_none(dropout))
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features, global average pool, classifier."""
        return self.fc(self.drop(self.flatten(self.pool(self.features(x)))))


@register_model("vgg")
def build_vgg(spec: ModelSpec, in_channels: int, num_classes: int, input_size: int) -> VGG:
    """VGG factory: ``spec.depth`` 11 or 16 (with BN); ``spec.width`` multiplies the channels
    (1 = standard 64..512)."""
    check_depth(spec, tuple(CONFIGS))
    return VGG(in_channels, num_classes, CONFIGS[spec.depth], spec.width, input_size,
               spec.dropout)

"""Network-in-Network (NiN) of Jiang et al. 2020 / Dziugaite et al. 2020, the study's main model.

``spec.depth`` blocks, each ``conv3x3 (stride 2) -> BN -> ReLU -> conv1x1 -> BN -> ReLU ->
conv1x1 -> BN -> ReLU`` with ``25 * spec.width`` channels, then a head ``conv1x1 ->
num_classes -> BN -> ReLU -> global average pool``. This follows the public reference
(nitarshan/robust-generalization-measures, ``data/generation/models.py``), including what looks
odd there, because the study's numbers are comparable to the reference only if the network is:

- convolutions keep their bias even though BN follows (it changes parameter counts and the
  norm-based measures, so we keep it);
- the head has BN and ReLU *after* the class projection, so logits are non-negative;
- PyTorch's default initialization (no custom init).

Differences we keep on purpose: the head ends in ``nn.Flatten`` (the reference calls
``squeeze()``, which drops the batch dimension of a batch of one); optional ``nn.Dropout`` after
each block (``spec.dropout``; absent when 0, so the default model is the reference one); each
ReLU is its own module (the reference shares one in-place ReLU), so hooks and activation
quantizers can tell the positions apart.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from qgen.config import ModelSpec
from qgen.models.registry import dropout_or_none, register_model

BASE_WIDTH = 25  # channels per unit of spec.width, as in the reference sweeps


class NiNBlock(nn.Sequential):
    """One NiN block: a strided 3x3 conv that halves the map, then two 1x1 convs; BN+ReLU after
    each. ``dropout`` > 0 appends an ``nn.Dropout``."""

    def __init__(self, in_channels: int, channels: int, dropout: float = 0.0) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)),
            ("bn1", nn.BatchNorm2d(channels)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(channels, channels, 1)),
            ("bn2", nn.BatchNorm2d(channels)),
            ("relu2", nn.ReLU()),
            ("conv3", nn.Conv2d(channels, channels, 1)),
            ("bn3", nn.BatchNorm2d(channels)),
            ("relu3", nn.ReLU()),
        ]
        layers += [("drop", m) for m in dropout_or_none(dropout)]
        super().__init__(OrderedDict(layers))


class NiN(nn.Module):
    """NiN with ``depth`` blocks of ``25 * width`` channels; output: (batch, num_classes) logits.

    Module names: ``blocks.<i>.conv1..conv3`` and ``head.conv`` (the logits layer).
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, width: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        channels = BASE_WIDTH * width
        self.blocks = nn.Sequential(*[
            NiNBlock(in_channels if i == 0 else channels, channels, dropout)
            for i in range(depth)
        ])
        self.head = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(channels, num_classes, 1)),
            ("bn", nn.BatchNorm2d(num_classes)),
            ("relu", nn.ReLU()),
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks, then the head."""
        return self.head(self.blocks(x))


@register_model("nin")
def build_nin(spec: ModelSpec, in_channels: int, num_classes: int, input_size: int) -> NiN:
    """NiN factory: ``spec.depth`` blocks (any >= 1; a map of 1x1 stays 1x1 under the strided
    conv, so no input size is too small), ``25 * spec.width`` channels."""
    return NiN(in_channels, num_classes, spec.depth, spec.width, spec.dropout)

"""Quantized Conv2d and Linear: the float layer plus an LSQ weight and input-activation quantizer.

``QuantConv2d`` / ``QuantLinear`` subclass ``nn.Conv2d`` / ``nn.Linear``, so code that looks
for convolutions still finds them, and keep ``.weight`` as the latent float weight that the
optimizer updates. The forward quantizes the layer *input* with ``a_quant`` and the weight
with ``w_quant`` (either may be None: full precision) and then runs the float layer's own
functional call, so with quantizers disabled the computation is the float layer's, bit for bit.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from qgen.quant.lsq import LSQQuantizer


def _make_quantizers(layer: QuantConv2d | QuantLinear, w_bits: int | None, a_bits: int | None,
                     per_channel: bool, a_signed: bool | None, positivity: str) -> None:
    layer.w_quant = None
    layer.a_quant = None
    where = (layer.weight.device, layer.weight.dtype)  # steps live with the weight
    if w_bits is not None:
        out_channels = layer.weight.shape[0]
        layer.w_quant = LSQQuantizer(w_bits, signed=True, per_channel=per_channel, ch_axis=0,
                                     num_channels=out_channels, role="weight",
                                     positivity=positivity).to(*where)
        layer.w_quant.init_from(layer.weight)
    if a_bits is not None:
        layer.a_quant = LSQQuantizer(a_bits, signed=a_signed, role="activation",
                                     positivity=positivity).to(*where)


class _QuantMixin:
    """What both quantized layers share: ``quantized_weight`` and the float-layer copy."""

    weight: nn.Parameter
    w_quant: LSQQuantizer | None
    a_quant: LSQQuantizer | None

    def quantized_weight(self) -> Tensor:
        """The dequantized weight the forward uses (``.weight`` itself without a quantizer)."""
        if self.w_quant is None:
            return self.weight
        return self.w_quant(self.weight)

    def quantized_input(self, x: Tensor) -> Tensor:
        """The layer input after the activation quantizer (``x`` itself without one)."""
        return x if self.a_quant is None else self.a_quant(x)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with LSQ quantizers on its weight (``w_quant``) and input (``a_quant``).

    Build one from a float layer with :meth:`from_float` (it shares the float layer's weight and
    bias Parameters). ``per_channel`` gives one weight step per output channel.
    """

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_bits: int | None, a_bits: int | None,
                   per_channel: bool = False, a_signed: bool | None = None,
                   positivity: str = "abs") -> QuantConv2d:
        """Wrap ``conv``: same hyperparameters, the same weight/bias Parameter objects."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta",
                  dtype=conv.weight.dtype)
        new.weight = conv.weight
        new.bias = conv.bias
        _make_quantizers(new, w_bits, a_bits, per_channel, a_signed, positivity)
        new.train(conv.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        """Quantize input and weight, then the float convolution."""
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with LSQ quantizers on its weight (``w_quant``) and input (``a_quant``).

    The activation step's gradient scale counts features per example as all elements of the
    input but the batch dimension (tokens × features for a (batch, tokens, dim) input).
    """

    @classmethod
    def from_float(cls, linear: nn.Linear, w_bits: int | None, a_bits: int | None,
                   per_channel: bool = False, a_signed: bool | None = None,
                   positivity: str = "abs") -> QuantLinear:
        """Wrap ``linear``: same shape, the same weight/bias Parameter objects."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device="meta", dtype=linear.weight.dtype)
        new.weight = linear.weight
        new.bias = linear.bias
        _make_quantizers(new, w_bits, a_bits, per_channel, a_signed, positivity)
        new.train(linear.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        """Quantize input and weight, then the float linear map."""
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

"""LSQ quantization-aware training (Esser et al. 2020): the quantizer, quantized layers, and
putting them into any model.

Prepare → train → export::

    model = quantize_model(build_model(...), QuantSpec(w_bits=2, a_bits=2))
    opt = torch.optim.SGD(param_groups(model, weight_decay=5e-4), lr=0.01, momentum=0.9)
    ...train as usual (activation steps start on the first batch)...
    export_quantized(model, "model.int.safetensors")      # int8 codes + steps
    load_quantized("model.int.safetensors", quantize_model(build_model(...), spec))

``lsq`` holds the autograd Function and :class:`LSQQuantizer`; ``modules`` the quantized
Conv2d/Linear; ``model`` the swap and the helpers; ``export`` the integer file format.
"""

from qgen.quant.export import export_quantized, load_quantized
from qgen.quant.lsq import (
    LSQQuantizer,
    lsq_fake_quant,
    lsq_fake_quant_ops,
    lsq_init_step,
    qrange,
    step_eps,
)
from qgen.quant.model import (
    freeze_steps,
    layer_bits,
    param_groups,
    quant_layers,
    quant_report,
    quantize_model,
    quantizers,
    set_quantizers_enabled,
    step_parameters,
)
from qgen.quant.modules import QuantConv2d, QuantLinear

__all__ = [
    "LSQQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "export_quantized",
    "freeze_steps",
    "layer_bits",
    "load_quantized",
    "lsq_fake_quant",
    "lsq_fake_quant_ops",
    "lsq_init_step",
    "param_groups",
    "qrange",
    "quant_layers",
    "quant_report",
    "quantize_model",
    "quantizers",
    "set_quantizers_enabled",
    "step_eps",
    "step_parameters",
]

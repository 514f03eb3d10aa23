"""Model-level LSQ: swap a float model's Conv2d/Linear layers for quantized ones, and the
helpers around that (listing, enabling, freezing, optimizer groups, a per-layer report).

Policy (:class:`~qgen.config.QuantSpec`), applied in this order to every ``nn.Conv2d`` and
``nn.Linear``:

1. the spec's ``w_bits`` / ``a_bits`` (None = no quantizer of that kind);
2. the first and the last such layer (first sees the network input, last makes the logits;
   by the order the layers run in on an example input when one is given, else by
   ``named_modules()`` order, which a zoo network need not follow):
   '8bit' sets each quantized kind to 8 bits (LSQ's choice; a kind the spec leaves in full
   precision stays so, so 'w4afp' gives 'w8afp' there), 'fp' removes both quantizers,
   'same' keeps the spec's bits;
3. ``overrides``: (fnmatch pattern on the module name, w_bits, a_bits), later ones win.

Every Conv2d/Linear becomes a :class:`QuantConv2d`/:class:`QuantLinear`, even one left in full
precision, so :func:`quant_layers` lists all of them and the report says which are quantized.
Weight steps are started from the weights present at swap time: load float weights *before*
calling :func:`quantize_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn

from qgen.config import QuantSpec
from qgen.errors import QgenError
from qgen.quant.lsq import LSQQuantizer
from qgen.quant.modules import QuantConv2d, QuantLinear

QUANT_TYPES = (QuantConv2d, QuantLinear)


def layer_bits(name: str, spec: QuantSpec, is_first: bool,
               is_last: bool) -> tuple[int | None, int | None]:
    """(w_bits, a_bits) of layer ``name`` under ``spec`` (policy in the module docstring)."""
    w, a = spec.w_bits, spec.a_bits
    if is_first or is_last:
        if spec.first_last == "8bit":
            w = None if w is None else 8
            a = None if a is None else 8
        elif spec.first_last == "fp":
            w = a = None
    for pattern, ow, oa in spec.overrides:
        if fnmatch(name, pattern):
            w, a = ow, oa
    return w, a


def _float_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            raise QgenError(f"quantize_model: {name or 'model'} is an nn.MultiheadAttention, whose "
                            "projections run as functional calls that cannot be quantized; "
                            "write attention with nn.Linear layers")
        if isinstance(m, QUANT_TYPES):
            raise QgenError(f"quantize_model: {name or 'model'} is already quantized; "
                            "quantize a float model once")
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if type(m) not in (nn.Conv2d, nn.Linear):
                raise QgenError(f"quantize_model: {name or 'model'} is a "
                                f"{type(m).__name__}; only plain nn.Conv2d and nn.Linear "
                                "layers can be swapped for quantized ones")
            layers.append((name, m))
    return layers


def execution_order(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """The names of ``model``'s nn.Conv2d / nn.Linear layers in the order they first run on
    ``example_input`` (one forward pass in eval mode without gradients; the model's mode is
    restored and nothing it holds changes). Layers that do not run are left out."""
    order: list[str] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(_m: nn.Module, _inp: Any, _out: Any, name: str = name) -> None:
                if name not in order:
                    order.append(name)
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


def quantize_model(model: nn.Module, spec: QuantSpec,
                   act_signed: Mapping[str, bool] | None = None,
                   example_input: torch.Tensor | None = None) -> nn.Module:
    """Replace every nn.Conv2d / nn.Linear of ``model`` by its quantized version, in place.

    The new layers share the old layers' weight and bias Parameters. ``act_signed`` maps
    fnmatch patterns on layer names to a forced input signedness (otherwise decided on the
    first batch: signed when it holds a negative value). ``example_input`` (a batch the model
    accepts) finds the first and last layer by the order the layers run in (see
    :func:`execution_order`). Returns ``model`` (or the new layer when ``model`` itself is a
    Conv2d/Linear).

    >>> from qgen.config import QuantSpec
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    >>> net = quantize_model(net, QuantSpec(w_bits=2, a_bits=2, first_last="same"))
    >>> [(n, m.w_quant.bits) for n, m in quant_layers(net)]
    [('0', 2), ('3', 2)]
    """
    if not isinstance(spec, QuantSpec):
        raise QgenError(f"quantize_model: spec must be a QuantSpec, got {type(spec).__name__}")
    layers = _float_layers(model)
    if not layers:
        raise QgenError("quantize_model: the model has no nn.Conv2d or nn.Linear layer")
    per_channel = spec.granularity == "channel"
    first, last = layers[0][0], layers[-1][0]
    if example_input is not None and id(model) not in {id(m) for _, m in layers}:
        ran = execution_order(model, example_input)
        if ran:
            first, last = ran[0], ran[-1]
    replaced: dict[int, nn.Module] = {}
    for name, layer in layers:
        w_bits, a_bits = layer_bits(name, spec, name == first, name == last)
        signed = None
        for pattern, forced in (act_signed or {}).items():
            if fnmatch(name, pattern):
                signed = bool(forced)
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        replaced[id(layer)] = cls.from_float(layer, w_bits, a_bits, per_channel, signed,
                                             spec.step_positivity)
    if id(model) in replaced:
        return replaced[id(model)]
    # Walk every parent (not named_modules, which skips a layer registered twice).
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replaced:
                parent._modules[child_name] = replaced[id(child)]
    return model


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """The quantized Conv2d/Linear layers of ``model``, in ``named_modules()`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)]


def quantizers(model: nn.Module) -> list[tuple[str, LSQQuantizer]]:
    """Every :class:`LSQQuantizer` of ``model`` with its name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LSQQuantizer)]


def set_quantizers_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch all quantizers on or off (off: the model computes the float model exactly)."""
    for _, q in quantizers(model):
        q.enabled = bool(enabled)


def freeze_steps(model: nn.Module, frozen: bool = True) -> None:
    """Turn ``requires_grad`` off (or back on) for every step size, e.g. for measures that
    perturb or differentiate only the weights."""
    for _, q in quantizers(model):
        q.step.requires_grad_(not frozen)


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The step-size Parameters of ``model``."""
    return [q.step for _, q in quantizers(model)]


def param_groups(model: nn.Module, weight_decay: float,
                 step_weight_decay: bool = False) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the model's other parameters with ``weight_decay``, the step
    sizes with no decay unless ``step_weight_decay`` (LSQ does not decay them). Parameters
    with ``requires_grad`` off are left out; empty groups are dropped.
    """
    step_ids = {id(p) for p in step_parameters(model)}
    others, steps = [], []
    for p in model.parameters():
        if p.requires_grad:
            (steps if id(p) in step_ids else others).append(p)
    groups = [{"name": "weights", "params": others, "weight_decay": weight_decay},
              {"name": "steps", "params": steps,
               "weight_decay": weight_decay if step_weight_decay else 0.0}]
    return [g for g in groups if g["params"]]


def _step_value(q: LSQQuantizer | None) -> float | list[float] | None:
    if q is None or not q.initialized:
        return None
    values = q.effective_step().cpu().tolist()
    return values if q.per_channel else float(values)


def quant_report(model: nn.Module) -> list[dict[str, Any]]:
    """Per quantized layer: name, kind, w_bits, a_bits, a_signed, granularity, w_step, a_step
    (the steps in use, max(|s|, eps): floats, a list per channel, or None before an
    activation's first batch)."""
    rows = []
    for name, layer in quant_layers(model):
        wq, aq = layer.w_quant, layer.a_quant
        rows.append({
            "name": name,
            "kind": "conv" if isinstance(layer, QuantConv2d) else "linear",
            "w_bits": None if wq is None else wq.bits,
            "a_bits": None if aq is None else aq.bits,
            "a_signed": None if aq is None else aq.signed,
            "granularity": None if wq is None else ("channel" if wq.per_channel else "tensor"),
            "w_step": _step_value(wq),
            "a_step": _step_value(aq),
            "enabled": all(q.enabled for q in (wq, aq) if q is not None),
        })
    return rows

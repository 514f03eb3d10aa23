"""Which parameters the measures perturb and count, and how a model is prepared for them.

One selector, :func:`select_parameters`, decides the parameter set; the perturbation searches
add noise to exactly these tensors and the bounds (‖w‖², ‖w−w0‖², ω, magnitude sums) are
computed over exactly these tensors, so the perturbed set is always the set the bound counts.

:func:`prepare_model` turns a trained model (or the same architecture holding the initial
weights w0) into the network the measures see:

- a private copy in eval mode on the device (the caller's model is never touched);
- quantized models (layers of :mod:`qgen.quant` carrying LSQ quantizers):
  'latent' keeps every quantizer active and the latent float weights as the perturbed values;
  'dequantized' writes each layer's dequantized weight into ``.weight`` and disables its
  weight quantizer (activation quantizers stay active, so the network computes the same
  function); in both modes step sizes are frozen (no gradient, never perturbed);
- BatchNorm folded into the preceding layer when ``bn='fold'`` (and kept as a γ = 1, β = 0
  layer whose γ and β can be perturbed when ``bn='fold_keep'``, the reference code's way).

Applying the same preparation to w0 gives the reference point of the distance terms in the
same coordinates as w (folded with w0's BN statistics, dequantized with w0's step sizes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from qgen.errors import QgenError
from qgen.measures.bnfold import FoldReport, fold_batchnorm
from qgen.measures.settings import MeasureSpec
from qgen.quant import QuantConv2d, QuantLinear, quant_layers, quantizers

#: modules whose ``weight`` is a matrix/kernel: what 'weights' selects and the layerwise
#: norms (spectral, Frobenius, path) are taken over. Quantized layers subclass these.
MATRIX_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def quantized_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """(name, layer) of every quantized Conv2d/Linear that carries a weight or activation
    quantizer (layers left in full precision by the first/last policy are not listed)."""
    return [(n, m) for n, m in quant_layers(model)
            if m.w_quant is not None or m.a_quant is not None]


def _active_weight_quantizer(layer: QuantConv2d | QuantLinear) -> bool:
    return layer.w_quant is not None and layer.w_quant.enabled


@dataclass
class ParamSet:
    """The selected parameters of a prepared model, in ``named_parameters`` order.

    ``tensors`` are the live parameters (perturbed in place); ``matrix`` marks the
    conv/linear weight tensors; ``owners`` holds each tensor's module.
    """

    names: list[str]
    tensors: list[Tensor]
    matrix: list[bool]
    owners: list[nn.Module]

    @property
    def numel(self) -> int:
        """ω: the number of selected scalars."""
        return sum(t.numel() for t in self.tensors)

    def values(self) -> list[Tensor]:
        """Detached copies of the current values."""
        return [t.detach().clone() for t in self.tensors]


def select_parameters(model: nn.Module, which: str) -> ParamSet:
    """The parameter set of measures.md choice 3.

    'weights': the ``weight`` of every conv/linear layer (quantized subclasses included);
    'all': every parameter except quantizer step sizes (frozen in both quantized modes).
    """
    if which not in ("weights", "all"):
        raise QgenError(f"measures.params: must be one of weights, all; got {which!r}")
    frozen = {id(q.step) for _, q in quantizers(model)}
    out = ParamSet([], [], [], [])
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen or id(p) in frozen:
                continue
            seen.add(id(p))
            is_matrix = isinstance(module, MATRIX_MODULES) and p_name == "weight"
            if which == "weights" and not is_matrix:
                continue
            out.names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
            out.tensors.append(p)
            out.matrix.append(is_matrix)
            out.owners.append(module)
    if not out.tensors:
        raise QgenError(f"measures.params={which!r} selects no parameter of "
                        f"{type(model).__name__}")
    return out


@dataclass
class Prepared:
    """A prepared model, its selected parameters and what preparation did."""

    model: nn.Module
    params: ParamSet
    quantized: bool
    fold: FoldReport
    notes: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def _dequantize_weights(model: nn.Module) -> int:
    count = 0
    for _, layer in quantized_layers(model):
        if _active_weight_quantizer(layer):
            layer.weight.copy_(layer.quantized_weight().detach())
            layer.w_quant.enabled = False
            count += 1
    return count


def prepare_model(model: nn.Module, spec: MeasureSpec, device: str | torch.device = "cpu",
                  state: Mapping[str, Tensor] | None = None) -> Prepared:
    """A private, eval-mode copy of ``model`` prepared as ``spec`` says (see module doc).

    With ``state`` (e.g. the weights at initialization), the copy loads it first, so w0 goes
    through the same transformation as w. Only the selected parameters require gradients.
    """
    work = copy.deepcopy(model)
    if state is not None:
        try:
            work.load_state_dict(dict(state), strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]  # one line: torch's message has several
            raise QgenError(f"w0 does not match the model's state_dict ({first})") from exc
    work = work.to(device).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    qlayers = quantized_layers(work)
    has_wq = any(_active_weight_quantizer(m) for _, m in qlayers)
    notes: dict[str, Any] = {"quant_layers": len(qlayers)}
    if spec.quant_mode == "dequantized":
        notes["dequantized_layers"] = _dequantize_weights(work)
    if spec.bn in ("fold", "fold_keep"):
        if spec.quant_mode == "latent" and has_wq:
            raise QgenError(f"measures.bn={spec.bn!r} with quant_mode='latent' would change "
                            "the weights the quantizers see; use bn='eval' or "
                            "quant_mode='dequantized'")
        report = fold_batchnorm(work, keep=spec.bn == "fold_keep")
    else:
        report = FoldReport((), ())
    notes["active_weight_quantizers"] = sum(_active_weight_quantizer(m)
                                            for _, m in quantized_layers(work))
    params = select_parameters(work, spec.params)
    for p in params.tensors:
        p.requires_grad_(True)
    return Prepared(work, params, bool(qlayers), report, notes)


def reference_values(model: nn.Module, spec: MeasureSpec, w0: Mapping[str, Tensor],
                     names: list[str], device: str | torch.device = "cpu") -> list[Tensor]:
    """w0 in the coordinates of the prepared model: the values of ``names`` after the same
    preparation applied to a copy holding ``w0``."""
    prep = prepare_model(model, spec, device, state=w0)
    by_name = dict(zip(prep.params.names, prep.params.tensors, strict=True))
    missing = [n for n in names if n not in by_name]
    if missing:
        raise QgenError(f"w0: no value for parameter {missing[0]!r} after preparation")
    return [by_name[n].detach().clone() for n in names]

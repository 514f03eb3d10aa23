"""Folding eval-mode BatchNorm into the convolution or linear layer that feeds it.

In eval mode a BatchNorm is the affine map ``y = scale * (x - mean) + beta`` with
``scale = gamma / sqrt(var + eps)``, so a conv (or linear) whose only consumer is that
BatchNorm can absorb it: ``W' = scale * W`` (per output channel) and
``b' = scale * (b - mean) + beta``; the BatchNorm becomes an identity. The network computes
the same logits (up to rounding), with fewer, differently scaled parameters: measures.md's
choice 4 ('fold') and what the public reference code does before it measures anything.

Conv -> BN pairs are found on a ``torch.fx`` trace of the model's forward, so the pairing
follows data flow rather than module order; conv/linear/BN modules (and quantized subclasses)
are kept as leaves of the trace.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from qgen.errors import QgenError

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class FoldReport:
    """What folding did: the folded (layer, BN) name pairs and the BNs left unfolded."""

    folded: tuple[tuple[str, str], ...]
    unfolded: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {"folded": [list(p) for p in self.folded], "unfolded": list(self.unfolded)}


class _LeafTracer(fx.Tracer):
    """Keeps conv/linear/BN (and their quantized subclasses) as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (*_FOLDABLE, _BatchNorm)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@torch.no_grad()
def _fold_pair(layer: nn.Module, bn: _BatchNorm) -> None:
    var = bn.running_var
    mean = bn.running_mean
    gamma = bn.weight if bn.affine else torch.ones_like(var)
    beta = bn.bias if bn.affine else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    weight = layer.weight
    shape = (-1,) + (1,) * (weight.dim() - 1)
    weight.mul_(scale.view(shape).to(weight.dtype))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
    new_bias = (scale * (bias - mean) + beta).to(weight.dtype)
    if layer.bias is None:
        # conv/linear register 'bias' as an (absent) parameter, so assigning works.
        layer.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)
    else:
        layer.bias.copy_(new_bias)


@torch.no_grad()
def _neutralize(bn: _BatchNorm) -> None:
    """γ = 1, β = 0, running mean 0 and variance 1: what the reference code's ``_reparam``
    leaves in place of a folded BatchNorm (it then computes x / sqrt(1 + eps))."""
    if bn.affine:
        bn.weight.fill_(1.0)
        bn.bias.fill_(0.0)
    bn.running_mean.fill_(0.0)
    bn.running_var.fill_(1.0)


def fold_batchnorm(model: nn.Module, keep: bool = False) -> FoldReport:
    """Fold every eval-mode BatchNorm that directly follows a conv/linear into it, in place.

    A pair is folded only when the layer's output feeds nothing but the BatchNorm and each
    module is called once; the BatchNorm is replaced by ``nn.Identity``, or with ``keep``
    left in place with γ = 1, β = 0, mean 0 and variance 1 (the public reference code's
    ``_reparam``: its γ and β stay parameters, so a perturbation of every parameter moves
    them too). BatchNorms without running statistics, or placed elsewhere (e.g.
    pre-activation), stay and are reported. Raises :class:`QgenError` when the model has
    BatchNorms but cannot be traced.
    """
    bns = [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if not bns:
        return FoldReport((), ())
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # fx raises many kinds of errors on untraceable code
        raise QgenError(f"bn='fold': cannot trace {type(model).__name__} to find conv->BN "
                        f"pairs ({type(exc).__name__}: {exc}); use bn='eval'") from exc
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            continue
        layer = modules[src.target]
        ok = (isinstance(layer, _FOLDABLE) and len(src.users) == 1 and calls[src.target] == 1
              and calls[node.target] == 1 and bn.track_running_stats
              and bn.running_var is not None)
        if ok:
            _fold_pair(layer, bn)
            if keep:
                _neutralize(bn)
            else:
                _set_submodule(model, node.target, nn.Identity())
            folded.append((src.target, node.target))
    done = {b for _, b in folded}
    return FoldReport(tuple(folded), tuple(b for b in bns if b not in done))


class FoldedTwin:
    """A BN-folded copy of a model that is re-synced from the original before each use.

    Evaluating perturbed networks is the measures' hot loop; an eval-mode BatchNorm is one
    more pass over every activation, so the searches evaluate this twin instead: ``sync()``
    recomputes each folded layer from the original's *current* (possibly perturbed) layer
    and BatchNorm parameters (W' = scale·W, b' = scale·(b − mean) + beta) and copies every
    other parameter, so the twin computes the original's function up to rounding.
    """

    def __init__(self, model: nn.Module) -> None:
        self.source = model
        self.twin = copy.deepcopy(model)
        report = fold_batchnorm(self.twin)
        self.report = report
        src = dict(model.named_modules())
        dst = dict(self.twin.named_modules())
        self.pairs = [(src[layer], src[bn], dst[layer]) for layer, bn in report.folded]
        folded = {layer for layer, _ in report.folded}
        skip = {f"{layer}.{p}" for layer in folded for p in ("weight", "bias")}
        src_params = dict(model.named_parameters())
        self.copies = [(src_params[n], p) for n, p in self.twin.named_parameters()
                       if n not in skip]

    @property
    def useful(self) -> bool:
        """True when at least one BatchNorm was folded (else the twin saves nothing)."""
        return bool(self.pairs)

    @torch.no_grad()
    def sync(self) -> nn.Module:
        """Bring the twin up to date with the source's parameters; return the twin."""
        for layer, bn, out in self.pairs:
            gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
            beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
            scale = gamma / torch.sqrt(bn.running_var + bn.eps)
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            torch.mul(layer.weight, scale.view(shape), out=out.weight.data)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
            out.bias.data.copy_(scale * (bias - bn.running_mean) + beta)
        for src, dst in self.copies:
            dst.data.copy_(src)
        return self.twin

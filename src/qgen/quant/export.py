"""Export a quantization-aware-trained model as integers + scales, and load it back.

The file is safetensors (no pickle). It holds the model's ``state_dict`` with one change: the
latent float weight ``<layer>.weight`` of every weight-quantized layer is replaced by its
integer codes ``<layer>.weight_int`` (int8; every LSQ weight code fits since bits <= 8), next
to the step ``<layer>.w_quant.step``. Every step is stored as the step in use,
``max(|s|, eps)`` (positive). Activation steps (``<layer>.a_quant.step``), each
quantizer's signedness and initialized flag (``<layer>.*_quant._extra_state``: int8
[signed -1/0/1, initialized 0/1]), biases, BatchNorm and every other tensor are kept as they are.
The metadata records the format and each layer's bit widths, so a file that does not fit the
model is refused with a :class:`QgenError` instead of being loaded wrongly.

Loading rebuilds each weight as ``codes * step``; requantizing that gives the same codes, so the
rebuilt model's outputs equal the trained model's bit for bit (same device and threads).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from qgen.checkpoint import load_tensors, read_metadata, save_tensors
from qgen.errors import QgenError
from qgen.quant.lsq import broadcast_shape, effective_step
from qgen.quant.model import quant_layers, quantizers

FORMAT = "qgen-lsq-v1"
META_FORMAT = "qgen.format"
META_LAYERS = "qgen.layers"


def _layer_table(model: nn.Module) -> list[dict[str, object]]:
    table = []
    for name, layer in quant_layers(model):
        wq, aq = layer.w_quant, layer.a_quant
        table.append({
            "name": name,
            "shape": list(layer.weight.shape),
            "w_bits": None if wq is None else wq.bits,
            "per_channel": None if wq is None else wq.per_channel,
            "a_bits": None if aq is None else aq.bits,
        })
    return table


def export_quantized(model: nn.Module, path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``model``'s integer weights, steps and other tensors to ``path`` atomically.

    ``metadata``: extra string key/values stored in the file (keys starting 'qgen.' are
    reserved). All quantizers must be enabled: the export is the quantized model.
    """
    layers = quant_layers(model)
    if not layers:
        raise QgenError("export_quantized: the model has no quantized layers; "
                        "call quantize_model first")
    disabled = [n for n, q in quantizers(model) if not q.enabled]
    if disabled:
        raise QgenError(f"export_quantized: quantizer {disabled[0]} is disabled; the export is "
                        "the quantized model, so enable all quantizers first")
    meta: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise QgenError(f"export_quantized: metadata must map str to str; got {key!r}: "
                            f"{type(value).__name__}")
        if key.startswith("qgen."):
            raise QgenError(f"export_quantized: metadata key {key!r} is reserved (qgen.*)")
        meta[key] = value
    meta[META_FORMAT] = FORMAT
    meta[META_LAYERS] = json.dumps(_layer_table(model), separators=(",", ":"))

    tensors = dict(model.state_dict())
    for name, q in quantizers(model):  # the steps in use, max(|s|, eps): positive in the file
        tensors[f"{name}.step"] = q.effective_step()
    for name, layer in layers:
        if layer.w_quant is not None:
            prefix = f"{name}." if name else ""
            del tensors[prefix + "weight"]
            tensors[prefix + "weight_int"] = layer.w_quant.integer(layer.weight.detach())
    save_tensors(path, tensors, meta)


def load_quantized(path: str | Path, model: nn.Module) -> nn.Module:
    """Fill ``model`` (freshly built and ``quantize_model``'d, same architecture and spec)
    from an :func:`export_quantized` file; returns ``model``.

    A missing, corrupt or non-qgen file, or one whose layers, bit widths or shapes differ from
    ``model``'s, raises :class:`QgenError`.
    """
    path = Path(path)
    tensors = load_tensors(path)
    meta = read_metadata(path)
    if meta.get(META_FORMAT) != FORMAT:
        raise QgenError(f"{path}: not a qgen quantized export (format "
                        f"{meta.get(META_FORMAT)!r}, expected {FORMAT!r})")
    try:
        saved = json.loads(meta[META_LAYERS])
    except (KeyError, json.JSONDecodeError) as exc:
        raise QgenError(f"{path}: the layer table in the metadata is missing or damaged") from exc
    expected = _layer_table(model)
    if [r.get("name") for r in saved] != [r["name"] for r in expected]:
        raise QgenError(f"{path}: its quantized layers do not match the model's "
                        f"({len(saved)} in the file, {len(expected)} in the model)")
    for got, want in zip(saved, expected, strict=True):
        if got != want:
            diff = next(k for k in want if got.get(k) != want[k])
            raise QgenError(f"{path}: layer {want['name']!r} has {diff}={got.get(diff)!r} in "
                            f"the file but {want[diff]!r} in the model")

    for name, layer in quant_layers(model):
        wq = layer.w_quant
        if wq is None:
            continue
        prefix = f"{name}." if name else ""
        codes = tensors.pop(prefix + "weight_int", None)
        step = tensors.get(prefix + "w_quant.step")
        if codes is None or step is None:
            raise QgenError(f"{path}: layer {name!r} lacks its integer weights or step size")
        if codes.dtype != torch.int8 or tuple(codes.shape) != tuple(layer.weight.shape):
            raise QgenError(f"{path}: layer {name!r} integer weights are {codes.dtype} "
                            f"{tuple(codes.shape)}, expected int8 {tuple(layer.weight.shape)}")
        if tuple(step.shape) != tuple(wq.step.shape) or not bool(torch.isfinite(step).all()):
            raise QgenError(f"{path}: layer {name!r} has a bad weight step "
                            f"(shape {tuple(step.shape)}, expected {tuple(wq.step.shape)})")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < -wq.Qn or hi > wq.Qp:
            raise QgenError(f"{path}: layer {name!r} has codes in [{lo}, {hi}], outside the "
                            f"{wq.bits}-bit range [{-wq.Qn}, {wq.Qp}]")
        # Same product as the quantizer's forward: codes (as floats) times max(|step|, eps).
        s = effective_step(step.to(layer.weight.dtype))
        if wq.per_channel:
            s = s.view(broadcast_shape(codes.dim(), wq.ch_axis, s.numel()))
        tensors[prefix + "weight"] = codes.to(layer.weight.dtype) * s
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise QgenError(f"{path}: does not fit the model ({' '.join(first[:3])})") from exc
    return model

"""Models from the standard zoos: ``tv:<arch>`` (torchvision) and ``timm:<arch>`` (timm).

The ``vision`` extra (``pip install qgen[vision]``) brings torchvision, timm and Pillow; they
are imported only when a zoo model is built. A zoo model is built with random weights (its
library's initialization, drawn from torch's global generator, which the caller seeds) or
from a checkpoint file the user supplies (:func:`load_weights`); nothing is ever downloaded.

``ModelSpec`` fields for a zoo model:

- ``name``: ``tv:resnet18``, ``tv:resnet50``, ``tv:mobilenet_v2``,
  ``timm:deit_tiny_patch16_224``, ``timm:swin_tiny_patch4_window7_224``, … (any
  classification architecture of the installed library);
- ``options``: keyword arguments of the architecture's constructor (e.g. ``drop_path_rate``),
  except :data:`WEIGHTS_OPTION`, the SHA-256 of the checkpoint the run starts from (it is part
  of the run's identity; the file's path is not). ``depth`` and ``width`` must stay at their
  defaults (the architecture name fixes them), and ``dropout`` is timm's ``drop_rate``.

timm vision transformers are built for the data's input size (``img_size``); torchvision
networks take any size their pooling allows. Zoo networks take RGB input (``data.channels:
3`` converts grey images); a timm network takes other channel counts (``in_chans``).
"""

from __future__ import annotations

import difflib
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from qgen.checkpoint import state_mismatch
from qgen.config import ModelSpec
from qgen.errors import QgenError

#: the option that names the checkpoint a run starts from, by content
WEIGHTS_OPTION = "weights_sha256"
#: the architectures the presets, tests and docs use (any other of the library works too)
EXAMPLES = ("tv:resnet18", "tv:resnet50", "tv:mobilenet_v2", "timm:deit_tiny_patch16_224",
            "timm:swin_tiny_patch4_window7_224")
PREFIXES = ("tv", "timm")
#: checkpoint suffixes read with ``torch.load(weights_only=True)``; anything else: safetensors
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_INSTALL = "install the vision extra: pip install 'qgen[vision]'"


def is_zoo_name(name: str) -> bool:
    """Whether ``name`` is of the form ``tv:<arch>`` or ``timm:<arch>``."""
    prefix, sep, arch = name.partition(":")
    return bool(sep) and prefix in PREFIXES and bool(arch)


def _define_detection_ops() -> None:
    # torchvision's import registers fake kernels for its nms/qnms detection ops without
    # checking that its compiled extension loaded; a torchvision wheel built for another
    # torch build (e.g. PyPI's CUDA wheel beside the CPU-only torch) then fails to import.
    # Declaring the two schemas (no kernels: calling them still fails) lets the pure-Python
    # parts, the model definitions qgen uses, import; classification never calls them.
    if not hasattr(torch.ops, "torchvision") or not hasattr(torch.ops.torchvision, "nms"):
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(lib)


_KEEP: list[Any] = []


def import_torchvision() -> ModuleType:
    """``torchvision``, or a one-line QgenError saying how to install it.

    A torchvision whose compiled operators do not match the installed torch (see
    :func:`_define_detection_ops`) is still imported for its model definitions."""
    try:
        import torchvision
    except ImportError as exc:
        raise QgenError(f"torchvision is not installed: {_INSTALL}") from exc
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[mod]
        _define_detection_ops()
        import torchvision
    return torchvision


def import_timm() -> ModuleType:
    """``timm`` (after torchvision, which it imports), or a one-line QgenError."""
    import_torchvision()
    try:
        import timm
    except ImportError as exc:
        raise QgenError(f"timm is not installed: {_INSTALL}") from exc
    return timm


def architectures(prefix: str) -> list[str]:
    """The classification architectures ``prefix`` ('tv' or 'timm') offers here, sorted."""
    if prefix == "tv":
        tv = import_torchvision()
        return sorted(tv.models.list_models(module=tv.models))
    return sorted(import_timm().list_models())


def _constructor_kwargs(spec: ModelSpec) -> dict[str, Any]:
    if spec.depth != ModelSpec.depth or spec.width != ModelSpec.width:
        raise QgenError(f"model.depth/width: {spec.name} is fixed by its name; leave depth and "
                        "width at their defaults and pass constructor arguments as "
                        "model.options")
    return {k: v for k, v in spec.options if k != WEIGHTS_OPTION}


def _check_arch(prefix: str, arch: str) -> None:
    known = architectures(prefix)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=6, cutoff=0.5) or known[:6]
        lib = "torchvision" if prefix == "tv" else "timm"
        raise QgenError(f"model.name: {prefix}:{arch} is not a {lib} "
                        f"classification architecture here; e.g. {', '.join(close)} "
                        f"({len(known)} in all)")


def _call(build: Callable[..., nn.Module], label: str, /, **kwargs: Any) -> nn.Module:
    try:
        return build(**kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shown = {k: v for k, v in kwargs.items() if k not in ("name", "model_name")}
        raise QgenError(f"{label}: cannot build with {shown}: {first}") from None


def build_zoo_model(spec: ModelSpec, in_channels: int, num_classes: int,
                    input_size: int) -> nn.Module:
    """A freshly initialized zoo network for (in_channels, input_size, input_size) inputs and
    ``num_classes`` outputs (see the module docstring)."""
    prefix, _, arch = spec.name.partition(":")
    kwargs = _constructor_kwargs(spec)
    _check_arch(prefix, arch)
    if prefix == "tv":
        if in_channels != 3:
            raise QgenError(f"{spec.name} takes 3-channel images, the data has {in_channels}; "
                            "set data.channels: 3")
        if spec.dropout:
            kwargs.setdefault("dropout", spec.dropout)
        tv = import_torchvision()
        return _call(tv.models.get_model, spec.name, name=arch, weights=None,
                     num_classes=num_classes, **kwargs)
    timm = import_timm()
    if spec.dropout:
        kwargs.setdefault("drop_rate", spec.dropout)
    kwargs = {"num_classes": num_classes, "in_chans": in_channels, **kwargs}
    if input_size != _timm_default_size(timm, arch) and "img_size" not in kwargs:
        try:  # transformers are built for the input size; convolutional networks take none
            return _call(timm.create_model, spec.name, model_name=arch, pretrained=False,
                         img_size=input_size, **kwargs)
        except QgenError as exc:
            if "img_size" not in str(exc) or "unexpected keyword" not in str(exc):
                raise
    return _call(timm.create_model, spec.name, model_name=arch, pretrained=False, **kwargs)


def _timm_default_size(timm: ModuleType, arch: str) -> int | None:
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
        return int(cfg.input_size[-1]) if cfg is not None else None
    except Exception:  # a library without the pretrained-config registry
        return None


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: safetensors, or a ``torch.save``d state_dict (``.pt``, ``.pth``,
    ``.bin``, ``.ckpt``) loaded with ``weights_only=True`` (no pickled code runs). A dict that
    holds the state_dict under ``state_dict``/``model`` is unwrapped, and a ``module.`` prefix
    (DataParallel) is dropped."""
    path = Path(path)
    if not path.is_file():
        raise QgenError(f"--weights: {path} is not a file")
    try:
        if path.suffix.lower() in TORCH_SUFFIXES:
            state: Any = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            state = load_file(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "a torch state_dict" if path.suffix.lower() in TORCH_SUFFIXES else "safetensors"
        raise QgenError(f"--weights: {path} does not read as {kind} ({first[:160]}); "
                        f"allowed: .safetensors, or {', '.join(TORCH_SUFFIXES)} state_dicts "
                        "saved with torch.save") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise QgenError(f"--weights: {path} holds no state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Load the checkpoint ``path`` into the float ``model`` (strictly: every tensor, same
    shapes), or a one-line QgenError saying how it does not match ``name``."""
    state = read_state_dict(path)
    expected = model.state_dict()
    problem = state_mismatch(expected, state)
    if problem:
        raise QgenError(f"--weights: {path} does not match {name} ({problem})")
    model.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected})

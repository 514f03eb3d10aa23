"""The model registry: model name -> factory, filled by the :func:`register_model` decorator.

A factory has the signature ``factory(spec, in_channels, num_classes, input_size)`` and returns
a freshly initialized ``torch.nn.Module``. Weights are drawn from torch's global RNG, which the
caller seeds; nothing here touches the RNG state itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn

from qgen.config import ModelSpec
from qgen.errors import QgenError


class ModelFactory(Protocol):
    """What :func:`register_model` expects: build one model for one dataset shape."""

    def __call__(self, spec: ModelSpec, in_channels: int, num_classes: int,
                 input_size: int) -> nn.Module: ...


_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that adds a factory to the registry under ``name``.

    >>> @register_model("tiny")  # doctest: +SKIP
    ... def build_tiny(spec, in_channels, num_classes, input_size):
    ...     return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, num_classes))
    """

    def decorate(factory: ModelFactory) -> ModelFactory:
        # Two factories under one name is a programming error, not a user one.
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def build_model(spec: ModelSpec, in_channels: int, num_classes: int,
                input_size: int) -> nn.Module:
    """Build the model ``spec`` names for inputs of shape (in_channels, input_size, input_size).

    Raises :class:`QgenError` for an unknown name, or for depth/width/input-size values the
    model does not support (the message names the field and the allowed values).
    """
    from qgen.models import zoo

    factory = _REGISTRY.get(spec.name)
    if factory is None and zoo.is_zoo_name(spec.name):
        factory = zoo.build_zoo_model
    if factory is None:
        check_model_name(spec.name)
    for field, value, lo in (("in_channels", in_channels, 1), ("num_classes", num_classes, 2),
                             ("input_size", input_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise QgenError(f"{spec.name}: {field} must be an integer >= {lo}, got {value!r}")
    return factory(spec, in_channels, num_classes, input_size)


def check_model_name(name: str) -> None:
    """A QgenError unless ``name`` is a registered model or an architecture of an installed
    zoo (``tv:<arch>``, ``timm:<arch>``, see :mod:`qgen.models.zoo`)."""
    from qgen.models import zoo

    if name in _REGISTRY:
        return
    if zoo.is_zoo_name(name):
        prefix, _, arch = name.partition(":")
        zoo._check_arch(prefix, arch)
        return
    raise QgenError(f"model.name: unknown model {name!r}; allowed: {', '.join(model_names())}, "
                    "or tv:<arch> / timm:<arch> from torchvision or timm (qgen[vision])")


def check_depth(spec: ModelSpec, allowed: tuple[int, ...]) -> None:
    """Raise :class:`QgenError` unless ``spec.depth`` is one of ``allowed``."""
    if spec.depth not in allowed:
        raise QgenError(f"model.depth: {spec.name} allows {', '.join(map(str, allowed))}; "
                        f"got {spec.depth}")


def dropout_or_none(p: float) -> list[nn.Module]:
    """``[nn.Dropout(p)]`` when ``p > 0``, else ``[]`` (no module at all, so a dropout-free
    model has exactly the layers of the reference architecture)."""
    return [nn.Dropout(p)] if p > 0 else []

"""The compiled training path (``train.compile``): the model's forward and backward through
``torch.compile`` (inductor), with LSQ's quantizers traced as plain ops
(:func:`qgen.quant.lsq.lsq_fake_quant_ops`, the same math as the eager autograd Function) so
that inductor fuses each fake quantization into the layers around it instead of making it a
separate pass over memory.

- The first batch runs eagerly while any quantizer still has to start its step from the data
  (LSQ's initialization is data-dependent Python); every later batch runs compiled.
- A batch of a shape not seen before (the last, shorter batch of an epoch) compiles once
  more; :attr:`CompiledForward.compile_s` sums the wall time of those first steps (the
  compilation plus one ordinary step each), recorded per run in ``result.json``.
- Across the runs of a sweep, inductor's on-disk caches (FX graph and AOTAutograd caches,
  under ``$TORCHINDUCTOR_CACHE_DIR``) let a later run of the same architecture skip most of
  the compilation.
- Where compilation cannot work (no C++ compiler for the CPU backend, no Triton for CUDA, an
  op inductor rejects) the run fails with one line; the default path stays eager.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from qgen.errors import QgenError
from qgen.quant.lsq import LSQQuantizer

_HINT = "set train.compile: false to train eagerly"


def check_compile_available(device: str | torch.device) -> None:
    """A one-line QgenError unless ``torch.compile``'s inductor backend can build code for
    ``device`` here: a C++ compiler (``$CXX``, ``c++``, ``g++`` or ``clang++``) for the CPU,
    Triton for CUDA."""
    device = torch.device(device)
    if device.type == "cpu":
        names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
        if not any(n and shutil.which(n) for n in names):
            raise QgenError("train.compile: torch.compile's CPU backend needs a C++ compiler "
                            f"(g++ or clang++, or $CXX) and none was found; {_HINT}")
    elif device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            raise QgenError("train.compile: torch.compile's CUDA backend needs Triton "
                            f"(pip install triton); {_HINT}") from None
    else:
        raise QgenError(f"train.compile: compiles for cpu and cuda, not {device.type}; {_HINT}")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "…") if len(text) > 200 else (text or type(exc).__name__)


class CompiledForward:
    """``model``'s forward compiled for training (see the module docstring); call it like the
    model. :meth:`step` runs one forward, loss and backward, compiling on a new shape."""

    def __init__(self, model: nn.Module, device: str | torch.device) -> None:
        check_compile_available(device)
        self.model = model
        self.compiled = torch.compile(model, dynamic=False)
        self.shapes: set[tuple[int, ...]] = set()
        self.compile_s = 0.0
        self.eager_steps = 0

    def _ready(self) -> bool:
        return all(m.initialized or not m.enabled for m in self.model.modules()
                   if isinstance(m, LSQQuantizer))

    def step(self, xb: Tensor, loss_of: Callable[[Callable[[Tensor], Tensor]], Tensor],
             backward: Callable[[Tensor], None]) -> Tensor:
        """``loss = loss_of(forward)`` (``forward`` the compiled model, or the model itself
        while quantizers start their steps), then ``backward(loss)`` when the loss is finite;
        returns the loss. A step on a new input shape compiles (its time is counted), and a
        compilation error becomes one QgenError line."""
        ready = self._ready()
        shape = tuple(xb.shape)
        new = ready and shape not in self.shapes
        t0 = time.perf_counter()
        try:
            loss = loss_of(self.compiled if ready else self.model)
            if torch.isfinite(loss):
                backward(loss)  # the backward graph compiles on its first call
        except QgenError:
            raise
        except Exception as exc:  # inductor's and dynamo's errors have no common base
            if not new:
                raise
            raise QgenError(f"train.compile: torch.compile failed ({type(exc).__name__}: "
                            f"{_first_line(exc)}); {_HINT}") from None
        if not ready:
            self.eager_steps += 1
        elif new:
            self.compile_s += time.perf_counter() - t0
            self.shapes.add(shape)
        return loss

    def report(self) -> dict[str, Any]:
        """What ``result.json`` records under ``compile``."""
        return {"compile_s": self.compile_s, "graphs": len(self.shapes),
                "eager_steps": self.eager_steps, "backend": "inductor"}

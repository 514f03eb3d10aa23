"""Benchmark of qgen's LSQ quantizer on the CPU.

1. The quantizer op, forward + backward, against PyTorch's fused learnable fake-quant kernel
   ``torch._fake_quantize_learnable_per_tensor_affine`` (same scale, zero point 0, the same
   [-Qn, Qp] range, ``grad_factor`` = the LSQ gradient scale) on the weights and layer inputs
   of NiN (depth 2, width 2; 28 px 1 channel and 32 px 3 channels) and ResNet-20 (32 px),
   batch 128. Target: qgen / torch <= 1.0.
2. One SGD training step (forward, backward, optimizer) of W4A4 (first/last layer 8-bit)
   against full precision for NiN and ResNet-20 at 32x32, batch 128, on the same random
   batches. Target: W4A4 / FP <= 1.25.
3. The compiled path (``train.compile``, torch.compile with inductor): eager FP, eager W4A4,
   compiled FP and compiled W4A4 steps side by side. Goals: compiled W4A4 / compiled FP
   <= 1.10 and compiled W4A4 / eager FP <= 1.0.

Timings alternate between the two sides repeat by repeat, so that load from other processes
on a shared machine hits both alike; medians are reported.

    python bench/bench_quant.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from _common import cpu_name  # bench/ is on sys.path when run as a script
from qgen.config import ModelSpec, QuantSpec
from qgen.models import build_model
from qgen.quant import (
    LSQQuantizer,
    lsq_fake_quant,
    lsq_init_step,
    param_groups,
    qrange,
    quantize_model,
    quantizers,
)

BITS = 4



def layer_tensors(spec: ModelSpec, channels: int, size: int,
                  batch: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(label, shape, kind) of every Conv2d/Linear weight and input of a model."""
    model = build_model(spec, channels, 10, size)
    found: list[tuple[str, tuple[int, ...], str]] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            first = not found
            found.append((f"{name}.weight", tuple(m.weight.shape), "weight"))

            def hook(mod, args, _name=name, _first=first):
                found.append((f"{_name}.input", tuple(args[0].shape),
                              "act_signed" if _first else "act_unsigned"))
            hooks.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(torch.randn(batch, channels, size, size))
    for h in hooks:
        h.remove()
    return found


def timed_alternating(fns: list[Callable[[], None]], repeats: int, sync: Callable[[], None],
                      warmup: int = 2) -> list[float]:
    """Median seconds of each function, run in turn repeat by repeat (``sync`` waits for the
    device)."""
    for _ in range(warmup):
        for f in fns:
            f()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for f, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            f()
            sync()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def naive_lsq(v: torch.Tensor, s: torch.Tensor, qn: int, qp: int, g: float) -> torch.Tensor:
    """LSQ written the usual unfused way, as separate autograd ops (the gradient-scale and
    round-STE detach tricks): the same values and gradients, many more passes and buffers."""
    s = s * g + (s - s * g).detach()
    x = torch.clamp(v / s, -qn, qp)
    return (x + (torch.round(x) - x).detach()) * s


def naive_forward(quantizer: LSQQuantizer, v: torch.Tensor) -> torch.Tensor:
    """An LSQQuantizer forward that uses :func:`naive_lsq` (for the comparison only)."""
    if not quantizer.enabled:
        return v
    if not quantizer.initialized:
        quantizer.init_from(v)
    return naive_lsq(v, quantizer.step, quantizer.Qn, quantizer.Qp, quantizer.grad_scale(v))


def lsq_reference_step_grad(v: torch.Tensor, s: float, qn: int, qp: int, g: float,
                            go: torch.Tensor) -> float:
    """The LSQ step gradient written out in float64 (clip test on v/s itself)."""
    x = v.detach().double() / s
    inside = (x >= -qn) & (x <= qp)
    d = torch.where(inside, torch.round(x) - x, torch.where(x < -qn, -float(qn), float(qp)))
    return float((go.double() * d).sum() * g)


def bench_ops(batch: int, repeats: int, device: torch.device, sync: Callable[[], None],
              keep_masks: bool = False) -> None:
    """Part 1: quantizer op, qgen vs torch's learnable fake-quant kernel."""
    print(f"\n## 1. LSQ op forward+backward, {BITS}-bit per-tensor, batch {batch}, {device} "
          f"(median of {repeats}, microseconds)")
    print("step-grad error: relative to the float64 LSQ formula. torch's kernel tests the clip "
          "range on round(v/s), so values in (Qp, Qp+0.5] pass its STE; that (not precision) is "
          "why its step gradient can differ from LSQ's on activations.")
    cases = [("nin-28px", ModelSpec("nin", 2, 2), 1, 28),
             ("nin-32px", ModelSpec("nin", 2, 2), 3, 32),
             ("resnet20", ModelSpec("resnet", 20, 1), 3, 32)]
    seen: set[tuple[tuple[int, ...], str]] = set()
    rows = []
    gen = torch.Generator().manual_seed(0)
    for model_label, spec, ch, size in cases:
        for label, shape, kind in layer_tensors(spec, ch, size, batch):
            if (shape, kind) in seen:
                continue
            seen.add((shape, kind))
            v = torch.randn(shape, generator=gen)
            if kind == "act_unsigned":
                v = v.relu_()
            signed = kind != "act_unsigned"
            qn, qp = qrange(BITS, signed)
            n = v.numel() if kind == "weight" else v.numel() // v.shape[0]
            g = 1.0 / math.sqrt(n * qp)
            v = v.to(device).requires_grad_(True)
            s = lsq_init_step(v, qp).requires_grad_(True)
            s_t = s.detach().reshape(1).clone().requires_grad_(True)
            zp = torch.zeros(1, device=device)
            go = torch.randn(shape, generator=gen).to(device)

            # as LSQQuantizer chooses by default: activations recompute on the CPU
            recompute = kind != "weight" and device.type == "cpu" and not keep_masks

            def run_qgen(v=v, s=s, qn=qn, qp=qp, g=g, go=go, rc=recompute):
                v.grad = s.grad = None
                lsq_fake_quant(v, s, qn, qp, g, recompute=rc).backward(go)

            def run_torch(v=v, s_t=s_t, qn=qn, qp=qp, g=g, go=go, zp=zp):
                v.grad = s_t.grad = None
                torch._fake_quantize_learnable_per_tensor_affine(v, s_t, zp, -qn, qp,
                                                                 g).backward(go)

            run_qgen()
            run_torch()
            ref = lsq_reference_step_grad(v, s.item(), qn, qp, g, go)
            err_q = abs(s.grad.item() - ref) / max(abs(ref), 1e-12)
            err_t = abs(s_t.grad.item() - ref) / max(abs(ref), 1e-12)
            tq, tt = timed_alternating([run_qgen, run_torch], repeats, sync)
            rows.append((tq, tt))
            print(f"{model_label:9s} {label:32s} {str(shape):18s} qgen {tq * 1e6:8.0f}  "
                  f"torch {tt * 1e6:8.0f}  ratio {tq / tt:5.2f}   step-grad error qgen "
                  f"{err_q:.0e} torch {err_t:.0e}")
    total_q = sum(r[0] for r in rows)
    total_t = sum(r[1] for r in rows)
    geo = math.exp(statistics.mean(math.log(r[0] / r[1]) for r in rows))
    print(f"overall: sum of medians qgen {total_q * 1e3:.1f} ms, torch {total_t * 1e3:.1f} ms, "
          f"ratio {total_q / total_t:.2f}; geometric mean of per-size ratios {geo:.2f} "
          f"(target <= 1.0)")


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
               batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """One SGD step on the next batch through ``forward`` (a model or its compiled form)."""
    x, y = next(batches)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(forward(x), y).backward()
    opt.step()


def fp_and_quantized(batch: int, device: torch.device
                     ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                list[tuple[str, nn.Module, nn.Module]]]:
    """Four random 32×32×3 batches, and for NiN (depth 2, width 2) and ResNet-20 a float
    model with its W4A4 copy (first/last layer 8-bit), on ``device``."""
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(batch, 3, 32, 32, generator=gen).to(device),
                torch.randint(0, 10, (batch,), generator=gen).to(device)) for _ in range(4)]
    nets = []
    for label, spec in (("nin d2 w2", ModelSpec("nin", 2, 2)),
                        ("resnet20", ModelSpec("resnet", 20, 1))):
        torch.manual_seed(0)
        fp = build_model(spec, 3, 10, 32).to(device)
        nets.append((label, fp, quantize_model(copy.deepcopy(fp),
                                               QuantSpec(w_bits=BITS, a_bits=BITS))))
    return batches, nets


def bench_train(batch: int, steps: int, device: torch.device, sync: Callable[[], None],
                keep_masks: bool = False) -> None:
    """Part 2: SGD step time, W4A4 vs full precision (and vs an unfused LSQ)."""
    mode = "activations keep masks" if keep_masks else "default recompute rule"
    print(f"\n## 2. training step, W{BITS}A{BITS} (first/last 8-bit) vs FP, 32x32x3, "
          f"batch {batch}, {device}, {mode} (median of {steps}, milliseconds)")
    print("'unfused' is the same LSQ written as separate autograd ops (naive_lsq), for scale.")
    batches, nets = fp_and_quantized(batch, device)
    for label, fp, q in nets:
        if keep_masks:
            for _, quantizer in quantizers(q):
                quantizer.recompute = False
        naive = quantize_model(copy.deepcopy(fp), QuantSpec(w_bits=BITS, a_bits=BITS))
        for _, quantizer in quantizers(naive):
            quantizer.forward = functools.partial(naive_forward, quantizer)
        steps_fns = []
        for model in (fp, q, naive):
            opt = torch.optim.SGD(param_groups(model, 0.0), lr=0.01, momentum=0.9)
            steps_fns.append(functools.partial(train_step, model, opt, itertools.cycle(batches)))
        t_fp, t_q, t_naive = timed_alternating(steps_fns, steps, sync)
        print(f"{label:10s} FP {t_fp * 1e3:8.1f}  qgen W{BITS}A{BITS} {t_q * 1e3:8.1f}  "
              f"ratio {t_q / t_fp:5.2f} (target <= 1.25)   unfused {t_naive * 1e3:8.1f}  "
              f"ratio {t_naive / t_fp:5.2f}")


def bench_compiled(batch: int, steps: int, device: torch.device,
                   sync: Callable[[], None]) -> None:
    """Part 3: the compiled training path (``train.compile``): eager FP, eager W4A4, compiled
    FP and compiled W4A4 SGD steps side by side, after a first eager step that starts the LSQ
    steps and a compiled warm-up (compile time reported separately)."""
    print(f"\n## 3. compiled training step (torch.compile, inductor), W{BITS}A{BITS} (first/last "
          f"8-bit) and FP, 32x32x3, batch {batch}, {device} (median of {steps}, milliseconds)")
    batches, nets = fp_and_quantized(batch, device)
    for label, fp, q in nets:
        models = {"eager FP": fp, "eager W4A4": q, "compiled FP": copy.deepcopy(fp),
                  "compiled W4A4": copy.deepcopy(q)}
        fns, compile_s = [], {}
        for name, model in models.items():
            opt = torch.optim.SGD(param_groups(model, 0.0), lr=0.01, momentum=0.9)
            train_step(model, opt, iter(batches))  # LSQ starts its steps eagerly
            fwd: nn.Module = model
            if name.startswith("compiled"):
                fwd = torch.compile(model, dynamic=False)
                t0 = time.perf_counter()
                train_step(fwd, opt, iter(batches))  # compiles forward and backward
                sync()
                compile_s[name] = time.perf_counter() - t0
            fns.append(functools.partial(train_step, fwd, opt, itertools.cycle(batches)))
        times = dict(zip(models, timed_alternating(fns, steps, sync), strict=True))
        cells = "  ".join(f"{k} {v * 1e3:7.1f}" for k, v in times.items())
        print(f"{label:10s} {cells}")
        cq, cf, ef = times["compiled W4A4"], times["compiled FP"], times["eager FP"]
        print(f"{'':10s} compiled W4A4 / compiled FP {cq / cf:5.2f} (goal <= 1.10)   "
              f"compiled W4A4 / eager FP {cq / ef:5.2f} (goal <= 1.0)   "
              f"eager W4A4 / eager FP {times['eager W4A4'] / ef:5.2f}   compile s: "
              f"FP {compile_s['compiled FP']:.1f}, W4A4 {compile_s['compiled W4A4']:.1f}")


def main() -> None:
    """Parse flags, print the environment, run the parts."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--op-repeats", type=int, default=30)
    ap.add_argument("--train-steps", type=int, default=15)
    ap.add_argument("--part", choices=("ops", "train", "compiled", "all"), default="all")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--keep-masks", action="store_true",
                    help="activations keep mask and step factor from the forward instead of "
                         "recomputing them (the default on the CPU), for comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device} "
          f"({where}), CPU {cpu_name()}, {os.cpu_count()} logical CPUs, "
          f"python {platform.python_version()}")
    if args.part in ("ops", "all"):
        bench_ops(args.batch, args.op_repeats, device, sync, args.keep_masks)
    if args.part in ("train", "all"):
        bench_train(args.batch, args.train_steps, device, sync, args.keep_masks)
    if args.part in ("compiled", "all"):
        bench_compiled(args.batch, args.train_steps, device, sync)


if __name__ == "__main__":
    main()

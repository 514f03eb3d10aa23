"""Fine-tuning throughput of a zoo model: torchvision's ResNet-18, full precision against LSQ
at 4 bits (first and last layer 8-bit), the same generated batches, side by side.

The prepared GPU check of issue 13: on a GPU, run

    python bench/bench_zoo.py --device cuda --steps 300 --batch 128 --precision bf16

and it reports images/s of training steps (forward, backward, SGD) for FP and QAT after a
warm-up, alternating the two models in blocks so that clock and thermal drift hit both, with
the card's name; ``--compile`` adds the compiled path. It first checks correctness: the QAT
model's logits equal those of its exported integer weights (``export_quantized`` /
``load_quantized``), and both models' losses fall on a fixed batch. On the CPU use a small
``--size`` (the default 224 takes seconds per step on two cores).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from _common import cpu_name  # bench/ is on sys.path when run as a script
from qgen.config import ModelSpec, QuantSpec
from qgen.models.zoo import build_zoo_model, import_torchvision
from qgen.quant import export_quantized, load_quantized, param_groups, quantize_model


def train_block(model: nn.Module, forward: nn.Module, opt: torch.optim.Optimizer,
                batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int, amp: str,
                device: torch.device) -> tuple[float, float]:
    """``steps`` SGD steps cycling over ``batches``; (seconds, last loss)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for i in range(steps):
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
    sync()
    return time.perf_counter() - t0, loss.item()


def main() -> None:
    """Parse flags, check correctness, time FP and QAT side by side."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per model")
    ap.add_argument("--block", type=int, default=25, help="steps per alternating block")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tv = import_torchvision()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device {device} ({where}); torch {torch.__version__}, torchvision {tv.__version__},"
          f" python {platform.python_version()}, threads {torch.get_num_threads()}")
    print(f"tv:resnet18, {args.size}px, batch {args.batch}, {args.classes} classes, "
          f"{args.precision}, W{args.bits}A{args.bits} (first/last 8-bit)"
          + (", compiled" if args.compile else ""))

    torch.manual_seed(0)
    fp = build_zoo_model(ModelSpec("tv:resnet18"), 3, args.classes, args.size).to(device)
    q = quantize_model(copy.deepcopy(fp), QuantSpec(w_bits=args.bits, a_bits=args.bits),
                       example_input=torch.zeros(1, 3, args.size, args.size, device=device))
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device),
                torch.randint(0, args.classes, (args.batch,), generator=gen).to(device))
               for _ in range(4)]
    runs = {}
    for name, model in (("FP", fp), (f"W{args.bits}A{args.bits}", q)):
        model.train()
        opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9)
        forward = torch.compile(model) if args.compile else model
        # correctness: the loss on one fixed batch falls over a few steps (starts LSQ steps)
        _, first = train_block(model, model, opt, batches[:1], 1, args.precision, device)
        t_warm, last = train_block(model, forward, opt, batches[:1], 10, args.precision, device)
        print(f"{name}: loss on a fixed batch {first:.3f} -> {last:.3f} after 10 steps "
              f"({'falls' if last < first else 'DOES NOT FALL'}); warm-up {t_warm:.1f} s")
        runs[name] = (model, forward, opt)
    qmodel = runs[f"W{args.bits}A{args.bits}"][0].eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.safetensors"
        export_quantized(qmodel, path)
        loaded = load_quantized(path, copy.deepcopy(qmodel)).to(device).eval()
        with torch.no_grad():
            same = torch.equal(qmodel(batches[0][0][:8]), loaded(batches[0][0][:8]))
    print(f"export round trip: logits {'bit-identical' if same else 'DIFFER'}")
    qmodel.train()

    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(max(1, args.steps // args.block)):
        for name, (model, forward, opt) in runs.items():
            seconds, _ = train_block(model, forward, opt, batches, args.block, args.precision,
                                     device)
            times[name].append(args.block * args.batch / seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, ips in med.items():
        print(f"{name:>6}: {ips:9.1f} images/s (median of {len(times[name])} blocks of "
              f"{args.block} steps)")
    names = list(med)
    print(f"QAT / FP time per image: {med[names[0]] / med[names[1]]:.2f}")


if __name__ == "__main__":
    main()

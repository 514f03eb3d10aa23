"""The `dziugaite2020` preset beside the reference code's σ search, on one trained run.

The reference (Dziugaite et al. 2020, public code nitarshan/robust-generalization-measures,
``data/generation/measures.py``) is restated here from its description:

- reparameterize: every BatchNorm is folded into the conv before it (in module order) and
  left in the model with γ = 1, β = 0, running mean 0 and variance 1 (a conv without a bias
  gets a zero one first: the reference's convs have biases);
- each Monte-Carlo draw deep-copies the model and adds noise to *every* parameter, std σ²
  (plain) or σ²|p|² + ε² with ε = 1e-3 (magnitude-aware), from one generator seeded with
  10348628753 + seed that runs through all draws;
- each draw's accuracy is measured on the whole training set; the search is a bisection on
  [0, 2], 15 steps, 10 draws per σ, stopping at the first σ whose |mean accuracy − train
  accuracy| is within 0.01 of 0.1.

qgen runs its `dziugaite2020` preset with the same seeds (its own seeded per-draw streams and
early stop). The script prints σ and σ′ for each seed on each side, their ranges, each side's
mean accuracy drop at the other side's σ′ midpoint, and the time of each side.

    python bench/bench_dziugaite_reference.py RUN_DIR [--seeds 0 1 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from _common import cpu_name  # bench/ is on sys.path when run as a script
from qgen.measures import MeasureSpec, compute_measures
from qgen.store import Resources, RunDir
from qgen.train import load_run_data, load_run_model

BIG_NUMBER = 10348628753
MAG_EPS = 1e-3


@torch.no_grad()
def reference_reparam(model: nn.Module) -> nn.Module:
    """BatchNorm folded into the preceding conv, kept as γ = 1, β = 0 (module order)."""
    model = copy.deepcopy(model)

    def visit(module: nn.Module, prev: nn.Module | None) -> nn.Module | None:
        for child in module.children():
            prev = visit(child, prev)
            if isinstance(child, nn.Conv2d):
                prev = child
                if child.bias is None:
                    child.bias = nn.Parameter(torch.zeros(child.out_channels))
            elif isinstance(child, nn.BatchNorm2d):
                scale = child.weight / (child.running_var + child.eps).sqrt()
                prev.bias.copy_(child.bias + scale * (prev.bias - child.running_mean))
                prev.weight.mul_(scale.view(-1, *([1] * (prev.weight.dim() - 1))))
                child.weight.fill_(1)
                child.bias.fill_(0)
                child.running_mean.fill_(0)
                child.running_var.fill_(1)
        return prev

    visit(model, None)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


@torch.no_grad()
def noisy_accuracies(model: nn.Module, x: Tensor, y: Tensor, sigma: float, magnitude: bool,
                     draws: int, rng: torch.Generator) -> list[float]:
    """The reference's draws: a deep copy per draw, noise on every parameter (std σ², or
    σ²|p|² + ε² magnitude-aware) from the one generator ``rng``, whole-set accuracy."""
    accs = []
    for _ in range(draws):
        noisy = copy.deepcopy(model)
        for p in noisy.parameters():
            std = (sigma**2 * p.abs() ** 2 + MAG_EPS**2) if magnitude else \
                torch.full_like(p, sigma**2)
            p.add_(torch.normal(torch.zeros_like(p), std, generator=rng))
        accs.append(accuracy(noisy, x, y))
    return accs


def reference_sigma(model: nn.Module, x: Tensor, y: Tensor, acc: float, seed: int,
                    magnitude: bool) -> float:
    """The reference bisection (module docstring)."""
    rng = torch.Generator().manual_seed(BIG_NUMBER + seed)
    lower, upper, sigma = 0.0, 2.0, 1.0
    for _ in range(15):
        sigma = (lower + upper) / 2
        accs = noisy_accuracies(model, x, y, sigma, magnitude, 10, rng)
        displacement = abs(statistics.fmean(accs) - acc)
        if abs(displacement - 0.1) < 0.01:
            break
        if displacement > 0.1:
            upper = sigma
        else:
            lower = sigma
    return sigma


def mean_drop(model: nn.Module, x: Tensor, y: Tensor, acc: float, sigma: float,
              magnitude: bool, draws: int = 40) -> float:
    """Mean accuracy drop of the reference construction at σ over ``draws`` draws."""
    rng = torch.Generator().manual_seed(BIG_NUMBER + 999)
    return acc - statistics.fmean(noisy_accuracies(model, x, y, sigma, magnitude, draws, rng))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    splits = load_run_data(run, Resources())
    model = load_run_model(run, info=splits.info).eval()
    x, y = splits.train.take(torch.arange(len(splits.train)))
    y = y.long()
    print(f"# {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; run "
          f"{run.run_id}, {len(x)} training examples")

    ref_model = reference_reparam(model)
    acc = accuracy(model, x, y)
    print(f"train accuracy {acc:.4f} (reparameterized: {accuracy(ref_model, x, y):.4f})")
    rows: dict[str, dict[str, list[float]]] = {"σ": {}, "σ′": {}}
    times = {"reference": 0.0, "qgen": 0.0}
    for seed in args.seeds:
        t = time.perf_counter()
        rows["σ"].setdefault("reference", []).append(
            reference_sigma(ref_model, x, y, acc, seed, False))
        rows["σ′"].setdefault("reference", []).append(
            reference_sigma(ref_model, x, y, acc, seed, True))
        times["reference"] += time.perf_counter() - t
        t = time.perf_counter()
        spec = MeasureSpec.preset("dziugaite2020", seed=seed,
                                  names=("pacbayes.flatness", "pacbayes.mag.flatness"))
        res = compute_measures(model, run.weights("init"), splits.train, None, spec)
        times["qgen"] += time.perf_counter() - t
        rows["σ"].setdefault("qgen", []).append(res.diagnostics["search.pacbayes"]["value"])
        rows["σ′"].setdefault("qgen", []).append(
            res.diagnostics["search.pacbayes.mag"]["value"])
    print("| | seeds | reference code | qgen dziugaite2020 |")
    print("|---|---|---|---|")
    for name, by in rows.items():
        ref_s = ", ".join(f"{v:.4f}" for v in by["reference"])
        qgen_s = ", ".join(f"{v:.4f}" for v in by["qgen"])
        print(f"| {name} | {', '.join(map(str, args.seeds))} | {ref_s} | {qgen_s} |")
    for name, magnitude in (("σ", False), ("σ′", True)):
        r = statistics.median(rows[name]["reference"])
        q = statistics.median(rows[name]["qgen"])
        print(f"{name}: accuracy drop of the reference construction (40 draws) at the "
              f"reference median {r:.4f}: {mean_drop(ref_model, x, y, acc, r, magnitude):.3f}; "
              f"at qgen's median {q:.4f}: {mean_drop(ref_model, x, y, acc, q, magnitude):.3f}")
    print(f"time: reference {times['reference']:.1f} s, qgen {times['qgen']:.1f} s, ratio "
          f"{times['reference'] / times['qgen']:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark of qgen's measures on a trained NiN (depth 2, width 2, Fashion-MNIST 28 px).

1. The PAC-Bayes σ search, qgen against a straightforward baseline written the way the public
   reference code (Dziugaite et al. 2020) works: BN folded once (and kept as a γ = 1, β = 0
   layer that is perturbed too), then for every Monte-Carlo
   draw a ``copy.deepcopy`` of the model, noise added to every parameter, and an evaluation
   of the *whole* training set through a DataLoader; bisection on [0, 2], 15 steps, stop at
   |deviation − 0.1| < 0.01, 10 draws, std σ² (the ``dziugaite2020`` preset's settings).
   qgen runs the same preset twice: with its default seeded train subset (timed against the
   baseline) and on the full training set (so its σ is comparable with the baseline's).
   The noise streams differ, so the σ's are compared through the tolerance: each side's
   deviation is also evaluated at the other side's σ, and both should be 0.1 ± 0.01 (plus
   Monte-Carlo error). Target: baseline / qgen ≥ 5.
2. The time per model of the four flatness families (pacbayes, pacbayes.mag, sharpness,
   sharpness.mag) with the settings before issue 8 and with the current defaults, on the
   same model in the same run, per search, with each search's value, bracket, points, draws
   and standard error.

The model is trained inside the script on a Fashion-MNIST subset (or loaded from a run
directory with ``--run``). Timings are wall-clock on a possibly shared machine; the CPU
seconds of this process are printed beside them.

    python bench/bench_measures.py --train-subset 10000 --epochs 4 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from _common import cpu_name  # bench/ is on sys.path when run as a script
from qgen.config import DataSpec, ModelSpec, TrainSpec
from qgen.data import load_data
from qgen.measures import MeasureSpec, compute_measures
from qgen.measures.bnfold import fold_batchnorm
from qgen.measures.context import MeasureContext
from qgen.measures.pacbayes import pacbayes_deviation
from qgen.models import build_model

#: the measure defaults before issue 8 ("numbers you can trust"), for the time comparison
PREVIOUS_DEFAULTS = dict(search="bisect", deviation="absolute", bisect_lo=0.0, bisect_steps=15,
                         mc_draws=10, mc_stderr=0.0, mc_eval_examples=None,
                         sharpness_mag_radius="additive", ascent_keep="last")


# ------------------------------------------------------------------------------ baseline
@torch.no_grad()
def full_accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Train accuracy over the whole loader (batches moved to the model's device)."""
    device = next(model.parameters()).device
    correct = 0
    for xb, yb in loader:
        correct += int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
    return correct / len(loader.dataset)


def baseline_deviation(model: nn.Module, loader: DataLoader, acc: float, sigma: float,
                       draws: int, gen: torch.Generator) -> tuple[float, list[float]]:
    """The reference way: a deep copy per draw, std σ² on every parameter, full train set."""
    accs = []
    for _ in range(draws):
        noise = [torch.normal(0.0, sigma**2, p.shape, generator=gen).to(p.device)
                 for p in model.parameters()]
        perturbed = copy.deepcopy(model)
        with torch.no_grad():
            for p, n in zip(perturbed.parameters(), noise, strict=True):
                p.add_(n)
        accs.append(full_accuracy(perturbed, loader))
        del perturbed
    return abs(statistics.fmean(accs) - acc), accs


def baseline_sigma(model: nn.Module, x: Tensor, y: Tensor, seed: int, batch: int
                   ) -> tuple[float, list[tuple[float, float]], nn.Module, DataLoader, float]:
    """Bisection on [0, 2], 15 steps, tolerance 0.01 around 0.1, 10 draws (reference style)."""
    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded, keep=True)  # the reference keeps each BN as γ = 1, β = 0
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)
    acc = full_accuracy(folded, loader)
    gen = torch.Generator().manual_seed(seed)
    lower, upper, sigma = 0.0, 2.0, 1.0
    trace = []
    for _ in range(15):
        sigma = (lower + upper) / 2
        dev, _ = baseline_deviation(folded, loader, acc, sigma, 10, gen)
        trace.append((sigma, dev))
        if abs(dev - 0.1) < 0.01:
            break
        if dev > 0.1:
            upper = sigma
        else:
            lower = sigma
    return sigma, trace, folded, loader, acc


# --------------------------------------------------------------------------------- model
def get_model(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Tensor], Tensor, Tensor]:
    """A trained NiN with its initial state and training data (trained here, or a run dir)."""
    if args.run:
        from qgen.io import load_tensors
        from qgen.train import load_run_model, load_spec
        from qgen.train.run import INIT_FILE

        spec = load_spec(args.run)
        splits = load_data(spec.data)
        model = load_run_model(args.run, info=splits.info, device=args.device)
        return model, load_tensors(Path(args.run) / INIT_FILE), splits.train_x, splits.train_y
    from qgen.train import train_model

    splits = load_data(DataSpec(name="fashion-mnist", train_subset=args.train_subset,
                                test_subset=1000))
    torch.manual_seed(args.seed)
    model = build_model(ModelSpec(name="nin", depth=2, width=2), 1, 10, 28)
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    out = train_model(model, splits.train_x, splits.train_y,
                      TrainSpec(lr=args.lr, batch_size=64, max_epochs=args.epochs, seed=args.seed),
                      device=args.device)
    print(f"trained NiN-2x2 on {len(splits.train_y)} Fashion-MNIST images: {out.status}, "
          f"{out.epochs} epochs, {time.perf_counter() - t0:.0f} s")
    return model.eval(), w0, splits.train_x, splits.train_y


def timed(fn):  # noqa: ANN001, ANN201 - tiny helper
    """(result, wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    """Run both benchmarks and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a qgen run directory to load instead of training")
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=500, help="baseline DataLoader batch size")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-flatness", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
             else f"{torch.get_num_threads()} threads, {cpu_name()}")
    print(f"torch {torch.__version__}, {args.device}: {where}")
    model, w0, x, y = get_model(args)
    m = len(y)

    if not args.skip_baseline:
        # the preset evaluates the whole train set; the timed qgen run uses a 2,000 subset
        preset = MeasureSpec.preset("dziugaite2020", seed=args.seed, eval_subset=2000)
        print(f"\n[1] PAC-Bayes σ search, preset dziugaite2020, train set m = {m}")
        res_sub, t_sub, c_sub = timed(lambda: compute_measures(
            model, w0, x, y, preset, names=["pacbayes.flatness"], device=args.device))
        full = preset.replace(eval_subset=None)
        res_full, t_full, c_full = timed(lambda: compute_measures(
            model, w0, x, y, full, names=["pacbayes.flatness"], device=args.device))
        (s_base, trace, folded, loader, acc), t_base, c_base = timed(
            lambda: baseline_sigma(model, x, y, args.seed, args.batch))
        s_sub = res_sub.diagnostics["search.pacbayes"]["value"]
        s_full = res_full.diagnostics["search.pacbayes"]["value"]
        evals_sub = sum(len(t["samples"]) for t in res_sub.diagnostics["search.pacbayes"]["trace"])
        evals_full = sum(len(t["samples"])
                         for t in res_full.diagnostics["search.pacbayes"]["trace"])
        print(f"{'':28s}{'σ':>10s}{'steps':>7s}{'evals':>7s}{'wall s':>9s}{'cpu s':>9s}")
        rows = [("baseline (deepcopy, full)", s_base, len(trace), 10 * len(trace), t_base,
                 c_base),
                (f"qgen subset {res_sub.settings['eval_subset_size']}", s_sub,
                 len(res_sub.diagnostics["search.pacbayes"]["trace"]), evals_sub, t_sub, c_sub),
                ("qgen full set", s_full, len(res_full.diagnostics["search.pacbayes"]["trace"]),
                 evals_full, t_full, c_full)]
        for name, s, steps, ev, t, c in rows:
            print(f"{name:28s}{s:10.5f}{steps:7d}{ev:7d}{t:9.1f}{c:9.1f}")
        print(f"speed-up baseline / qgen subset: {t_base / t_sub:.1f}x wall, "
              f"{c_base / c_sub:.1f}x cpu;  baseline / qgen full: {t_base / t_full:.1f}x wall")
        # Cross-check: each side's deviation at the other's σ (same tolerance band).
        gen = torch.Generator().manual_seed(args.seed + 1)
        # The band: the tolerance plus two Monte-Carlo standard errors of the 10-draw mean
        # (the draws' accuracies vary far more than a binomial error on m examples).
        dev_b, accs_b = baseline_deviation(folded, loader, acc, s_full, 10, gen)
        ctx = MeasureContext(model, w0, x, y, full.replace(early_stop=False), args.device)
        dev_q, details = pacbayes_deviation(ctx, s_base, False, "bench.cross")
        ok = True
        for who, dev, accs, s in (("baseline", dev_b, accs_b, s_full),
                                  ("qgen", dev_q, details["samples"], s_base)):
            band = 0.01 + 2 * statistics.stdev(accs) / math.sqrt(len(accs))
            ok &= abs(dev - 0.1) < band
            print(f"{who} deviation at the other's σ = {s:.5f}: {dev:.4f} "
                  f"(target 0.1 ± {band:.4f})")
        verdict = "exactly equal" if s_base == s_full else ("yes" if ok else "NO")
        print(f"σ (baseline vs qgen full set) equal within the bisection tolerance: {verdict}")

    if not args.skip_flatness:
        names = ["pacbayes.*", "sharpness.*"]
        print("\n[2] time per model of the four flatness families: the settings before issue 8 "
              "(tolerance bisection, 10 draws, additive magnitude floor, last ascent iterate) "
              "against the current defaults, on the same model, one after the other")
        totals = {}
        for label, spec in (("previous", MeasureSpec(seed=args.seed, **PREVIOUS_DEFAULTS)),
                            ("current", MeasureSpec(seed=args.seed))):
            res, t, c = timed(lambda spec=spec: compute_measures(
                model, w0, x, y, spec, names=names, device=args.device))
            totals[label] = t
            shared = res.diagnostics["timings"]["shared"]
            print(f"-- {label}: total {t:.1f} s wall, {c:.1f} s cpu")
            for key in ("search.pacbayes", "search.pacbayes.mag", "search.sharpness",
                        "search.sharpness.mag"):
                s = res.diagnostics[key]
                se = s.get("value_stderr")
                draws = sum(t.get("draws", 0) for t in s["trace"])
                print(f"{key:24s} value {s['value']:.4e} "
                      f"[{s['bracket'][0]:.4e}, {s['bracket'][1]:.4e}]"
                      + (f" ± {se:.2e}" if se is not None else "")
                      + f"  points {len(s['trace']):2d}  draws {draws:4d}  "
                      f"saturation {s['saturation']!s:5s}  {shared[key]:6.1f} s")
        print(f"time per model, current / previous: {totals['current'] / totals['previous']:.2f}")


if __name__ == "__main__":
    main()

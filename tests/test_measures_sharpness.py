"""The worst-case search: ascent stays in its set (box or L2, plain or magnitude-aware) and
really ascends the loss."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qgen.measures import MeasureSpec
from qgen.measures.context import MeasureContext
from qgen.measures.perturb import Perturbation
from qgen.measures.sharpness import radii, worst_case


@pytest.fixture(scope="module")
def trained():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (150,), generator=gen)
    x = torch.randn(3, 10, generator=gen)[y] + 0.5 * torch.randn(150, 10, generator=gen)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), w0, x, y


def full_loss(ctx: MeasureContext) -> float:
    with torch.no_grad():
        return F.cross_entropy(ctx.model(ctx.x), ctx.y).item()


@pytest.mark.parametrize("kind", ["box", "l2"])
@pytest.mark.parametrize("magnitude", [False, True])
def test_ascent_stays_in_the_set_and_raises_the_loss(trained, kind, magnitude):
    net, w0, x, y = trained
    spec = MeasureSpec(sharpness_set=kind, ascent_steps=20, ascent_batch=150, eval_subset=None)
    ctx = MeasureContext(net, w0, x, y, spec)
    alpha = 0.3
    with Perturbation(ctx.prep.params) as pert:
        r = radii(pert.original, alpha, magnitude, spec.mag_eps)
        start, ascend = worst_case(ctx, r, pert, "t")
        pert.apply(start)
        loss_start = full_loss(ctx)
        _, u = ascend()
        pert.apply(u)
        loss_end = full_loss(ctx)
    scaled = [ui / ri for ui, ri in zip(u, r, strict=True)]
    if kind == "box":
        assert max(s.abs().max().item() for s in scaled) <= 1 + 1e-6
        # sign steps of 0.1 x 20 drive most coordinates onto the box's faces
        flat = torch.cat([s.reshape(-1) for s in scaled]).abs()
        assert (flat > 0.999).float().mean() > 0.5  # (dead ReLUs give zero-gradient rows)
    else:
        norm = torch.sqrt(sum(s.square().sum() for s in scaled)).item()
        assert norm == pytest.approx(1.0, abs=1e-5)  # ends on the ellipsoid's surface
    # ascent, not descent (the unit L2 ellipsoid is a far smaller set than the box)
    assert loss_end > (3.0 if kind == "box" else 1.2) * loss_start
    assert loss_end > full_loss(ctx)  # ... and above the unperturbed loss (now restored)


def test_magnitude_radius():
    w = [torch.tensor([0.0, -2.0, 0.5])]
    (r,) = radii(w, 0.1, True, 1e-3, "additive")
    assert torch.allclose(r, torch.tensor([1e-3, 0.201, 0.051]))
    (r,) = radii(w, 0.1, True, 1e-3, "scaled")  # the floor shrinks with alpha
    assert torch.allclose(r, torch.tensor([1e-4, 0.2001, 0.0501]))
    assert torch.equal(radii(w, 0.0, True, 1e-3, "scaled")[0], torch.zeros(3))
    (r,) = radii(w, 0.1, False, 1e-3)
    assert torch.equal(r, torch.full((3,), 0.1))

"""Tests of icefall.optim: Eden's formula by hand, Eve's update rules, round trips."""

import copy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icefall.optim import Eden, Eve  # noqa: E402


def _eden(lr=0.003, lr_batches=5000, lr_epochs=6):
    optimizer = Eve([torch.nn.Parameter(torch.zeros(3))], lr=lr)
    return optimizer, Eden(optimizer, lr_batches=lr_batches, lr_epochs=lr_epochs)


@pytest.mark.parametrize("batch, epoch, want", [
    (0, 0, 0.003),
    (5000, 0, 0.003 * 2**-0.25),           # batch == lr_batches: factor 2**-0.25
    (5000, 6, 0.003 * 2**-0.5),            # both at their knees
    (10000, 0, 0.003 * 5**-0.25),          # (1e8 + 2.5e7) / 2.5e7 = 5
    (0, 18, 0.003 * 10**-0.25),            # (324 + 36) / 36 = 10
    (15000, 12, 0.003 * 10**-0.25 * 5**-0.25),
])
def test_eden_formula(batch, epoch, want):
    optimizer, scheduler = _eden()
    scheduler.step_epoch(epoch)
    scheduler.step_batch(batch)
    assert scheduler.get_last_lr()[0] == pytest.approx(want, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)


def test_eden_counting_and_round_trip():
    optimizer, scheduler = _eden(lr=0.05, lr_batches=10, lr_epochs=2)
    assert scheduler.get_last_lr() == [0.05]
    for _ in range(10):
        scheduler.step_batch()
    scheduler.step_epoch()
    scheduler.step_epoch()
    assert (scheduler.batch, scheduler.epoch) == (10, 2)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.05 * 2**-0.5)

    state = scheduler.state_dict()
    optimizer2, scheduler2 = _eden(lr=0.05, lr_batches=10, lr_epochs=2)
    scheduler2.load_state_dict(state)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_eve_first_step_by_hand():
    """Step 1: Adam's bias-corrected update is lr * g / (|g| + eps); a matrix
    with rms > target_rms is also shrunk by (1 - weight_decay); one with
    smaller rms is not."""
    big = torch.nn.Parameter(torch.full((2, 3), 1.0))     # rms 1.0 > 0.1
    small = torch.nn.Parameter(torch.full((2, 3), 0.01))  # rms 0.01 < 0.1
    grad = torch.tensor([[1.0, -2.0, 0.5], [3.0, -0.1, 0.0]])
    big.grad, small.grad = grad.clone(), grad.clone()
    lr, wd, eps = 0.01, 1e-3, 1e-8
    Eve([big, small], lr=lr, weight_decay=wd, eps=eps).step()
    update = lr * grad / (grad.abs() + eps)
    torch.testing.assert_close(big.data, torch.full((2, 3), 1.0) * (1 - wd) - update)
    torch.testing.assert_close(small.data, torch.full((2, 3), 0.01) - update)


def test_eve_clamps_scalars():
    scale = torch.nn.Parameter(torch.tensor(1.99))
    optimizer = Eve([scale], lr=0.5)
    for _ in range(3):
        scale.grad = torch.tensor(-1.0)  # pushes upwards
        optimizer.step()
    assert scale.item() == 2.0


def test_eve_minimises_quadratic():
    torch.manual_seed(0)
    A = torch.randn(20, 8)
    b = A @ torch.randn(8) + 0.01 * torch.randn(20)  # optimum loss ~1e-4
    w = torch.nn.Parameter(torch.zeros(8))
    optimizer = Eve([w], lr=0.05, weight_decay=0.0)
    scheduler = Eden(optimizer, lr_batches=100, lr_epochs=1)

    def loss():
        return ((A @ w - b) ** 2).mean()

    start = loss().item()
    for _ in range(300):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
        scheduler.step_batch()
    best = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)
    assert loss().item() < start / 100
    assert loss().item() - ((A @ best - b) ** 2).mean().item() < 1e-3


def _eve_by_hand(p, m, v, g, step, lr, betas, eps, wd, target_rms):
    """One Eve update of one tensor, in float64, written from the formulas."""
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
    if p.numel() > 1 and p.pow(2).mean().sqrt() > target_rms:
        p = p * (1 - wd)
    p = p - lr * m_hat / (v_hat.sqrt() + eps)
    if p.numel() == 1:
        p = p.clamp(-10.0, 2.0)
    return p, m, v


def test_eve_many_steps_match_formulas_per_tensor():
    """Tensors of several sizes (one scalar, one above and one below the
    target rms, one often without a gradient so its step count lags) over 12
    steps against a float64 per-tensor implementation of the formulas."""
    torch.manual_seed(0)
    shapes = [(5, 7), (3,), (), (4, 4), (6,)]
    init = [torch.randn(s) * (0.5 if i == 0 else 0.02) for i, s in enumerate(shapes)]
    params = [torch.nn.Parameter(t.clone()) for t in init]
    lr, betas, eps, wd, target = 0.03, (0.9, 0.98), 1e-8, 0.01, 0.1
    opt = Eve(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, target_rms=target)
    ref = [[t.double(), torch.zeros_like(t, dtype=torch.float64),
            torch.zeros_like(t, dtype=torch.float64), 0] for t in init]
    for it in range(12):
        for i, p in enumerate(params):
            p.grad = None if (i == 4 and it % 3 != 0) else torch.randn(p.shape)
        opt.step()
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            r = ref[i]
            r[3] += 1
            r[0], r[1], r[2] = _eve_by_hand(r[0], r[1], r[2], p.grad.double(), r[3],
                                            lr, betas, eps, wd, target)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.data.double(), r[0], rtol=1e-5, atol=1e-6)
    assert opt.state[params[4]]["step"] == 4 and opt.state[params[0]]["step"] == 12
    assert params[0].data.pow(2).mean().sqrt() < init[0].pow(2).mean().sqrt()  # decayed


def test_eve_state_dict_round_trip():
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    m1 = torch.nn.Linear(4, 2)
    m2 = torch.nn.Linear(4, 2)
    o1 = Eve(m1.parameters(), lr=0.01)

    def step(model, optimizer):
        optimizer.zero_grad()
        ((model(x) - y) ** 2).sum().backward()
        optimizer.step()

    for _ in range(5):
        step(m1, o1)
    m2.load_state_dict(m1.state_dict())
    o2 = Eve(m2.parameters(), lr=0.01)
    # deepcopy as a checkpoint would: load_state_dict keeps the tensors it is given
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))
    for _ in range(3):
        step(m1, o1)
        step(m2, o2)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert o2.state[m2.weight]["step"] == 8


def test_eve_rejects_bad_arguments():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="weight_decay"):
        Eve(p, weight_decay=0.5)
    with pytest.raises(ValueError, match="target_rms"):
        Eve(p, target_rms=0.0)

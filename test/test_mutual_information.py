"""Tests of icefall.mutual_information against k2 1.23.4, brute force and
gradcheck."""

import itertools
import math
import warnings
from pathlib import Path

import pytest
import torch

from icefall.mutual_information import mutual_information_recursion

DATA = Path(__file__).parent / "data" / "k2_rnnt_cases.pt"
CASES = torch.load(DATA, weights_only=True)["cases"]
MI_CASES = [c for c in CASES
            if c["function"] == "mutual_information_recursion"]


def rel_err(ours, ref):
    """max |ours - ref| / max |ref| over finite entries; inf positions must
    agree."""
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(ours))
    if not finite.any():
        return 0.0
    diff = (ours.detach() - ref)[finite].abs().max()
    return (diff / ref[finite].abs().max().clamp(min=1e-300)).item()


def tolerances(case):
    return (1e-9, 1e-9) if case["dtype"] == "float64" else (1e-5, 2e-4)


@pytest.mark.parametrize("case", MI_CASES, ids=lambda c: c["name"])
def test_matches_k2(case):
    x = case["inputs"]
    px = x["px"].clone().requires_grad_()
    py = x["py"].clone().requires_grad_()
    scores, (px_grad, py_grad) = mutual_information_recursion(
        px=px, py=py, boundary=x.get("boundary"), **case["kwargs"])
    (case["grad_weights"] * scores).sum().backward()
    tol, gtol = tolerances(case)
    out = case["outputs"]
    assert rel_err(scores, out["scores"]) < tol
    assert rel_err(px_grad, out["px_grad"]) < gtol
    assert rel_err(py_grad, out["py_grad"]) < gtol
    assert rel_err(px.grad, case["grads"]["px"]) < gtol
    assert rel_err(py.grad, case["grads"]["py"]) < gtol


def test_spot_values():
    case = MI_CASES[0]
    scores = mutual_information_recursion(case["inputs"]["px"],
                                          case["inputs"]["py"])
    expected = torch.tensor([-1.2337543079753952, -0.22070669307606325],
                            dtype=torch.float64)
    assert torch.allclose(scores, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- brute force


def _logsumexp(values):
    values = [v for v in values if v != -math.inf]
    if not values:
        return -math.inf
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def brute_force_score(px, py, begin, end, modified):
    """Enumerate every path from ``begin`` to ``end`` (cells (s, t)) and
    log-sum their weights.  px [S, T+1] or [S, T], py [S+1, T] (lists)."""
    (s0, t0), (s1, t1) = begin, end
    n_s = s1 - s0
    n_steps = (t1 - t0) if modified else (s1 - s0) + (t1 - t0)
    if n_s < 0 or n_steps < n_s:
        return -math.inf
    weights = []
    for s_steps in itertools.combinations(range(n_steps), n_s):
        s, t, w = s0, t0, 0.0
        for i in range(n_steps):
            if i in s_steps:
                w += px[s][t]
                s, t = s + 1, t + (1 if modified else 0)
            else:
                w += py[s][t]
                t += 1
        assert (s, t) == (s1, t1)
        weights.append(w)
    return _logsumexp(weights)


@pytest.mark.parametrize("modified", [False, True])
def test_brute_force(modified):
    g = torch.Generator().manual_seed(1)
    B, S, T = 4, 3, 5
    px = torch.randn(B, S, T if modified else T + 1, generator=g,
                     dtype=torch.float64)
    py = torch.randn(B, S + 1, T, generator=g, dtype=torch.float64)
    px[1, 1, 2] = -math.inf  # a forbidden step
    boundary = torch.tensor([[0, 0, 3, 5], [1, 1, 3, 4], [0, 2, 2, 5],
                             [2, 0, 2, 3]])
    for bnd in (None, boundary):
        scores = mutual_information_recursion(px, py, bnd)
        for b in range(B):
            s0, t0, s1, t1 = bnd[b].tolist() if bnd is not None \
                else (0, 0, S, T)
            ref = brute_force_score(px[b].tolist(), py[b].tolist(),
                                    (s0, t0), (s1, t1), modified)
            assert math.isclose(scores[b].item(), ref, rel_tol=1e-9,
                                abs_tol=1e-12), (b, bnd)


def test_occupations_are_probabilities():
    """px_grad/py_grad are the gradients of scores.sum() (autograd check
    against finite differences happens in gradcheck); here: every complete
    path makes S s-steps, so px occupations sum to S_b."""
    g = torch.Generator().manual_seed(2)
    B, S, T = 3, 6, 9
    px = torch.randn(B, S, T + 1, generator=g, dtype=torch.float64)
    py = torch.randn(B, S + 1, T, generator=g, dtype=torch.float64)
    boundary = torch.tensor([[0, 0, 6, 9], [0, 0, 4, 7], [0, 0, 0, 3]])
    _, (px_grad, py_grad) = mutual_information_recursion(
        px, py, boundary, return_grad=True)
    assert torch.allclose(px_grad.sum((1, 2)),
                          boundary[:, 2].to(px.dtype), atol=1e-12)
    assert torch.allclose(py_grad.sum((1, 2)),
                          boundary[:, 3].to(px.dtype), atol=1e-12)
    assert px_grad.min() >= 0 and px_grad.max() <= 1 + 1e-12


def plain_dp_score(px, py, begin, end, modified):
    """The recursion cell by cell with torch scalars (autograd records every
    cell), for one utterance: px [S, T+1] or [S, T], py [S+1, T].  Terms
    from unreachable cells are left out (a log-sum-exp of only -inf terms
    would give NaN gradients)."""
    (s0, t0), (s1, t1) = begin, end
    ninf = px.new_tensor(-math.inf)
    p = {}
    for s in range(s0, s1 + 1):
        for t in range(t0, t1 + 1):
            if (s, t) == (s0, t0):
                p[s, t] = px.new_tensor(0.0)
                continue
            terms = []
            src = (s - 1, t - 1) if modified else (s - 1, t)
            if src in p and torch.isfinite(p[src]):
                terms.append(p[src] + px[src])
            if (s, t - 1) in p and torch.isfinite(p[s, t - 1]):
                terms.append(p[s, t - 1] + py[s, t - 1])
            p[s, t] = torch.logsumexp(torch.stack(terms), 0) \
                if terms else ninf
    return p[s1, t1]


@pytest.mark.parametrize("modified", [False, True])
def test_long_lattice_with_begins_matches_plain_dp(modified):
    """Many renormalised diagonals (every 16th), utterances starting and
    ending at different cells: scores and gradients as a plain cell-by-cell
    dynamic program differentiated by autograd."""
    g = torch.Generator().manual_seed(8)
    B, S, T = 2, 12, 40
    px = torch.randn(B, S, T if modified else T + 1, generator=g,
                     dtype=torch.float64) * 3 - 2
    py = torch.randn(B, S + 1, T, generator=g, dtype=torch.float64) - 1
    boundary = torch.tensor([[3, 17, 12, 40], [0, 5, 9, 33]])
    px.requires_grad_()
    py.requires_grad_()
    scores = mutual_information_recursion(px, py, boundary)
    px_grad, py_grad = torch.autograd.grad(scores.sum(), (px, py))
    for b in range(B):
        s0, t0, s1, t1 = boundary[b].tolist()
        ref = plain_dp_score(px[b], py[b], (s0, t0), (s1, t1), modified)
        ref_px, ref_py = torch.autograd.grad(ref, (px, py))
        assert math.isclose(scores[b].item(), ref.item(), rel_tol=1e-12)
        assert torch.allclose(px_grad[b], ref_px[b], rtol=0, atol=1e-12)
        assert torch.allclose(py_grad[b], ref_py[b], rtol=0, atol=1e-12)


# ------------------------------------------------------------------ gradcheck


@pytest.mark.parametrize("modified", [False, True])
@pytest.mark.parametrize("with_boundary", [False, True])
def test_gradcheck(modified, with_boundary):
    g = torch.Generator().manual_seed(3)
    B, S, T = 2, 3, 4
    px = torch.randn(B, S, T if modified else T + 1, generator=g,
                     dtype=torch.float64, requires_grad=True)
    py = torch.randn(B, S + 1, T, generator=g, dtype=torch.float64,
                     requires_grad=True)
    boundary = torch.tensor([[0, 0, 3, 4], [1, 1, 2, 3]]) \
        if with_boundary else None
    assert torch.autograd.gradcheck(
        lambda a, b: mutual_information_recursion(a, b, boundary), (px, py))


def test_no_graph_per_cell():
    """One autograd node for the whole recursion, whatever the size."""
    px = torch.randn(2, 7, 12, requires_grad=True)
    py = torch.randn(2, 8, 11, requires_grad=True)
    scores = mutual_information_recursion(px, py)
    assert type(scores.grad_fn).__name__ == "_MutualInformationBackward"
    assert scores.grad_fn.next_functions[0][0].variable is px


# ------------------------------------------------------------- -inf and edges


def test_minus_inf_everywhere_gives_minus_inf_and_zero_grad():
    px = torch.full((2, 3, 5), -math.inf, requires_grad=True)
    py = torch.full((2, 4, 4), -math.inf, requires_grad=True)
    with pytest.warns(UserWarning, match="no path"):
        scores = mutual_information_recursion(px, py)
    assert torch.equal(scores, torch.full((2,), -math.inf))
    scores.sum().backward()
    assert torch.equal(px.grad, torch.zeros_like(px))
    assert torch.equal(py.grad, torch.zeros_like(py))


def test_minus_inf_entries_get_zero_grad_and_no_nan():
    g = torch.Generator().manual_seed(4)
    px = torch.randn(2, 4, 7, generator=g)
    py = torch.randn(2, 5, 6, generator=g)
    px[:, :, 3:] = -math.inf  # symbols only on frames 0-2
    py[0, 2, :] = -math.inf   # utterance 0 must pass context 2 by px only
    px.requires_grad_()
    py.requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = mutual_information_recursion(px, py)
    assert torch.isfinite(scores).all()
    scores.sum().backward()
    assert torch.isfinite(px.grad).all() and torch.isfinite(py.grad).all()
    assert (px.grad[:, :, 3:] == 0).all() and (py.grad[0, 2] == 0).all()


def test_float_boundary_rejected():
    px, py = torch.randn(1, 2, 4), torch.randn(1, 3, 3)
    with pytest.raises(TypeError, match="int64"):
        mutual_information_recursion(px, py, torch.tensor([[0., 0., 2., 3.]]))


def test_long_input_is_finite():
    g = torch.Generator().manual_seed(5)
    B, S, T = 2, 200, 1000
    px = (torch.randn(B, S, T + 1, generator=g) - 4).requires_grad_()
    py = (torch.randn(B, S + 1, T, generator=g) - 1).requires_grad_()
    scores = mutual_information_recursion(px, py)
    scores.sum().backward()
    assert torch.isfinite(scores).all()
    assert torch.isfinite(px.grad).all() and torch.isfinite(py.grad).all()
    # float32 agrees with float64 despite scores of order 1e3
    ref = mutual_information_recursion(px.detach().double(),
                                       py.detach().double())
    assert torch.allclose(scores.double(), ref, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    case = MI_CASES[3]
    x = case["inputs"]
    cpu = mutual_information_recursion(x["px"], x["py"], x["boundary"])
    gpu = mutual_information_recursion(x["px"].cuda(), x["py"].cuda(),
                                       x["boundary"].cuda())
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-12)


# ------------------------------------------------------- float32 precision


def _grads(px, py, dtype, boundary=None, weights=None):
    """Gradients of (weights * scores).sum() w.r.t. px and py in ``dtype``."""
    px = px.detach().to(dtype).clone().requires_grad_()
    py = py.detach().to(dtype).clone().requires_grad_()
    scores = mutual_information_recursion(px, py, boundary)
    w = torch.ones_like(scores) if weights is None else weights.to(dtype)
    (w * scores).sum().backward()
    return px.grad, py.grad


@pytest.mark.parametrize("case", [c for c in MI_CASES
                                  if c["dtype"] == "float32"],
                         ids=lambda c: c["name"])
def test_float32_gradients_as_accurate_as_k2(case):
    """Our float32 gradients are as close to float64 as k2's own float32
    gradients were (k2_rnnt_cases stores k2's float32-vs-float64 error of
    each case), give or take 3e-7 of rounding noise."""
    x = case["inputs"]
    args = (x["px"], x["py"], torch.float32, x.get("boundary"),
            case["grad_weights"])
    g32 = _grads(*args)
    g64 = _grads(x["px"].double(), x["py"].double(), torch.float64,
                 *args[3:])
    for name, ours, ref in zip(("px", "py"), g32, g64):
        k2_err = case["f32_vs_f64"][f"grad_{name}"]
        assert rel_err(ours.double(), ref) <= k2_err + 3e-7, name


def _long_problem(seed, modified=False, B=2, S=300, T=2000):
    """px, py ~ N(0, 1) - 1 in float64 (exactly representable in float32),
    as in k2_rnnt_cases."""
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(B, S, T if modified else T + 1, generator=g,
                     dtype=torch.float64).float().double() - 1
    py = torch.randn(B, S + 1, T, generator=g,
                     dtype=torch.float64).float().double() - 1
    return px, py


@pytest.mark.parametrize("modified", [False, True])
def test_float32_backward_conserves_probability_long(modified):
    """Without a boundary every path crosses each frame exactly once: by a
    t-step (regular), or by a t-step or an s-step (modified).  So the
    occupations of one frame sum to 1.  k2 stays within 1e-6 of it at
    T=2000, S=300; two independent exps per cell drifted to 5e-4."""
    px, py = _long_problem(6, modified)
    _, (px_grad, py_grad) = mutual_information_recursion(
        px.float(), py.float(), return_grad=True)
    per_frame = py_grad.double().sum(1)
    if modified:
        per_frame += px_grad.double().sum(1)
    assert (per_frame - 1).abs().max() < 1e-5


def test_float32_gradients_long_match_float64():
    """B=2, T=2000, S=300: k2's float32 gradients are within 3e-5 to 4.6e-4
    of float64 at these sizes, depending on the function; k2's way of forming
    the shares, reproduced here, gives 5.5e-5 on these inputs; ours before
    the fix 2.4e-4."""
    px, py = _long_problem(7)
    g32 = _grads(px, py, torch.float32)
    g64 = _grads(px, py, torch.float64)
    for ours, ref in zip(g32, g64):
        assert rel_err(ours.double(), ref) < 1e-4

"""Tests of ScaledAdam, Eden's warmup and get_parameter_groups_with_lrs.

The reference (test/data/icefall_scaled_adam_ref.pt, see its .md) is icefall's
own ScaledAdam and Eden run on the 349 parameters of a small Zipformer with
fixed random gradients; the gradients are regenerated here from their seed.
"""

import io
import logging
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icefall.optim import Eden, ScaledAdam, get_parameter_groups_with_lrs  # noqa: E402

REF = Path(__file__).resolve().parent / "data" / "icefall_scaled_adam_ref.pt"


@pytest.fixture(scope="module")
def ref():
    return torch.load(REF, weights_only=True)


def _module_tree(names, shapes, flat) -> nn.Module:
    """An nn.Module whose named_parameters() are `names` (nested as the dots say)."""
    root, offset = nn.Module(), 0
    for name, shape in zip(names, shapes):
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        numel = torch.Size(shape).numel()
        values = flat[offset:offset + numel].view(shape).clone()
        module.register_parameter(leaf, nn.Parameter(values))
        offset += numel
    return root


def _grads(ref):
    """The 5 steps' gradients, drawn as the reference drew them."""
    gen = torch.Generator().manual_seed(ref["grad_seed"])
    steps = []
    for scale, (want_sum, want_sumsq) in zip(ref["grad_scales"], ref["grad_sums_per_step"]):
        grads = [(scale * torch.randn(s, generator=gen)).to(torch.float16).to(torch.float32)
                 for s in ref["param_shapes"]]
        got = torch.cat([g.flatten() for g in grads]).double()
        assert got.sum().item() == pytest.approx(want_sum, rel=1e-12, abs=1e-9)
        assert (got**2).sum().item() == pytest.approx(want_sumsq, rel=1e-12)
        steps.append(grads)
    return steps


def _run(ref, run_name, num_steps=5):
    """Replays one of the reference runs; returns model, optimizer, lrs, clipping scales."""
    run = ref["runs"][run_name]
    hp = run["hyperparameters"]
    model = _module_tree(ref["param_names_in_order"], ref["param_shapes"], ref["initial_params"])
    assert [n for n, _ in model.named_parameters()] == ref["param_names_in_order"]
    groups = get_parameter_groups_with_lrs(model, lr=0.045, include_names=True)
    assert len(groups) == 1  # no module of the Zipformer has an lr_scale
    optimizer = ScaledAdam(groups, lr=0.045, clipping_scale=hp["clipping_scale"],
                           clipping_update_period=hp["clipping_update_period"])
    scheduler = None
    if run_name == "train_py":
        scheduler = Eden(optimizer, 7500, 3.5, warmup_start=0.1)
        scheduler.step_epoch(0)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(hp["lr"], rel=1e-12)

    clipping_scales = []
    original = optimizer._clipping_scale

    def record(group, batches):
        clipping_scales.append(original(group, batches))
        return clipping_scales[-1]

    optimizer._clipping_scale = record
    params = list(model.parameters())
    lrs, deltas = [], {}
    for k, grads in enumerate(_grads(ref)[:num_steps], start=1):
        for p, g in zip(params, grads):
            p.grad = g
        if scheduler is not None:
            scheduler.step_batch(k)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        optimizer.zero_grad()
        if k in run["delta_stats_after_step"]:
            deltas[k] = _delta_stats(ref, params)
    return model, optimizer, lrs, clipping_scales, deltas


def _delta_stats(ref, params):
    flat = torch.cat([p.detach().flatten() for p in params])
    out, offset = [], 0
    for p in params:
        delta = flat[offset:offset + p.numel()].double() - \
            ref["initial_params"][offset:offset + p.numel()].double()
        out.append([delta.sum().item(), (delta**2).sum().item()])
        offset += p.numel()
    return torch.tensor(out, dtype=torch.float64)


def _check_against_reference(ref, run_name, model, optimizer, deltas):
    run = ref["runs"][run_name]
    # Per-tensor sum and sum of squares of (params - initial) after the stored
    # steps.  The reference machine's float32 kernels round differently in the
    # last bit, hence relative 1e-5 rather than equality.
    for step, want in run["delta_stats_after_step"].items():
        got = deltas[step]
        scale = want[:, 1].sqrt()  # ||delta|| of each tensor
        torch.testing.assert_close(got[:, 0], want[:, 0], rtol=0, atol=1e-5 * scale.max().item())
        torch.testing.assert_close(got[:, 1], want[:, 1], rtol=1e-5, atol=0)
    # Every element after the last step: the reference delta is stored as
    # float16 of delta / max|delta| per tensor (error <= 2**-11 of that max).
    q = run["final_delta_f16"].float()
    offset = 0
    for i, p in enumerate(model.parameters()):
        n = p.numel()
        want = q[offset:offset + n] * run["final_delta_scale"][i]
        got = p.detach().flatten() - ref["initial_params"][offset:offset + n]
        bound = 2.0**-11 * run["final_delta_scale"][i] * 1.01 + 1e-7
        assert (got - want).abs().max() <= bound, ref["param_names_in_order"][i]
        offset += n
    _check_final_state(ref, run_name, model, optimizer)


def _check_final_state(ref, run_name, model, optimizer):
    """icefall's stacking: batches keyed by (dtype, *shape), state in the first member."""
    by_name = dict(model.named_parameters())
    entries = ref["runs"][run_name]["final_state_batches_small_entries"]
    assert len(optimizer.state) == len(entries) == 125
    for entry in entries:
        state = optimizer.state[by_name[entry["param_names"][0]]]
        for name in entry["param_names"][1:]:
            assert len(optimizer.state[by_name[name]]) == 0
        assert list(state["exp_avg_sq"].shape) == entry["stacked_shape"]
        for key, want in entry["state"].items():
            if isinstance(want, list):
                # sums like scale_grads (of p * grad) cancel: tolerance from the largest
                want = torch.tensor(want)
                torch.testing.assert_close(state[key], want, rtol=1e-5,
                                           atol=1e-5 * want.abs().max().item(), msg=key)
            else:
                assert state[key] == pytest.approx(want, rel=1e-5), key
        is_scalar = torch.Size(entry["stacked_shape"]).numel() == entry["stacked_shape"][0]
        assert ("param_rms" in state) == (not is_scalar)


def test_train_py_run_matches_icefall(ref):
    """train.py's set-up: Eden with warmup_start 0.1, clipping_scale 2; 5 steps,
    the size update at step 4, no clipping (the threshold is not yet set)."""
    model, optimizer, lrs, clipping_scales, deltas = _run(ref, "train_py")
    want = ref["runs"]["train_py"]
    assert lrs == pytest.approx(want["lr_used_per_step"], rel=1e-12)
    assert clipping_scales == want["clipping_scale_per_step"] == [1.0] * 4
    _check_against_reference(ref, "train_py", model, optimizer, deltas)


def test_clipping_run_matches_icefall(ref, caplog):
    """clipping_update_period=2: the threshold is set at steps 2 and 4 and
    gradients are clipped at steps 3 and 5."""
    with caplog.at_level(logging.WARNING):
        model, optimizer, lrs, clipping_scales, deltas = _run(ref, "clipping_update_period_2")
    want = ref["runs"]["clipping_update_period_2"]
    assert lrs == [0.045] * 5
    assert clipping_scales == pytest.approx(want["clipping_scale_per_step"], rel=1e-5)
    assert min(clipping_scales) < 0.5
    _check_against_reference(ref, "clipping_update_period_2", model, optimizer, deltas)
    # the warning names the parameter with the largest share of the norm
    assert "ScaledAdam: scaling gradients by 0.245" in caplog.text
    assert "joiner.encoder_proj.weight has" in caplog.text


@pytest.mark.parametrize("index", [0, 1, 2])
def test_eden_matches_icefall(ref, index):
    setting = ref["scheduler_Eden"][index]
    optimizer = ScaledAdam([nn.Parameter(torch.zeros(2))], lr=setting["base_lr"])
    scheduler = Eden(optimizer, setting["lr_batches"], setting["lr_epochs"],
                     warmup_batches=setting["warmup_batches"], warmup_start=setting["warmup_start"])
    for batch, epoch, want in setting["rows_batch_epoch_lr"]:
        scheduler.step_epoch(epoch)
        scheduler.step_batch(batch)
        assert scheduler.get_last_lr()[0] == pytest.approx(want, rel=1e-12, abs=1e-18)


def test_eden_warmup_by_hand():
    optimizer = ScaledAdam([nn.Parameter(torch.zeros(2))], lr=0.04)
    scheduler = Eden(optimizer, 5000, 6, warmup_start=0.1)  # warmup_batches 500
    scheduler.step_batch(250)
    f = ((250**2 + 5000**2) / 5000**2) ** -0.25
    assert scheduler.get_last_lr()[0] == pytest.approx(0.04 * f * 0.55, rel=1e-12)
    scheduler = Eden(optimizer, 5000, 6, warmup_batches=100)  # warmup_start 0.5
    scheduler.step_batch(50)
    f = ((50**2 + 5000**2) / 5000**2) ** -0.25
    assert scheduler.get_last_lr()[0] == pytest.approx(0.04 * f * 0.75, rel=1e-12)
    scheduler = Eden(optimizer, 5000, 6)  # pts3's Eden: no warmup
    scheduler.step_batch(50)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.04 * f, rel=1e-12)
    with pytest.raises(ValueError, match="warmup_start"):
        Eden(optimizer, 5000, 6, warmup_start=1.5)


def test_first_step_by_hand():
    """Step 1 (no momentum bias correction, bias-corrected rms):
    matrix: p - (1 - beta1) * lr * rms(p) * g / (|g| + eps);
    scalar: p - (1 - beta1) * lr * scalar_lr_scale * g / (|g| + eps)."""
    w = nn.Parameter(torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]]))
    s = nn.Parameter(torch.tensor(0.3))
    g = torch.tensor([[0.1, -0.2, 0.0], [2.0, 1e-3, -0.5]])
    w.grad, s.grad = g.clone(), torch.tensor(-4.0)
    lr, eps = 0.05, 1e-8
    w0 = w.detach().clone()
    ScaledAdam([w, s], lr=lr, eps=eps).step()
    rms = (w0**2).mean().sqrt()
    torch.testing.assert_close(w.detach(), w0 - 0.1 * lr * rms * g / (g.abs() + eps))
    assert s.item() == pytest.approx(0.3 + 0.1 * lr * 0.1, rel=1e-6)


def test_scalars_are_clamped_and_inputs_forms_agree():
    def make():
        torch.manual_seed(0)
        return nn.Linear(3, 2), nn.Parameter(torch.tensor(9.99))

    def run(build):
        lin, s = make()
        opt = build(lin, s)
        for _ in range(3):
            lin.weight.grad, lin.bias.grad = torch.ones(2, 3), torch.ones(2)
            s.grad = torch.tensor(-100.0)
            opt.step()
        return lin.weight.detach().clone(), s.item()

    plain = run(lambda lin, s: ScaledAdam([*lin.parameters(), s], lr=1.0))
    named = run(lambda lin, s: ScaledAdam([*lin.named_parameters(), ("s", s)], lr=1.0))
    grouped = run(lambda lin, s: ScaledAdam(
        [{"named_params": list(lin.named_parameters())}, {"params": [s]}], lr=1.0))
    assert plain[1] == 10.0  # scalar_max
    for other in (named, grouped):
        assert torch.equal(plain[0], other[0]) and plain[1] == other[1]


def test_get_parameter_groups_with_lrs_by_hand():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2, bias=False)

    model = nn.Module()
    model.enc = Block()
    model.dec = Block()
    model.head = nn.Linear(2, 1)
    model.enc.lr_scale = 0.5
    model.enc.a.lr_scale = 0.25   # nested: 0.5 * 0.25
    model.dec.b.lr_scale = 0.5    # same lr as enc.b: one group
    groups = get_parameter_groups_with_lrs(model, lr=0.1, include_names=True)
    got = {g["lr"]: [n for n, _ in g["named_params"]] for g in groups}
    assert list(got) == [0.1 * 0.5 * 0.25, 0.1 * 0.5, 0.1]
    assert got == {0.1 * 0.5 * 0.25: ["enc.a.weight", "enc.a.bias"],
                   0.1 * 0.5: ["enc.b.weight", "dec.b.weight"],
                   0.1: ["dec.a.weight", "dec.a.bias", "head.weight", "head.bias"]}

    groups = get_parameter_groups_with_lrs(model, lr=0.1, freeze_modules=["enc"])
    assert [g["lr"] for g in groups] == [0.1, 0.05]
    assert groups[0]["params"][0] is model.dec.a.weight
    assert sum(len(g["params"]) for g in groups) == 5

    model.lr_scale = 2.0  # the root's scale applies to everything
    wrapped = nn.Module()
    wrapped.module = model  # as DDP names them: module.enc...
    groups = get_parameter_groups_with_lrs(wrapped, lr=0.1, freeze_modules=["dec", "head"])
    assert [(g["lr"], len(g["params"])) for g in groups] == [(0.1 * 2 * 0.5 * 0.25, 2),
                                                            (0.1 * 2 * 0.5, 1)]


def _small_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    model.register_parameter("gain", nn.Parameter(torch.tensor(0.5)))
    return model


def _train(model, optimizer, scheduler, batches):
    for x, y in batches:
        optimizer.zero_grad()
        ((model(x) * model.gain - y) ** 2).sum().backward()
        optimizer.step()
        scheduler.step_batch()


def test_resume_is_bit_exact():
    """Save after 13 steps (past the thresholds set at steps 4, 8 and 12 and
    3 size updates), load with weights_only=True, continue: equal to no break."""
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(5, 6, generator=gen),
                torch.randn(5, 3, generator=gen) * (10 if i % 7 == 0 else 1))
               for i in range(25)]

    def make(model):
        opt = ScaledAdam(get_parameter_groups_with_lrs(model, lr=0.05, include_names=True),
                         lr=0.05, clipping_scale=2.0, clipping_update_period=4)
        return opt, Eden(opt, 10, 2, warmup_start=0.2, warmup_batches=8)

    m1 = _small_problem()
    o1, s1 = make(m1)
    _train(m1, o1, s1, batches[:13])
    assert "model_norm_threshold" in o1.state[m1.gain]  # the first batch: scalars
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "optimizer": o1.state_dict(),
                "scheduler": s1.state_dict()}, buf)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    m2 = _small_problem(seed=5)
    m2.load_state_dict(saved["model"])
    o2, s2 = make(m2)
    o2.load_state_dict(saved["optimizer"])
    s2.load_state_dict(saved["scheduler"])
    _train(m1, o1, s1, batches[13:])
    scales = []
    original = o2._clipping_scale
    o2._clipping_scale = lambda group, b: scales.append(original(group, b)) or scales[-1]
    _train(m2, o2, s2, batches[13:])
    assert min(scales) < 1.0  # clipping happened after the restart
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(p1, p2), n
    assert o2.state[m2.gain]["step"] == 25


def test_clipping_threshold_schedule_by_hand():
    """lr=0 keeps rms(p) at 1, so the norm at step k is |grad|.  The threshold
    is first set at step 10 from the 10 norms so far (2 * clipping_scale *
    median, the early doubling), again at step 20, and at 100 without doubling."""
    p = nn.Parameter(torch.ones(2, 2))
    optimizer = ScaledAdam([p], lr=0.0, clipping_scale=2.0)
    norms = {k: float(k) for k in range(1, 101)}
    norms[15] = 100.0
    scales = []
    original = optimizer._clipping_scale
    optimizer._clipping_scale = lambda group, b: scales.append(original(group, b)) or scales[-1]
    thresholds = {}
    for step in range(0, 101):
        p.grad = torch.tensor([[norms.get(step, 1.0), 0.0], [0.0, 0.0]])
        optimizer.step()
        thresholds[step] = optimizer.state[p].get("model_norm_threshold")
    assert thresholds[9] is None
    assert thresholds[10] == 2 * 2.0 * 5.0   # median of 1..10: sorted[(10 // 4) * 2] = 5
    assert thresholds[20] == 2 * 2.0 * 11.0  # 1..14, 16..20, 100: sorted[10] = 11
    assert thresholds[40] == 2 * 2.0 * 22.0  # 1..14, 16..40, 100: sorted[20] = 22
    # all 100 slots: steps 1..99 and step 100 in slot 0; 15 is missing: sorted[50] = 52
    assert thresholds[100] == 2.0 * 52.0
    assert scales[15 - 1] == pytest.approx(20.0 / 100.0)
    assert scales[11 - 1] == 1.0
    assert torch.equal(p.detach(), torch.ones(2, 2))

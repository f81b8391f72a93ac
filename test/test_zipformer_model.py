"""Tests of the Zipformer2 recipe model (egs/librispeech/ASR/zipformer) against icefall.

References (test/data, made by icefall's own code at commit 36e0420c):
- icefall_zipformer_state_dict.json.gz: state_dict names/shapes of five
  variants of icefall's default model (vocab 500).
- icefall_zipformer_small.pt (see icefall_zipformer_small.md): a small
  perturbed model, its inputs and icefall's eval outputs, and icefall's
  outputs and gradients of the scaling functions.
"""

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "zipformer"
DATA = Path(__file__).resolve().parent / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icefall.beam_search import greedy_search_batch  # noqa: E402
from recipe_fixture import import_recipe  # noqa: E402
from transducer_brute_force import brute_force_rnnt_loss  # noqa: E402

RECIPE_MODULES = ("scaling_schedule", "scaling_grad", "scaling", "subsampling", "zipformer",
                  "decoder", "joiner", "model")


R = import_recipe(RECIPE, RECIPE_MODULES)  # beside the pts3 recipe's model, scaling, ...


def config_for(argv, vocab_size: int, blank_id: int = 0) -> dict:
    parser = argparse.ArgumentParser()
    R.model.add_model_arguments(parser)
    return R.model.config_from_args(parser.parse_args(argv), vocab_size=vocab_size,
                                    blank_id=blank_id)


def assert_close(got, want, rtol=1e-5, atol_rel=1e-5):
    torch.testing.assert_close(got, want, rtol=rtol,
                               atol=atol_rel * max(float(want.abs().max()), 1e-30))


# ----------------------------------------------------------------------------
# 1. State dict names, shapes and order of icefall's default model


@pytest.fixture(scope="module")
def state_dict_ref():
    with gzip.open(DATA / "icefall_zipformer_state_dict.json.gz", "rt") as f:
        return json.load(f)


@pytest.mark.parametrize("variant", ["default", "transducer_ctc", "causal",
                                     "causal_transducer_ctc", "ctc_only"])
def test_state_dict_matches_icefall(state_dict_ref, variant):
    ref = state_dict_ref["variants"][variant]
    config = config_for(ref["argv"], vocab_size=state_dict_ref["vocab_size"])
    with torch.device("meta"):
        model = R.model.build_model(config)
    got = [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
           for k, v in model.state_dict().items()]
    assert got == ref["state_dict"]  # names, shapes, dtypes and order
    assert len(got) == ref["num_tensors"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]


def test_state_dict_sizes_as_the_brief_says(state_dict_ref):
    v = state_dict_ref["variants"]
    assert (v["default"]["num_tensors"], v["default"]["num_parameters"]) == (743, 65_549_011)
    assert (v["transducer_ctc"]["num_tensors"], v["transducer_ctc"]["num_parameters"]) == \
        (745, 65_805_511)
    assert (v["causal"]["num_tensors"], v["causal"]["num_parameters"]) == (839, 66_110_931)


def test_config_is_json_and_rebuilds_the_same_model():
    config = config_for(["--encoder-dim", "32,40", "--downsampling-factor", "1,2",
                         "--num-encoder-layers", "1", "--feedforward-dim", "64",
                         "--num-heads", "2", "--encoder-unmasked-dim", "24",
                         "--cnn-module-kernel", "5", "--query-head-dim", "8",
                         "--value-head-dim", "4", "--pos-dim", "16", "--decoder-dim", "16",
                         "--joiner-dim", "16", "--use-ctc", "1"], vocab_size=20)
    assert json.loads(json.dumps(config)) == config
    assert config["encoder_dim"] == [32, 40] and config["use_ctc"] is True
    a, b = R.model.build_model(config), R.model.build_model(json.loads(json.dumps(config)))
    assert [(k, v.shape) for k, v in a.state_dict().items()] == \
        [(k, v.shape) for k, v in b.state_dict().items()]
    with pytest.raises(ValueError, match="use-transducer"):
        config_for(["--use-transducer", "0"], vocab_size=20)
    with pytest.raises(ValueError, match="missing keys"):
        R.model.build_model({k: v for k, v in config.items() if k != "pos_dim"})


def test_bad_list_flag_is_a_one_line_argparse_error(capsys):
    parser = argparse.ArgumentParser()
    R.model.add_model_arguments(parser)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--encoder-dim", "32,x"])
    assert e.value.code == 2
    assert "--encoder-dim" in capsys.readouterr().err


def test_frames_after_subsampling_matches_the_model(ref):
    for t in (9, 10, 11, 57, 120, 121):
        assert R.model.frames_after_subsampling(t) == ((t - 7) // 2 + 1) // 2
    model = small_model_from(ref)
    with torch.no_grad():
        for t in (9, 15, 40, 41):
            out, lens = model.forward_encoder(torch.randn(1, t, 80), torch.tensor([t]))
            assert out.shape[1] == int(lens[0]) == R.model.frames_after_subsampling(t)
            assert model.frames_after_subsampling(t) == out.shape[1]  # what decode.py asks


# ----------------------------------------------------------------------------
# 2. icefall's small model: weights load strictly, eval outputs match


def small_model_from(ref):
    config = config_for(ref["config"]["argv"], vocab_size=50, blank_id=0)
    model = R.model.build_model(config)
    model.load_state_dict(ref["model"], strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def ref():
    return torch.load(DATA / "icefall_zipformer_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def small(ref):
    """The model, and its outputs on the stored inputs with the same hooks as icefall's."""
    model = small_model_from(ref)
    captured = {}

    def hook(name):
        def fn(module, args, output):
            captured[name] = output
        return fn

    def input_hook(name):
        def fn(module, args):
            captured[name] = args[0]
        return fn

    for name in ref["outputs"]["intermediates"]:
        if name.endswith(".input"):
            module = model.get_submodule(name[: -len(".input")])
            module.register_forward_pre_hook(input_hook(name))
        else:
            model.get_submodule(name).register_forward_hook(hook(name))
    x, x_lens = ref["inputs"]["x"], ref["inputs"]["x_lens"]
    with torch.no_grad():
        encoder_out, encoder_out_lens = model.forward_encoder(x, x_lens)
    for handle_owner in model.modules():
        handle_owner._forward_hooks.clear()
        handle_owner._forward_pre_hooks.clear()
    return model, encoder_out, encoder_out_lens, captured


def test_small_model_loads_strictly(ref):
    model = small_model_from(ref)
    assert sum(p.numel() for p in model.parameters()) == 520_990
    assert len(model.state_dict()) == 349


def test_encoder_embed_matches_icefall(ref, small):
    model = small[0]
    with torch.no_grad():
        out, lens = model.encoder_embed(ref["inputs"]["x"], ref["inputs"]["x_lens"])
    assert_close(out, ref["outputs"]["encoder_embed_out"])
    assert lens.tolist() == ref["outputs"]["encoder_embed_out_lens"].tolist() == [56, 45]


def test_every_intermediate_matches_icefall(ref, small):
    captured = small[3]
    for name, want in ref["outputs"]["intermediates"].items():
        got = captured[name]
        if name.startswith("encoder_embed.conv"):
            got = got[:, ::8]  # the stored reference keeps every 8th channel
        assert got.shape == want.shape, name
        assert_close(got, want, rtol=1e-4, atol_rel=1e-5)


def test_encoder_out_matches_icefall(ref, small):
    _, encoder_out, encoder_out_lens, _ = small
    assert_close(encoder_out, ref["outputs"]["encoder_out"], rtol=1e-4, atol_rel=1e-5)
    assert encoder_out_lens.tolist() == ref["outputs"]["encoder_out_lens"].tolist() == [28, 23]


def test_decoder_joiner_and_heads_match_icefall(ref, small):
    model = small[0]
    want = ref["outputs"]
    enc = want["encoder_out"]  # icefall's own encoder output, to test the heads alone
    with torch.no_grad():
        dec = model.decoder(ref["inputs"]["sos_y_padded"])
        assert_close(dec, want["decoder_out"])
        assert_close(model.decoder(ref["inputs"]["decoder_context"], need_pad=False),
                     want["decoder_out_context"])
        assert_close(model.joiner.encoder_proj(enc), want["joiner_encoder_proj"])
        assert_close(model.joiner.decoder_proj(dec), want["joiner_decoder_proj"])
        assert_close(model.joiner(enc.unsqueeze(2), dec.unsqueeze(1)),
                     want["joiner_out_all_pairs"])
        assert_close(model.simple_am_proj(enc), want["simple_am_proj"])
        assert_close(model.simple_lm_proj(dec), want["simple_lm_proj"])
        assert_close(model.ctc_output(enc), want["ctc_output"])


def test_ctc_loss_matches_icefall(ref, small):
    model, encoder_out, encoder_out_lens, _ = small
    y = ref["inputs"]["y"]
    targets = torch.tensor([t for ids in y for t in ids])
    lengths = torch.tensor([len(ids) for ids in y])
    with torch.no_grad():
        loss = model.forward_ctc(encoder_out, encoder_out_lens, targets, lengths)
    assert_close(loss, ref["outputs"]["ctc_loss_sum"], rtol=1e-5, atol_rel=1e-6)
    assert abs(float(loss) - 146.5677) < 1e-3


def test_greedy_search_matches_icefall(ref, small):
    model, encoder_out, encoder_out_lens, _ = small
    hyps = greedy_search_batch(model, encoder_out, encoder_out_lens)
    assert hyps == ref["outputs"]["greedy_search_batch_hyps"]
    with torch.no_grad():
        log_probs = model.ctc_output(encoder_out)
    ctc_hyps = []
    for lp, n in zip(log_probs, encoder_out_lens.tolist()):
        ids = torch.unique_consecutive(lp[:n].argmax(dim=-1)).tolist()
        ctc_hyps.append([i for i in ids if i != 0])
    assert ctc_hyps == ref["outputs"]["ctc_greedy_search_hyps"]


# ----------------------------------------------------------------------------
# Training-time functions against icefall's (training.autograd_functions / swoosh)


def cases(ref, function_prefix):
    return [c for c in ref["training"]["autograd_functions"]
            if c["function"].startswith(function_prefix)]


def run_backward(fn, x, grad_out):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.backward(grad_out)
    return y.detach(), x.grad


def test_balancer_matches_icefall(ref):
    found = cases(ref, "scaling.BalancerFunction")
    assert len(found) == 4
    for c in found:
        cfg = c["module_config"]
        channel_dim = cfg["channel_dim"]
        m = R.scaling_grad.Balancer(
            c["x"].shape[channel_dim], channel_dim=channel_dim,
            min_positive=cfg["min_positive"], max_positive=cfg["max_positive"],
            min_abs=cfg["min_abs"], max_abs=cfg["max_abs"], grad_scale=cfg["grad_scale"],
            prob=cfg["prob"])
        y, grad_in = run_backward(m.train(), c["x"], c["grad_out"])
        assert torch.equal(y, c["y"])
        assert_close(grad_in, c["grad_in"], rtol=1e-5, atol_rel=1e-6)
        assert not torch.allclose(grad_in, c["grad_out"])  # the case does shape gradients
        # Eval mode: no gradient shaping at all.
        _, grad_eval = run_backward(m.eval(), c["x"], c["grad_out"])
        assert torch.equal(grad_eval, c["grad_out"]), c["name"]


def test_balancer_limits_converted_as_icefall(ref):
    for c in cases(ref, "scaling.BalancerFunction"):
        cfg, args = c["module_config"], c["args"]
        g = R.scaling_grad
        to_mean = g._proportion_positive_to_mean
        assert to_mean(cfg["min_positive"]) == pytest.approx(args["min_mean"])
        assert to_mean(cfg["max_positive"]) == pytest.approx(args["max_mean"])
        assert g._abs_to_rms(cfg["min_abs"]) == pytest.approx(args["min_rms"])
        assert g._abs_to_rms(cfg["max_abs"]) == pytest.approx(args["max_rms"])


def test_whiten_matches_icefall(ref):
    found = cases(ref, "scaling.WhiteningPenaltyFunction")
    assert len(found) == 3
    for c in found:
        a = c["args"]
        metric = R.scaling_grad._whitening_metric(c["x"], a["num_groups"])
        assert float(metric) == pytest.approx(c["whitening_metric"], rel=1e-5)
        m = R.scaling_grad.Whiten(a["num_groups"], a["whitening_limit"], prob=a["prob"],
                                  grad_scale=a["grad_scale"]).train()
        y, grad_in = run_backward(m, c["x"], c["grad_out"])
        assert torch.equal(y, c["y"])
        if c["whitening_metric"] < a["whitening_limit"]:
            assert torch.equal(grad_in, c["grad_out"])
        else:
            assert not torch.allclose(grad_in, c["grad_out"])
        assert_close(grad_in, c["grad_in"], rtol=1e-5, atol_rel=1e-6)
        _, grad_eval = run_backward(m.eval(), c["x"], c["grad_out"])
        assert torch.equal(grad_eval, c["grad_out"])


def test_scale_grad_limit_param_value_and_penalty_match_icefall(ref):
    g = R.scaling_grad
    (c,) = cases(ref, "scaling.ScaleGradFunction")
    y, grad_in = run_backward(lambda x: g.scale_grad(x, c["args"]["alpha"]), c["x"], c["grad_out"])
    assert torch.equal(y, c["y"]) and torch.allclose(grad_in, c["grad_in"])
    (c,) = cases(ref, "scaling.LimitParamValue")
    lo, hi = c["args"]["min"], c["args"]["max"]
    y, grad_in = run_backward(lambda x: g.LimitParamValue.apply(x, lo, hi), c["x"], c["grad_out"])
    assert torch.equal(y, c["y"]) and torch.equal(grad_in, c["grad_in"])
    assert not torch.equal(grad_in, c["grad_out"])
    (c,) = cases(ref, "scaling.WithLoss")
    a = c["args"]
    y, grad_in = run_backward(lambda x: g.penalize_abs_values_gt(x, a["limit"], a["penalty"]),
                              c["x"], c["grad_out"])
    assert torch.equal(y, c["y"]) and torch.allclose(grad_in, c["grad_in"], rtol=0, atol=1e-7)
    (c,) = cases(ref, "scaling.SoftmaxFunction")
    y, grad_in = run_backward(lambda x: x.softmax(dim=c["args"]["dim"]), c["x"], c["grad_out"])
    assert_close(y, c["y"]) and assert_close(grad_in, c["grad_in"])


def test_bias_norm_matches_icefall(ref):
    found = cases(ref, "scaling.BiasNormFunction")
    assert len(found) == 2
    for c in found:
        m = R.scaling.BiasNorm(c["x"].shape[-1], channel_dim=c["args"]["channel_dim"])
        with torch.no_grad():
            m.bias.copy_(c["bias"])
            m.log_scale.copy_(c["log_scale"])
        y, grad_in = run_backward(m.eval(), c["x"], c["grad_out"])
        assert_close(y, c["y"])
        assert_close(grad_in, c["grad_in"])
        assert_close(m.bias.grad, c["grad_bias"])
        assert_close(m.log_scale.grad, c["grad_log_scale"])


def test_dropout3_shares_its_mask_and_rescales():
    x = torch.randn(4, 30, 5) + 3.0
    m = R.scaling.Dropout3(0.3, shared_dim=1).train()
    y = m(x)
    ratio = y / x
    assert set(torch.round(ratio * 1e4).unique().tolist()) <= {0.0, round(1e4 / 0.7)}
    kept = ratio != 0
    assert torch.equal(kept, kept[:, :1].expand_as(kept))  # one mask over dim 1
    assert 0 < kept.float().mean() < 1
    assert torch.equal(m.eval()(x), x)


def test_activation_dropout_and_linear_matches_icefall(ref):
    found = cases(ref, "scaling.ActivationDropoutAndLinearFunction")
    assert len(found) == 2
    for c in found:
        a = c["args"]
        m = R.scaling.ActivationDropoutAndLinear(6, 5, activation=a["activation"],
                                                 dropout_p=a["dropout_p"],
                                                 dropout_shared_dim=a["dropout_shared_dim"])
        with torch.no_grad():
            m.weight.copy_(c["weight"])
            m.bias.copy_(c["bias"])
        y, grad_in = run_backward(m.train(), c["x"], c["grad_out"])
        assert_close(y, c["y"])
        assert_close(grad_in, c["grad_in"])
        assert_close(m.weight.grad, c["grad_weight"])
        assert_close(m.bias.grad, c["grad_bias"])
        with torch.no_grad():
            assert_close(m.eval()(c["x"]), c["y"])


@pytest.mark.parametrize("kind", ["swoosh_l", "swoosh_r"])
def test_swoosh_matches_icefall(ref, kind):
    s = ref["training"]["swoosh"]
    want = s[kind]
    module = R.scaling.SwooshL() if kind == "swoosh_l" else R.scaling.SwooshR()
    x, grad_out = s["x"], s["grad_out"]
    with torch.no_grad():
        assert_close(module(x), want["forward_module_no_grad"], rtol=1e-6, atol_rel=1e-7)
    assert_close(R.scaling.swoosh_derivative(x, module.kind), want["exact_derivative"],
                 rtol=1e-6, atol_rel=1e-7)
    assert bool(torch.isfinite(want["exact_derivative"]).all())
    # On a CPU by default autograd keeps the input: icefall's exact derivative.
    y, grad_in = run_backward(module, x, grad_out)
    assert_close(y, want["forward_module_with_grad"], rtol=1e-6, atol_rel=1e-6)
    assert_close(grad_in, want["grad_in_exact"], rtol=1e-5, atol_rel=1e-6)
    # Bytes (the GPU default): the derivative is stored as a byte with random
    # dither, as icefall does; the same seed draws the same dither.
    R.scaling.set_swoosh_byte_derivative(True)
    try:
        torch.manual_seed(want["grad_in_quantized_seed"])
        y, grad_in = run_backward(module, x, grad_out)
    finally:
        R.scaling.set_swoosh_byte_derivative(None)
    assert_close(y, want["forward_module_with_grad"], rtol=1e-6, atol_rel=1e-6)
    step = 1.005 / 255
    assert bool(((grad_in - want["grad_in_quantized"]).abs() <= step * grad_out.abs() + 1e-7).all())
    assert (grad_in == want["grad_in_quantized"]).float().mean() > 0.95
    assert bool(((grad_in - want["grad_in_exact"]).abs() <= step * grad_out.abs() + 1e-6).all())


def test_scheduled_floats_match_icefall(ref):
    model = small_model_from(ref)
    got = {}
    for name, m in model.named_modules():
        if isinstance(m, R.scaling_schedule.ScheduledFloat):
            got[name] = {"pairs": [list(p) for p in m.schedule.pairs], "default": m.default}
    want = {k: {"pairs": [list(map(float, p)) for p in v["pairs"]], "default": v["default"]}
            for k, v in ref["training"]["scheduled_floats"].items()}
    assert len(want) == 327
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    assert {k: got[k] for k in want} == want


def test_scheduled_float_follows_batch_count():
    sf = R.scaling_schedule.ScheduledFloat((0.0, 0.3), (20000.0, 0.1), default=0.05)
    assert float(sf) == 0.05  # no batch count yet
    sf.batch_count = 10000
    assert float(sf) == pytest.approx(0.2)
    sf.batch_count = 1e9
    assert float(sf) == pytest.approx(0.1)
    sf.eval()
    assert float(sf) == 0.05


# ----------------------------------------------------------------------------
# 3. Training-mode smoke tests and the causal (chunked) model

SMALL_ARGV = ["--num-encoder-layers", "2,1,1,1,1,1", "--downsampling-factor", "1,2,4,8,4,2",
              "--feedforward-dim", "64,72,80,96,80,72", "--num-heads", "2,2,2,2,3,3",
              "--encoder-dim", "32,40,48,56,44,36", "--encoder-unmasked-dim", "24,32,32,40,32,32",
              "--query-head-dim", "8", "--value-head-dim", "4,4,6,6,4,4", "--pos-head-dim", "2",
              "--pos-dim", "16", "--cnn-module-kernel", "15,11,7,5,7,9", "--decoder-dim", "28",
              "--joiner-dim", "52"]
LOG_EPS = -23.025850929940457


def tiny_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 120, 80, generator=g)
    x_lens = torch.tensor([120, 97])
    x[1, 97:] = LOG_EPS
    y = [[43, 25, 25, 14, 25, 37, 10], [36, 15, 24, 39]]
    return x, x_lens, y


def fresh_model(*extra_argv: str, seed: int = 0):
    torch.manual_seed(seed)
    random.seed(seed)
    return R.model.build_model(config_for(SMALL_ARGV + list(extra_argv), vocab_size=50))


# The layer-level bypass_scale is in icefall's state_dict but never used.
UNUSED = ("layers.0.bypass_scale", "layers.1.bypass_scale")


def train_step(model, batch_count: float, seed: int = 0):
    model.train()
    R.scaling.set_batch_count(model, batch_count)
    x, x_lens, y = tiny_batch(seed)
    simple, pruned, ctc = model(x, x_lens, y, prune_range=5, am_scale=0.0, lm_scale=0.25)
    losses = [v for v in (simple, pruned, ctc) if v.numel()]
    for v in losses:
        assert v.ndim == 0 and bool(torch.isfinite(v)), (simple, pruned, ctc)
        assert float(v.detach()) > 0, (simple, pruned, ctc)
    sum(losses).backward()
    return simple, pruned, ctc


def test_training_forward_gives_losses_and_gradients_for_every_used_parameter(ref):
    model = fresh_model("--use-ctc", "1")
    # Late in training: skip rates have decayed, so every module runs on this batch.
    simple, pruned, ctc = train_step(model, batch_count=100000.0)
    assert simple.numel() == pruned.numel() == ctc.numel() == 1
    # icefall's sensitivity check found exactly these entries without effect.
    no_grad = sorted(name for name, p in model.named_parameters() if p.grad is None)
    assert no_grad == sorted(ref["state_dict_entries_without_effect_on_outputs"])
    for name, p in model.named_parameters():
        if name.endswith(UNUSED):
            assert p.grad is None, name
        else:
            assert p.grad is not None, name
            assert bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_early_training_with_all_randomisation_is_finite(seed):
    # Batch 0: layer skipping, module dropout, feature masks, pos-emb skipping,
    # ConvNeXt layer drop and dropout are all at their highest.
    model = fresh_model("--use-ctc", "1", seed=seed)
    train_step(model, batch_count=0.0, seed=seed)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert bool(torch.isfinite(p.grad).all()), name


@pytest.mark.parametrize("rnnt_type", ["regular", "modified"])
def test_transducer_loss_is_the_full_loss_when_nothing_is_pruned(rnnt_type):
    """With a prune range above S the pruned loss is the full RNN-T loss of
    the joiner (brute force, both topologies); the simple loss is finite."""
    model = fresh_model().eval()
    x, x_lens, y = tiny_batch(0)
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        simple, pruned = model.forward_transducer(enc, enc_lens, y, prune_range=max(map(len, y)) + 1,
                                                  rnnt_type=rnnt_type)
    want = brute_force_rnnt_loss(model.decoder, model.joiner, enc, enc_lens, y,
                                 modified=rnnt_type == "modified").sum().float()
    torch.testing.assert_close(pruned, want, rtol=1e-4, atol=1e-3)
    assert bool(torch.isfinite(simple)) and float(simple) > 0


def test_ctc_only_and_transducer_only_models_train():
    simple, pruned, ctc = train_step(fresh_model("--use-transducer", "0", "--use-ctc", "1"), 1000.0)
    assert simple.numel() == pruned.numel() == 0 and ctc.numel() == 1
    simple, pruned, ctc = train_step(fresh_model(), 1000.0)
    assert ctc.numel() == 0 and simple.numel() == 1


def test_eval_forward_is_deterministic_and_training_is_not():
    model = fresh_model("--use-ctc", "1")
    x, x_lens, _ = tiny_batch()
    model.eval()
    R.scaling.set_batch_count(model, 0.0)
    with torch.no_grad():
        a, _ = model.forward_encoder(x, x_lens)
        b, _ = model.forward_encoder(x, x_lens)
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, _ = model.forward_encoder(x, x_lens)
    assert not torch.allclose(a, c)


def causal_model(chunk_size, left_context_frames, seed: int = 0):
    model = fresh_model("--causal", "1", "--use-ctc", "1", seed=seed)
    # Random weights everywhere (the chunk-edge scales start at zero).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.encoder.chunk_size = tuple(chunk_size)
    model.encoder.left_context_frames = tuple(left_context_frames)
    return model


def test_causal_model_trains_with_chunk_masks():
    model = causal_model(chunk_size=(16,), left_context_frames=(32,))
    train_step(model, batch_count=100000.0)
    for name, p in model.named_parameters():
        if "chunkwise_conv_scale" in name or "causal_conv" in name:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_causal_model_draws_chunk_size_and_left_context_per_batch():
    encoder = causal_model(chunk_size=(16, 32, -1), left_context_frames=(64, 128, -1)).encoder
    random.seed(0)
    seen = {encoder.get_chunk_info() for _ in range(200)}
    assert seen == {(-1, -1), (16, 4), (16, 8), (16, -1), (32, 2), (32, 4), (32, -1)}
    assert fresh_model().encoder.get_chunk_info() == (-1, -1)


def brute_force_attn_mask(seq_len: int, chunk: int, left_chunks: int) -> torch.Tensor:
    mask = torch.zeros(seq_len, seq_len, dtype=torch.bool)
    for t in range(seq_len):
        for s in range(seq_len):
            visible = s // chunk <= t // chunk and (left_chunks < 0 or
                                                    s // chunk >= t // chunk - left_chunks)
            mask[t, s] = not visible
    return mask


def test_chunk_attention_mask_by_brute_force():
    encoder = causal_model(chunk_size=(16,), left_context_frames=(32,)).encoder
    x = torch.zeros(50, 1, 32)
    assert torch.equal(encoder._get_attn_mask(x, 16, 2), brute_force_attn_mask(50, 16, 2))
    assert torch.equal(encoder._get_attn_mask(x, 16, -1), brute_force_attn_mask(50, 16, -1))
    assert encoder._get_attn_mask(x, -1, -1) is None


@pytest.mark.parametrize("left_context_frames", [-1, 32])
def test_chunked_causal_encoder_never_sees_future_chunks(left_context_frames):
    """Output frame j (at 25 Hz) covers input frames 2j, 2j+1: with 16-frame
    chunks, outputs before chunk boundary b/2 must not change when frames >= b
    change, and must equal the encoder run on x[:b] alone."""
    model = causal_model(chunk_size=(16,), left_context_frames=(left_context_frames,)).eval()
    encoder = model.encoder
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 2, 32, generator=g)
    lens = torch.tensor([64, 64])
    with torch.no_grad():
        full, _ = encoder(x, lens)
        for b in (16, 32, 48):
            x2 = x.clone()
            x2[b:] = torch.randn(64 - b, 2, 32, generator=g)
            out, _ = encoder(x2, lens)
            torch.testing.assert_close(out[: b // 2], full[: b // 2], rtol=0, atol=1e-5)
            assert not torch.allclose(out[b // 2:], full[b // 2:], atol=1e-3)
            prefix, _ = encoder(x[:b], torch.tensor([b, b]))
            torch.testing.assert_close(prefix, full[: b // 2], rtol=1e-5, atol=1e-5)
        # Without chunking (-1) the same weights do see the future.
        encoder.chunk_size = (-1,)
        unchunked, _ = encoder(x, lens)
        x2 = x.clone()
        x2[48:] += 1.0
        assert not torch.allclose(encoder(x2, lens)[0][:8], unchunked[:8], atol=1e-4)


def test_limited_left_context_forgets_the_distant_past():
    """With one chunk of left context in attention, early frames still reach
    late ones through stacked layers and convolutions, but the outputs
    differ from those with unlimited left context."""
    x = torch.randn(96, 1, 32, generator=torch.Generator().manual_seed(3))
    lens = torch.tensor([96])
    with torch.no_grad():
        unlimited = causal_model((16,), (-1,)).eval().encoder(x, lens)[0]
        limited = causal_model((16,), (16,)).eval().encoder(x, lens)[0]
    torch.testing.assert_close(limited[:8], unlimited[:8], rtol=1e-5, atol=1e-5)  # chunk 0
    assert not torch.allclose(limited[-8:], unlimited[-8:], atol=1e-3)


# ----------------------------------------------------------------------------
# icefall's causal model in simulated streaming (icefall_zipformer_streaming_small.pt)


@pytest.fixture(scope="module")
def streaming_ref():
    return torch.load(DATA / "icefall_zipformer_streaming_small.pt", weights_only=True)


@pytest.mark.parametrize("setting", ["chunk16_left64", "chunk32_left128"])
def test_simulated_streaming_matches_icefall(streaming_ref, setting):
    """The causal model with one chunk size / left context, run on whole
    utterances with chunk masks, as icefall's decode.py does for causal models."""
    want = streaming_ref["outputs"][setting]
    model = R.model.build_model(config_for(want["argv"], vocab_size=50))
    model.load_state_dict(streaming_ref["model"], strict=True)
    model.eval()
    assert model.encoder.get_chunk_info() == (want["chunk_size"],
                                             want["left_context_frames"] // want["chunk_size"])
    x, x_lens = streaming_ref["inputs"]["x"], streaming_ref["inputs"]["x_lens"]
    with torch.no_grad():
        out, lens = model.forward_encoder(x, x_lens)
        assert_close(out, want["forward_encoder_nopad"]["encoder_out"], rtol=1e-4, atol_rel=1e-5)
        assert torch.equal(lens, want["forward_encoder_nopad"]["encoder_out_lens"])
        # decode.py pads 30 frames of log(1e-10) for causal models.
        sim = want["simulated_streaming"]
        feature = torch.nn.functional.pad(x, (0, 0, 0, 30), value=LOG_EPS)
        out, lens = model.forward_encoder(feature, x_lens + 30)
        assert_close(out, sim["encoder_out"], rtol=1e-4, atol_rel=1e-5)
        assert torch.equal(lens, sim["encoder_out_lens"])
        log_probs = model.ctc_output(out)
        assert_close(log_probs, sim["ctc_output"], rtol=1e-4, atol_rel=1e-5)
    assert greedy_search_batch(model, out, lens) == sim["greedy_search_batch_hyps"]
    ctc_hyps = []
    for lp, n in zip(log_probs, lens.tolist()):
        ids = torch.unique_consecutive(lp[:n].argmax(dim=-1)).tolist()
        ctc_hyps.append([i for i in ids if i != 0])
    assert ctc_hyps == sim["ctc_greedy_search_hyps"]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_relative_to_absolute_positions_by_brute_force():
    x = torch.randn(2, 3, 5, 9)
    want = torch.empty(2, 3, 5, 5)
    for i in range(5):
        for j in range(5):
            want[..., i, j] = x[..., i, 4 - i + j]  # offset j - i, stored at index offset + T - 1
    assert torch.equal(R.zipformer._rel_to_abs(x, 5), want)
    traced = torch.jit.trace(lambda t: R.zipformer._rel_to_abs(t, 5), (x,))
    assert torch.equal(traced(x), want)


def stream_utterance(model, feats: torch.Tensor, chunk: int, states=None):
    """icefall's DecodeStream + decode_one_chunk for one utterance: feats [T, 80]
    gets 13 + 30 frames of log(1e-10); each step takes 2 * chunk + 13 frames
    (the last one padded) and advances by 2 * chunk. Returns the encoder
    outputs of each chunk and the final states."""
    feats = torch.nn.functional.pad(feats, (0, 0, 0, 13 + 30), value=LOG_EPS)
    states = model.get_init_states(1) if states is None else states
    outs, done, chunk_len = [], 0, 2 * chunk + 13
    while done < feats.size(0):
        f = feats[done: done + chunk_len]
        done += 2 * chunk
        f = torch.nn.functional.pad(f, (0, 0, 0, chunk_len - f.size(0)), value=LOG_EPS)
        out, lens, states = model.streaming_forward(f[None], torch.tensor([chunk_len]), states)
        assert out.shape[1] == int(lens[0]) == chunk // 2
        outs.append(out)
    return outs, states, feats.size(0)


@pytest.mark.parametrize("setting", ["chunk16_left64", "chunk32_left128"])
def test_chunk_by_chunk_streaming_matches_icefall(streaming_ref, setting):
    """State-carrying streaming, as icefall's streaming_decode.py with greedy search."""
    want = streaming_ref["outputs"][setting]
    model = R.model.build_model(config_for(want["argv"], vocab_size=50))
    model.load_state_dict(streaming_ref["model"], strict=True)
    model.eval()
    x, x_lens = streaming_ref["inputs"]["x"], streaming_ref["inputs"]["x_lens"]
    for b, w in enumerate(want["streaming"]):
        init = model.get_init_states(1)
        assert [list(s.shape) for s in init] == [list(s) for s in w["initial_state_shapes"]]
        with torch.no_grad():
            outs, states, num_frames = stream_utterance(model, x[b, : x_lens[b]],
                                                        want["chunk_size"], init)
        assert num_frames == w["num_frames_after_pad"] and len(outs) == w["num_chunks"]
        assert [list(s.shape) for s in states] == [list(s) for s in w["final_state_shapes"]]
        assert int(states[-1]) == w["done_frames"] * 2
        enc = torch.cat(outs, dim=1)
        assert_close(enc, w["encoder_out_concat"], rtol=1e-4, atol_rel=1e-5)
        hyp = greedy_search_batch(model, enc, torch.tensor([enc.size(1)]))[0]
        assert hyp == w["greedy_search_hyp"]


def test_streaming_a_batch_equals_streaming_each_utterance(streaming_ref):
    want = streaming_ref["outputs"]["chunk16_left64"]
    model = R.model.build_model(config_for(want["argv"], vocab_size=50))
    model.load_state_dict(streaming_ref["model"], strict=True)
    model.eval()
    x = streaming_ref["inputs"]["x"]  # 250 frames: 6 chunks need 32 * 5 + 45
    with torch.no_grad():
        single = [stream_utterance(model, x[b], 16)[0][:6] for b in range(2)]
        states = R.model.stack_states([model.get_init_states(1), model.get_init_states(1)])
        for c in range(6):
            out, _, states = model.streaming_forward(x[:, 32 * c: 32 * c + 45],
                                                     torch.tensor([45, 45]), states)
            for b in range(2):
                torch.testing.assert_close(out[b: b + 1], single[b][c], rtol=1e-5, atol=1e-5)
        # unstack_states is stack_states' inverse
        again = R.model.stack_states(R.model.unstack_states(states))
        assert all(torch.equal(a, b) for a, b in zip(again, states))


def test_configs_saved_before_embed_channels_still_load_icefalls_weights(ref):
    config = config_for(ref["config"]["argv"], vocab_size=50, blank_id=0)
    assert config["embed_channels"] == [8, 32, 128, 384]  # icefall's front end by default
    del config["embed_channels"]  # as in configs written before the flag existed
    model = R.model.build_model(config)
    model.load_state_dict(ref["model"], strict=True)
    assert model.config["embed_channels"] == [8, 32, 128, 384]
    config["embed_channels"] = [8, 32, 128]
    with pytest.raises(ValueError, match="embed_channels needs 4"):
        R.model.build_model(config)

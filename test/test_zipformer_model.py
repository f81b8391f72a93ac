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
import importlib
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "zipformer"
DATA = Path(__file__).resolve().parent / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icefall.beam_search import greedy_search_batch  # noqa: E402

RECIPE_MODULES = ("scaling_schedule", "scaling_grad", "scaling", "subsampling", "zipformer",
                  "decoder", "joiner", "model")


def import_recipe() -> SimpleNamespace:
    """The zipformer recipe's modules, imported without clashing with the
    pts3 recipe's modules of the same names (model, scaling, ...)."""
    saved = {n: sys.modules.pop(n) for n in RECIPE_MODULES if n in sys.modules}
    sys.path.insert(0, str(RECIPE))
    try:
        return SimpleNamespace(**{n: importlib.import_module(n) for n in RECIPE_MODULES})
    finally:
        sys.path.remove(str(RECIPE))
        for n in RECIPE_MODULES:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


R = import_recipe()


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


def test_frames_after_subsampling_matches_the_model():
    for t in (9, 10, 11, 57, 120, 121):
        assert R.model.frames_after_subsampling(t) == ((t - 7) // 2 + 1) // 2
    model = small_model_from(torch.load(DATA / "icefall_zipformer_small.pt",
                                        weights_only=True))
    with torch.no_grad():
        for t in (9, 15, 40, 41):
            out, lens = model.forward_encoder(torch.randn(1, t, 80), torch.tensor([t]))
            assert out.shape[1] == int(lens[0]) == R.model.frames_after_subsampling(t)


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
        assert g._proportion_positive_to_mean(cfg["min_positive"]) == pytest.approx(args["min_mean"])
        assert g._proportion_positive_to_mean(cfg["max_positive"]) == pytest.approx(args["max_mean"])
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
    y, grad_in = run_backward(lambda x: g.LimitParamValue.apply(x, c["args"]["min"], c["args"]["max"]),
                              c["x"], c["grad_out"])
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
    # With gradients: the derivative is stored as a byte with random dither, as
    # icefall does; the same seed draws the same dither.
    torch.manual_seed(want["grad_in_quantized_seed"])
    y, grad_in = run_backward(module, x, grad_out)
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

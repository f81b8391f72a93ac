"""Tests of the pruned_transducer_stateless3 model against icefall.

References (test/data):
- icefall_pts3_state_dict.json: names/shapes/dtypes of icefall's default model.
- icefall_pts3_small.pt: a small model built and run by icefall's own code
  (see icefall_pts3_small.md): weights, inputs, and icefall's outputs.
"""

import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "pruned_transducer_stateless3"
DATA = Path(__file__).resolve().parent / "data"
for p in (str(ROOT), str(RECIPE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from conformer import RelPositionMultiheadAttention  # noqa: E402
from model import build_model, default_config, load_icefall_state_dict  # noqa: E402
from scaling import ActivationBalancerFunction, DoubleSwish  # noqa: E402
from transducer_brute_force import brute_force_rnnt_loss  # noqa: E402


@pytest.fixture(scope="module")
def ref():
    return torch.load(DATA / "icefall_pts3_small.pt")


@pytest.fixture(scope="module")
def small_model(ref):
    model = build_model(ref["config"])
    load_icefall_state_dict(model, ref["model"])
    return model.eval()


def assert_close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_default_state_dict_matches_icefall():
    rows = json.loads((DATA / "icefall_pts3_state_dict.json").read_text())
    want = {name: (shape, dtype) for name, shape, dtype in rows}
    model = build_model(default_config())
    got = {k: (list(v.shape), str(v.dtype).replace("torch.", ""))
           for k, v in model.state_dict().items()}
    assert sorted(set(want) - set(got)) == [], "missing tensors"
    assert sorted(set(got) - set(want)) == [], "extra tensors"
    bad = [(k, got[k], want[k]) for k in want if got[k] != want[k]]
    assert bad == []
    assert len(got) == 557
    # 78,648,040 parameters; the one other element is the out_norm.eps buffer.
    assert sum(p.numel() for p in model.parameters()) == 78_648_040
    assert sum(math.prod(s) for s, _ in want.values()) == 78_648_041


def test_encoder_matches_icefall(ref, small_model):
    x, x_lens = ref["inputs"]["x"], ref["inputs"]["x_lens"]
    with torch.no_grad():
        out, out_lens = small_model.encoder(x, x_lens)
        out_warm, _ = small_model.encoder(x, x_lens, warmup=0.3)
    assert torch.equal(out_lens, ref["outputs"]["encoder_out_lens"])
    assert_close(out, ref["outputs"]["encoder_out"])
    assert torch.equal(out, out_warm)  # warmup only acts in training


def test_decoder_joiner_projections_match_icefall(ref, small_model):
    inputs, outputs = ref["inputs"], ref["outputs"]
    m = small_model
    with torch.no_grad():
        enc = outputs["encoder_out"]
        dec = m.decoder(inputs["sos_y_padded"])
        assert_close(dec, outputs["decoder_out"])
        # -1 marks "no token yet" in beam search: it must embed to zeros
        assert_close(m.decoder(inputs["decoder_context"], need_pad=False),
                     outputs["decoder_out_context"])
        assert_close(m.joiner(enc.unsqueeze(2), dec.unsqueeze(1)), outputs["joiner_out"])
        assert_close(m.simple_am_proj(enc), outputs["simple_am"])
        assert_close(m.simple_lm_proj(dec), outputs["simple_lm"])


def test_greedy_search_matches_icefall(ref, small_model):
    """Batch greedy search (one symbol per frame) written against the call
    conventions beam search uses: decoder(need_pad=False), projections, then
    joiner(project_input=False)."""
    m = small_model
    enc, lens = ref["outputs"]["encoder_out"], ref["outputs"]["encoder_out_lens"]
    blank, ctx = m.decoder.blank_id, m.decoder.context_size
    hyps = [[-1] * (ctx - 1) + [blank] for _ in range(enc.size(0))]
    with torch.no_grad():
        enc_proj = m.joiner.encoder_proj(enc)
        for t in range(enc.size(1)):
            context = torch.tensor([h[-ctx:] for h in hyps])
            dec_proj = m.joiner.decoder_proj(m.decoder(context, need_pad=False))
            logits = m.joiner(enc_proj[:, t:t + 1].unsqueeze(2), dec_proj.unsqueeze(1),
                              project_input=False)
            for i, k in enumerate(logits.reshape(enc.size(0), -1).argmax(-1).tolist()):
                if t < lens[i] and k != blank:
                    hyps[i].append(k)
    assert [h[ctx:] for h in hyps] == ref["outputs"]["greedy_search_batch"]


def test_greedy_search_max_sym_per_frame_matches_icefall(ref, small_model):
    """Single-utterance greedy search allowing up to 3 symbols per frame."""
    m = small_model
    blank, ctx = m.decoder.blank_id, m.decoder.context_size
    results = []
    with torch.no_grad():
        for enc, T in zip(ref["outputs"]["encoder_out"], ref["outputs"]["encoder_out_lens"]):
            enc_proj = m.joiner.encoder_proj(enc[:T])
            hyp, t, emitted = [-1] * (ctx - 1) + [blank], 0, 0
            while t < T:
                dec = m.joiner.decoder_proj(m.decoder(torch.tensor([hyp[-ctx:]]), need_pad=False))
                k = int(m.joiner(enc_proj[t].reshape(1, 1, 1, -1), dec.unsqueeze(1),
                                 project_input=False).argmax())
                if k != blank and emitted < 3:
                    hyp.append(k)
                    emitted += 1
                else:
                    t, emitted = t + 1, 0
            results.append(hyp[ctx:])
    assert results == ref["outputs"]["greedy_search_max_sym3"]


def test_a_modified_model_is_decoded_one_token_per_frame(ref, caplog):
    """A model whose config says rnnt_type "modified" gives icefall's
    one-token-per-frame greedy result even when asked for 3 (with a warning),
    refuses Graves' beam_search in one line, and its config round-trips; the
    same weights as a regular model give icefall's 3-per-frame result."""
    from icefall.cli import UserError
    from icefall.decoding import check_method, decode_encoder_output, max_sym_for

    enc, enc_lens = ref["outputs"]["encoder_out"], ref["outputs"]["encoder_out_lens"]
    regular = build_model(ref["config"])
    modified = build_model({**ref["config"], "rnnt_type": "modified"})
    for m in (regular, modified):
        load_icefall_state_dict(m, ref["model"])
        m.eval()
    got = decode_encoder_output(modified, enc, enc_lens, "greedy_search", max_sym_per_frame=3)
    assert got == ref["outputs"]["greedy_search_batch"]
    got = decode_encoder_output(regular, enc, enc_lens, "greedy_search", max_sym_per_frame=3)
    assert got == ref["outputs"]["greedy_search_max_sym3"]

    with caplog.at_level(logging.WARNING):
        assert max_sym_for(modified, "greedy_search", 3) == 1
    assert "--max-sym-per-frame 3" in caplog.text and "modified" in caplog.text
    assert max_sym_for(regular, "greedy_search", 3) == 3
    assert max_sym_for(modified, "modified_beam_search", 3) == 3
    with pytest.raises(UserError, match="--decoding-method beam_search: .*modified_beam_search"):
        check_method(modified, "beam_search")
    check_method(regular, "beam_search")
    check_method(modified, "modified_beam_search")

    assert build_model(json.loads(json.dumps(modified.config))).config["rnnt_type"] == "modified"
    # train.py's --rnnt-type reaches the saved config; decoding flags (no such flag) and
    # regular training leave it out, so icefall-shaped configs stay as they were.
    import argparse

    from model import SIZE_FLAGS, config_from_args

    args = argparse.Namespace(**SIZE_FLAGS)
    assert "rnnt_type" not in config_from_args(args, 50)
    assert "rnnt_type" not in config_from_args(argparse.Namespace(**SIZE_FLAGS, rnnt_type="regular"), 50)
    assert config_from_args(argparse.Namespace(**SIZE_FLAGS, rnnt_type="modified"), 50)["rnnt_type"] == "modified"
    with pytest.raises(ValueError, match="rnnt_type"):
        build_model({**ref["config"], "rnnt_type": "constrained"})


def test_activation_balancer_grad_matches_icefall(ref):
    b = ref["balancer"]
    x = b["x"].clone().requires_grad_(True)
    a = b["args"]
    y = ActivationBalancerFunction.apply(x, a["channel_dim"], a["min_positive"],
                                         a["max_positive"], a["max_factor"],
                                         a["min_abs"], a["max_abs"])
    assert torch.equal(y, b["x"])
    y.backward(b["out_grad"])
    assert_close(x.grad, b["x_grad"])
    assert not torch.equal(x.grad, b["out_grad"])  # the case does modify grads


def test_double_swish_value_and_grad():
    x = (torch.randn(7, 5, dtype=torch.float64) * 3).requires_grad_(True)
    assert torch.allclose(DoubleSwish()(x), x * torch.sigmoid(x - 1))
    assert torch.autograd.gradcheck(DoubleSwish(), (x,))


def test_rel_shift_brute_force():
    B, H, T = 2, 3, 5
    x = torch.randn(B, H, T, 2 * T - 1)
    got = RelPositionMultiheadAttention._rel_shift(x)
    # column c of x is relative position T-1-c; out[i, j] is position i - j
    want = torch.stack([torch.stack([x[:, :, i, T - 1 - i + j] for j in range(T)], -1)
                        for i in range(T)], 2)
    assert torch.equal(got, want)


def test_load_icefall_state_dict_drops_giga_heads(ref, caplog):
    model = build_model(ref["config"])
    sd = dict(ref["model"])
    sd["decoder_giga.embedding.weight"] = torch.zeros(3)
    sd["simple_am_proj_giga.weight"] = torch.zeros(3)
    with caplog.at_level(logging.INFO):
        load_icefall_state_dict(model, {"model": sd})
    assert "dropping 2" in caplog.text
    sd["something_else"] = torch.zeros(1)
    with pytest.raises(RuntimeError):
        load_icefall_state_dict(model, sd)


def test_build_model_rejects_bad_config():
    with pytest.raises(ValueError, match="nhead"):
        build_model({k: v for k, v in default_config().items() if k != "nhead"})
    with pytest.raises(ValueError, match="d_model"):
        build_model({**default_config(), "d_model": 512})


def test_subsampling_channels_flag():
    """--subsampling-channels sizes the front end's convolutions and is saved
    in the config only when it differs from icefall's 8,32,128 (so configs of
    icefall-sized models stay as they were); a malformed value is refused."""
    import argparse

    from model import add_model_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert "subsampling_channels" not in config_from_args(parser.parse_args([]), 30)
    args = parser.parse_args(["--subsampling-channels", "4,16,64", "--encoder-dim", "48",
                              "--nhead", "4", "--num-encoder-layers", "1"])
    config = config_from_args(args, 30)
    assert config["subsampling_channels"] == [4, 16, 64]
    convs = build_model(config).encoder.encoder_embed.conv
    assert [tuple(convs[i].weight.shape) for i in (0, 3, 6)] == [(4, 1, 3, 3), (16, 4, 3, 3), (64, 16, 3, 3)]
    out = build_model(config).encoder.encoder_embed.out
    assert tuple(out.weight.shape) == (48, 64 * 19)  # 80 bins -> 19 after two stride-2 convs
    for bad in ("4,16", "4,x,64", "0,16,64"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--subsampling-channels", bad])


def test_small_model_trains_in_train_mode():
    """Training mode: dropout, layer bypass, balancers; gradients reach all
    parameters except the eps buffer."""
    torch.manual_seed(0)
    config = {**default_config(), "encoder_dim": 64, "nhead": 4, "dim_feedforward": 96,
              "num_encoder_layers": 2, "vocab_size": 30, "decoder_dim": 32,
              "joiner_dim": 48}
    model = build_model(config).train()
    x, x_lens = torch.randn(3, 40, 80), torch.tensor([40, 33, 20])
    enc, lens = model.encoder(x, x_lens, warmup=0.2)
    assert enc.shape == (3, 9, 64) and lens.tolist() == [9, 7, 4]
    dec = model.decoder(torch.randint(0, 30, (3, 6)))
    assert dec.shape == (3, 6, 32)
    logits = model.joiner(enc.unsqueeze(2), dec.unsqueeze(1))
    assert logits.shape == (3, 9, 6, 30)
    (logits.logsumexp(-1).sum() + model.simple_am_proj(enc).sum()
     + model.simple_lm_proj(dec).sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_dropout_config_reaches_every_layer():
    """With dropout and layer dropout 0 (train.py --dropout 0 --layer-dropout 0)
    a warmed-up encoder gives in training mode exactly what it gives in eval
    mode; with the defaults it does not."""
    torch.manual_seed(0)
    base = {**default_config(), "encoder_dim": 64, "nhead": 4, "dim_feedforward": 96,
            "num_encoder_layers": 2, "vocab_size": 30, "decoder_dim": 32, "joiner_dim": 48}
    x, x_lens = torch.randn(2, 60, 80), torch.tensor([60, 45])
    for config, same in (({**base, "dropout": 0.0, "layer_dropout": 0.0}, True), (base, False)):
        model = build_model(config)
        with torch.no_grad():
            train_out = model.train().encoder(x, x_lens, warmup=2.0)[0]
            eval_out = model.eval().encoder(x, x_lens, warmup=2.0)[0]
        assert torch.equal(train_out, eval_out) == same


def _brute_force_rnnt_loss(model, enc, enc_lens, y, modified=False):
    return brute_force_rnnt_loss(model.decoder, model.joiner, enc, enc_lens, y, modified)


def test_forward_loss_modified_topology(ref, small_model):
    """rnnt_type="modified" (at most one token per frame): with prune_range
    > S the pruned loss is the full modified loss, checked against brute
    force, and differs from the regular loss."""
    model = small_model
    x, x_lens, y = ref["inputs"]["x"], ref["inputs"]["x_lens"], ref["inputs"]["y"]
    enc, enc_lens = ref["outputs"]["encoder_out"], ref["outputs"]["encoder_out_lens"]
    prune_range = max(len(ids) for ids in y) + 1
    simple, pruned = model(x, x_lens, y, prune_range=prune_range, reduction="none", rnnt_type="modified")
    want = _brute_force_rnnt_loss(model, enc, enc_lens, y, modified=True).float()
    torch.testing.assert_close(pruned, want, rtol=1e-4, atol=1e-3)
    regular = _brute_force_rnnt_loss(model, enc, enc_lens, y).float()
    assert torch.all((want - regular).abs() > 1e-2), (want, regular)
    # A model whose config says "modified" (as train.py --rnnt-type writes it)
    # trains on that topology without being told again.
    own = build_model({**ref["config"], "rnnt_type": "modified"})
    load_icefall_state_dict(own, ref["model"])
    _, pruned = own.eval()(x, x_lens, y, prune_range=prune_range, reduction="none")
    torch.testing.assert_close(pruned, want, rtol=1e-4, atol=1e-3)


def test_forward_loss(ref, small_model):
    """With prune_range > S the pruned loss is the full RNN-T loss, which is
    checked against brute force."""
    model = small_model
    x, x_lens, y = ref["inputs"]["x"], ref["inputs"]["x_lens"], ref["inputs"]["y"]
    simple, pruned = model(x, x_lens, y, prune_range=5, reduction="none")
    assert simple.shape == pruned.shape == (2,)
    enc, enc_lens = ref["outputs"]["encoder_out"], ref["outputs"]["encoder_out_lens"]
    want = _brute_force_rnnt_loss(model, enc, enc_lens, y).float()
    torch.testing.assert_close(pruned, want, rtol=1e-4, atol=1e-3)

    model.train()
    try:
        simple_sum, pruned_sum = model(x, x_lens, y, prune_range=3, am_scale=0.25,
                                       lm_scale=0.25, warmup=0.5)
        assert simple_sum.ndim == 0 and torch.isfinite(simple_sum + pruned_sum)
        (0.5 * simple_sum + pruned_sum).backward()
        assert model.encoder.encoder_embed.out.weight.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_ctc_head_is_optional_and_trains_with_the_transducer(ref):
    """use_ctc adds icefall Zipformer's ctc_output (and nothing else) to the
    state_dict; icefall's own configs stay without it; the third loss is the
    CTC loss of the head's log-probs (icefall.ctc_loss is tested against
    brute force) and gets gradients to the encoder."""
    import argparse

    from icefall.ctc_loss import ctc_loss
    from model import add_model_arguments, config_from_args

    config = {**ref["config"], "use_ctc": True}
    torch.manual_seed(0)
    model = build_model(config)
    plain = set(build_model(ref["config"]).state_dict())
    assert set(model.state_dict()) - plain == {"ctc_output.1.weight", "ctc_output.1.bias"}
    assert plain == set(ref["model"]) - {k for k in ref["model"] if k.startswith("ctc")}

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args([])
    assert "use_ctc" not in config_from_args(args, 30)
    args.use_ctc = True  # train.py's flag
    assert config_from_args(args, 30)["use_ctc"] is True

    model.eval()
    x, x_lens = torch.randn(2, 120, 80), torch.tensor([120, 90])
    y = [[5, 6, 7], [8, 9]]
    simple, pruned, ctc = model(x, x_lens, y, reduction="none")
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        want = ctc_loss(model.ctc_output(enc), enc_lens, y, reduction="none")
    assert simple.shape == pruned.shape == ctc.shape == (2,)
    torch.testing.assert_close(ctc.detach(), want)
    model.train()
    sum(model(x, x_lens, y, warmup=2.0)).backward()
    assert model.ctc_output[1].weight.grad.abs().sum() > 0
    assert model.encoder.encoder_embed.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("with_ctc", [False, True])
def test_compute_loss_leaves_out_non_finite_utterances(with_ctc):
    """train.compute_loss on per-utterance losses with known values: an
    utterance whose simple, pruned or CTC loss is not finite is left out of
    every sum; with none finite the loss is nan."""
    import importlib.util

    from icefall.utils import AttributeDict

    # By file, not `import train`: another test may have imported the
    # Zipformer recipe's train.py under that name first.
    spec = importlib.util.spec_from_file_location("pts3_train_for_loss", RECIPE / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)

    simple = torch.tensor([1.0, 2.0, math.inf, 4.0])
    pruned = torch.tensor([10.0, 20.0, 30.0, 40.0])
    ctc = torch.tensor([100.0, math.nan, 300.0, 400.0])

    class Fixed(torch.nn.Module):
        def __init__(self, losses):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.losses = losses

        def forward(self, **kwargs):
            return self.losses

    params = AttributeDict(batch_idx_train=1000, model_warm_step=100, prune_range=5, am_scale=0.0,
                           lm_scale=0.25, simple_loss_scale=0.5, ctc_loss_scale=0.2,
                           subsampling_factor=4)
    batch = {"inputs": torch.zeros(4, 40, 80),
             "supervisions": {"num_frames": torch.tensor([40, 40, 40, 40]), "token_ids": [[1]] * 4}}
    losses = (simple, pruned, ctc) if with_ctc else (simple, pruned)
    loss, info = train.compute_loss(params, Fixed(losses), batch, is_training=False)
    kept = [0, 3] if with_ctc else [0, 1, 3]
    want = sum(0.5 * float(simple[i]) + float(pruned[i]) for i in kept)
    if with_ctc:
        want += 0.2 * sum(float(ctc[i]) for i in kept)
        assert info["ctc_loss"] == 500.0
    assert float(loss) == pytest.approx(want)
    assert info["utterances"] == len(kept) and info["frames"] == 10 * len(kept)
    assert info["simple_loss"] == sum(float(simple[i]) for i in kept)

    nan = torch.full((4,), math.nan)
    loss, info = train.compute_loss(params, Fixed((nan, pruned, ctc)), batch, is_training=False)
    assert math.isnan(float(loss)) and info["utterances"] == 0

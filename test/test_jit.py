"""Tests of pruned_transducer_stateless3/jit.py: cpu_jit.pt decodes as the eager model.

The reference is the eager PyTorch model; the TorchScript file is traced at
one length and must follow other lengths and batch compositions (the padding
mask, the relative positional encodings and the relative shift depend on T).
"""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "pruned_transducer_stateless3"
for p in (str(ROOT), str(RECIPE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from icefall.beam_search import decode_batch  # noqa: E402
from jit import example_features, export_jit, load_jit, rel_pos_emb, rel_shift_gather  # noqa: E402
from model import build_model, default_config  # noqa: E402

SMALL = dict(encoder_dim=64, nhead=4, dim_feedforward=128, num_encoder_layers=2,
             vocab_size=50, decoder_dim=64, joiner_dim=64)


def small_model(seed: int = 0, context_size: int = 2, subsampling_factor: int = 4):
    torch.manual_seed(seed)
    model = build_model({**default_config(), **SMALL, "context_size": context_size,
                         "subsampling_factor": subsampling_factor})
    return model.eval()


@pytest.fixture(scope="module")
def jit_file(tmp_path_factory):
    model = small_model()
    path = tmp_path_factory.mktemp("jit") / "cpu_jit.pt"
    export_jit(model, path)
    return model, path


@pytest.fixture(scope="module")
def models(jit_file):
    model, path = jit_file
    return model, load_jit(path)


def test_cpu_jit_offers_forward_encoder(models):
    model, jit_model = models
    x, x_lens = example_features(80, [40, 25])
    with torch.no_grad():
        for got, want in zip(jit_model.forward_encoder(x, x_lens), model.forward_encoder(x, x_lens)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cpu_jit_holds_no_absolute_paths_of_the_repo_or_venv(jit_file):
    import zipfile

    _, path = jit_file
    needles = [str(ROOT).encode(), str(Path(sys.prefix)).encode(), str(Path(torch.__file__).parent).encode()]
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert any("/code/" in n for n in names)
        leaks = [n for n in names if any(needle in z.read(n) for needle in needles)]
    assert leaks == []


def test_rel_pos_emb_and_shift_match_the_conformer():
    model = small_model()
    for T in (1, 2, 17):
        x = torch.zeros(1, T, 64)
        _, want = model.encoder.encoder_pos(x)
        torch.testing.assert_close(rel_pos_emb(T, 64, x), want, rtol=0, atol=1e-6)
        scores = torch.randn(2, 3, T, 2 * T - 1)
        attn = model.encoder.encoder.layers[0].self_attn
        assert torch.equal(rel_shift_gather(scores), attn._rel_shift(scores))


LENGTHS = [[100], [37], [9], [250, 150, 31, 7], [64, 64], [13, 200]]


@pytest.mark.parametrize("lens", LENGTHS, ids=[str(x) for x in LENGTHS])
def test_encoder_matches_eager(models, lens):
    model, jit_model = models
    x, x_lens = example_features(80, lens)
    with torch.no_grad():
        want, want_lens = model.encoder(x, x_lens)
        got, got_lens = jit_model.encoder(x, x_lens)
    assert torch.equal(got_lens, want_lens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_batch_composition_does_not_change_an_utterance(models):
    _, jit_model = models
    x, x_lens = example_features(80, [150])
    xb, xb_lens = example_features(80, [230, 150, 41])
    xb[1, :150] = x[0]
    with torch.no_grad():
        alone, _ = jit_model.encoder(x, x_lens)
        batched, lens = jit_model.encoder(xb, xb_lens)
    n = int(lens[1])
    torch.testing.assert_close(batched[1, :n], alone[0, :n], rtol=1e-4, atol=1e-4)


def test_decoder_and_joiner_match_eager(models):
    model, jit_model = models
    c = model.decoder.context_size
    assert jit_model.decoder.context_size == c
    assert jit_model.decoder.blank_id == model.decoder.blank_id
    y = torch.randint(-1, 50, (9, c), generator=torch.Generator().manual_seed(1))
    y[0] = torch.tensor([-1] * (c - 1) + [0])
    with torch.no_grad():
        want = model.decoder(y, need_pad=False)
        assert torch.equal(jit_model.decoder(y, need_pad=False), want)
        enc = torch.randn(4, 1, 1, 64)
        dec = torch.randn(4, 1, 1, 64)
        assert torch.equal(jit_model.joiner.encoder_proj(enc), model.joiner.encoder_proj(enc))
        assert torch.equal(jit_model.joiner.decoder_proj(dec), model.joiner.decoder_proj(dec))
        assert torch.equal(jit_model.joiner(enc, dec, project_input=False),
                           model.joiner(enc, dec, project_input=False))
        assert torch.equal(jit_model.joiner(enc, dec), model.joiner(enc, dec))


@pytest.mark.parametrize("method", ["greedy_search", "modified_beam_search"])
def test_decoding_is_identical(models, method):
    model, jit_model = models
    x, x_lens = example_features(80, [251, 97, 30, 9])
    with torch.no_grad():
        want = decode_batch(model, *model.encoder(x, x_lens), method)
        got = decode_batch(jit_model, *jit_model.encoder(x, x_lens), method)
    assert got == want
    assert sum(len(h) for h in want) > 50  # the random model emits symbols


def test_bigram_decoder(tmp_path):
    model = small_model(seed=1, context_size=1)
    export_jit(model, tmp_path / "cpu_jit.pt")
    jit_model = load_jit(tmp_path / "cpu_jit.pt")
    assert jit_model.decoder.context_size == 1
    x, x_lens = example_features(80, [120, 45])
    with torch.no_grad():
        want = decode_batch(model, *model.encoder(x, x_lens), "greedy_search")
        got = decode_batch(jit_model, *jit_model.encoder(x, x_lens), "greedy_search")
    assert got == want and len(want[0]) > 5


def test_export_jit_detects_a_frozen_trace(tmp_path, monkeypatch):
    import jit
    from conformer import RelPositionMultiheadAttention

    # The eager relative shift is right in eager mode, but as_strided's
    # strides are frozen by tracing: the check at other lengths must fail.
    monkeypatch.setattr(jit, "rel_shift_gather", RelPositionMultiheadAttention._rel_shift)
    with pytest.raises(RuntimeError, match="encoder"):
        export_jit(small_model(), tmp_path / "cpu_jit.pt")
    assert not (tmp_path / "cpu_jit.pt").exists()


def test_a_factor_6_model_traces_with_its_own_lengths(tmp_path):
    """The traced encoder of a 60 ms model follows its length rule, not 40 ms's."""
    model = small_model(subsampling_factor=6)
    path = tmp_path / "cpu_jit.pt"
    export_jit(model, path)
    jit_model = load_jit(path)
    x, x_lens = example_features(80, [150, 61, 13, 7])
    with torch.no_grad():
        want, want_lens = model.encoder(x, x_lens)
        got, got_lens = jit_model.encoder(x, x_lens)
    assert want_lens.tolist() == [24, 10, 2, 1] and want.shape[1] == 24
    assert torch.equal(got_lens, want_lens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

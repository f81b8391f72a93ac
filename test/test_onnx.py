"""Tests of export-onnx.py, icefall/onnx_decode.py and onnx_pretrained.py.

A small random model (its blank logit biased so that about half the frames
emit a symbol) is exported to ONNX; the references are the PyTorch model
(outputs of each part, and greedy/beam decoding through pretrained.py) and
an independent decoder of the same files: sherpa-onnx.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

import onnx  # noqa: E402
import onnxruntime  # noqa: E402,F401  (a required dependency of this module)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "pruned_transducer_stateless3"
for p in (str(ROOT), str(RECIPE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from icefall.audio import read_audio  # noqa: E402
from icefall.beam_search import decode_batch  # noqa: E402
from icefall.checkpoint import atomic_save  # noqa: E402
from icefall.features import compute_fbank  # noqa: E402
from icefall.onnx_decode import (OnnxTransducer, compute_fbank_knf, decode_waveforms,  # noqa: E402
                                 greedy_search, modified_beam_search, skip_ids_for)
from icefall.tokens import SymbolTable  # noqa: E402
from jit import example_features  # noqa: E402
from model import build_model, default_config  # noqa: E402

SMALL = dict(encoder_dim=64, nhead=4, dim_feedforward=128, num_encoder_layers=2,
             vocab_size=50, decoder_dim=64, joiner_dim=64)
LOG_EPS = float(np.log(1e-10))
NUM_FILES = 16


def _export_onnx_module():
    spec = importlib.util.spec_from_file_location("export_onnx", RECIPE / "export-onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _signal(rng: np.random.RandomState, seconds: float) -> np.ndarray:
    """A voiced-like signal: harmonics of a wandering f0, syllable envelope, noise."""
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    f0 = 100 + 80 * rng.rand() + 30 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.rand()), 0, None)
    x = x * envelope + 0.05 * rng.randn(n)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _features(waves):
    feats = compute_fbank(waves)
    x = pad_sequence(feats, batch_first=True, padding_value=LOG_EPS)
    return x, torch.tensor([f.size(0) for f in feats])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import soundfile as sf

    tmp = tmp_path_factory.mktemp("onnx")
    rng = np.random.RandomState(0)
    files = []
    for i in range(NUM_FILES):
        path = tmp / f"utt{i:02d}.wav"
        sf.write(str(path), _signal(rng, rng.uniform(0.3, 3.0)), 16000, subtype="PCM_16")
        files.append(path)
    waves = [read_audio(f) for f in files]

    torch.manual_seed(0)
    config = {**default_config(), **SMALL}
    model = build_model(config).eval()
    # Bias blank so that about half of the first decisions are blank: then
    # utterances of a batch emit on different frames.
    x, x_lens = _features(waves)
    with torch.no_grad():
        enc, enc_lens = model.encoder(x, x_lens)
        dec = model.decoder(torch.tensor([[-1, 0]]), need_pad=False)
        logits = model.joiner(enc.unsqueeze(2), dec.unsqueeze(1))[..., 0, :]
        valid = torch.arange(enc.size(1)) < enc_lens.unsqueeze(1)
        margin = (logits[..., 1:].max(-1).values - logits[..., 0])[valid]
        model.joiner.output_linear.bias[0] += margin.median()

    ckpt = tmp / "pretrained.pt"
    atomic_save({"model": model.state_dict(), "config": config}, ckpt)
    # No <unk>: sherpa-onnx handles <unk> like blank, icefall.beam_search does not.
    symbols = ["<blk>", "<sos/eos>"] + [("\u2581" if i % 3 == 0 else "") + f"t{i}" for i in range(2, 50)]
    tokens = tmp / "tokens.txt"
    tokens.write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)), encoding="utf-8")

    out = tmp / "exp"
    rc = _export_onnx_module().main(["--checkpoint", str(ckpt), "--tokens", str(tokens),
                                     "--output-dir", str(out)])
    assert rc == 0
    with torch.no_grad():
        greedy = decode_batch(model, *model.encoder(x, x_lens), "greedy_search")
    return dict(model=model, out=out, files=files, waves=waves, ckpt=ckpt, tokens=tokens,
                symbols=symbols, greedy=greedy, x=x, x_lens=x_lens)


def _onnx_model(out: Path, suffix: str = "") -> OnnxTransducer:
    return OnnxTransducer(out / f"encoder{suffix}.onnx", out / f"decoder{suffix}.onnx",
                          out / f"joiner{suffix}.onnx")


def test_files_checker_and_metadata(setup):
    out = setup["out"]
    for name in ("encoder", "decoder", "joiner"):
        for suffix in ("", ".int8"):
            onnx.checker.check_model(onnx.load(str(out / f"{name}{suffix}.onnx")))
    assert (out / "tokens.txt").read_text() == setup["tokens"].read_text()

    def meta(name):
        return {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}

    assert meta("encoder.onnx")["model_type"] == "conformer"
    assert meta("encoder.onnx")["feature_dim"] == "80"
    assert meta("decoder.onnx")["context_size"] == "2"
    assert meta("decoder.onnx")["vocab_size"] == "50"
    assert meta("decoder.onnx")["blank_id"] == "0"
    assert meta("joiner.onnx")["joiner_dim"] == "64"
    q = _onnx_model(out, ".int8")  # loads, and keeps the metadata
    assert (q.context_size, q.vocab_size, q.blank_id) == (2, 50, 0)
    assert (out / "encoder.int8.onnx").stat().st_size < (out / "encoder.onnx").stat().st_size


@pytest.mark.parametrize("lens", [[100], [9], [250, 111, 31, 7], [64, 64]])
def test_encoder_matches_pytorch(setup, lens):
    model = setup["model"]
    x, x_lens = example_features(80, lens)
    got, got_lens = _onnx_model(setup["out"]).run_encoder(x.numpy(), x_lens.numpy())
    with torch.no_grad():
        enc, enc_lens = model.encoder(x, x_lens)
        want = model.joiner.encoder_proj(enc).numpy()
    assert got_lens.dtype == np.int64 and got_lens.tolist() == enc_lens.tolist()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_decoder_and_joiner_match_pytorch(setup):
    model, om = setup["model"], _onnx_model(setup["out"])
    y = torch.randint(-1, 50, (13, 2), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        dec = model.joiner.decoder_proj(model.decoder(y, need_pad=False))[:, 0]
        enc = torch.randn(13, 64)
        logits = model.joiner(enc, dec, project_input=False)
    np.testing.assert_allclose(om.run_decoder(y.tolist()), dec.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(om.run_joiner(enc.numpy(), dec.numpy()), logits.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_knf_features_are_close_to_lhotse(setup):
    for want, got in zip(compute_fbank(setup["waves"]), compute_fbank_knf(setup["waves"])):
        assert got.shape == tuple(want.shape)
        assert np.abs(got - want.numpy()).max() < 5e-3


def test_numpy_search_matches_pytorch_on_the_same_features(setup):
    """Isolates the search: the ONNX encoder on lhotse's features."""
    model, om = setup["model"], _onnx_model(setup["out"])
    enc, enc_lens = om.run_encoder(setup["x"].numpy(), setup["x_lens"].numpy())
    assert greedy_search(om, enc, enc_lens) == setup["greedy"]
    with torch.no_grad():
        want = decode_batch(model, *model.encoder(setup["x"], setup["x_lens"]),
                            "modified_beam_search")
    assert modified_beam_search(om, enc, enc_lens, beam=4) == want


def test_numpy_search_skips_unk_like_pytorch(setup):
    """With an <unk> id, neither search emits it, in numpy as in icefall.beam_search."""
    model, om = setup["model"], _onnx_model(setup["out"])
    counts = np.bincount([y for h in setup["greedy"] for y in h])
    unk = int(counts.argmax())  # the token greedy search emits most: skipping it matters
    enc, enc_lens = om.run_encoder(setup["x"].numpy(), setup["x_lens"].numpy())
    skip = skip_ids_for(om, SymbolTable.from_pairs([("<blk>", 0), ("<unk>", unk)]))
    assert skip == (0, unk)
    model.unk_id = unk
    try:
        with torch.no_grad():
            encoded = model.encoder(setup["x"], setup["x_lens"])
            want_greedy = decode_batch(model, *encoded, "greedy_search")
            want_beam = decode_batch(model, *encoded, "modified_beam_search")
    finally:
        del model.unk_id
    assert want_greedy != setup["greedy"]
    assert all(unk not in h for h in want_greedy + want_beam)
    assert greedy_search(om, enc, enc_lens, skip_ids=skip) == want_greedy
    assert modified_beam_search(om, enc, enc_lens, beam=4, skip_ids=skip) == want_beam


def test_emissions_are_not_degenerate(setup):
    lens = [len(h) for h in setup["greedy"]]
    frames = ((setup["x_lens"] - 1) // 2 - 1) // 2
    ratio = sum(lens) / int(frames.sum())
    assert 0.2 < ratio < 0.8, ratio


def test_onnx_greedy_with_knf_features_matches_pytorch(setup):
    got = decode_waveforms(_onnx_model(setup["out"]), setup["waves"])
    assert got == setup["greedy"]


def test_sherpa_onnx_matches_pytorch_greedy(setup):
    import sherpa_onnx

    out = setup["out"]
    recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(out / "encoder.onnx"), decoder=str(out / "decoder.onnx"),
        joiner=str(out / "joiner.onnx"), tokens=str(out / "tokens.txt"), num_threads=1,
        decoding_method="greedy_search", feature_dim=80, sample_rate=16000)
    streams = []
    for wave in setup["waves"]:
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, wave)
        streams.append(stream)
    recognizer.decode_streams(streams)
    # sherpa-onnx shows the word-start mark of BPE pieces as a space
    to_id = {s.replace("\u2581", " "): i for i, s in enumerate(setup["symbols"])}
    got = [[to_id[t] for t in s.result.tokens] for s in streams]
    same = sum(g == w for g, w in zip(got, setup["greedy"]))
    assert same >= 0.99 * len(got), f"{same} of {len(got)} utterances match"


def _run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=120)


def test_onnx_pretrained_prints_what_pretrained_prints(setup):
    out, files = setup["out"], [str(f) for f in setup["files"]]
    want = _run(RECIPE / "pretrained.py", "--checkpoint", str(setup["ckpt"]), "--tokens",
                str(setup["tokens"]), "--device", "cpu", *files)
    assert want.returncode == 0, want.stderr
    got = _run(RECIPE / "onnx_pretrained.py", "--encoder", str(out / "encoder.onnx"),
               "--decoder", str(out / "decoder.onnx"), "--joiner", str(out / "joiner.onnx"),
               "--tokens", str(out / "tokens.txt"), *files)
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    assert got.stdout.count(":\n") == NUM_FILES


def test_onnx_pretrained_does_not_import_torch(setup, tmp_path):
    # A torch that cannot be imported comes first on the path.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch is not allowed')\n")
    out = setup["out"]
    proc = subprocess.run(
        [sys.executable, str(RECIPE / "onnx_pretrained.py"), "--encoder", str(out / "encoder.int8.onnx"),
         "--decoder", str(out / "decoder.int8.onnx"), "--joiner", str(out / "joiner.int8.onnx"),
         "--tokens", str(out / "tokens.txt"), "--method", "modified_beam_search",
         str(setup["files"][0]), str(tmp_path / "missing.wav")],
        capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1, proc.stderr  # the missing file
    assert "missing.wav: audio file not found" in proc.stderr
    assert proc.stdout.startswith(f"{setup['files'][0]}:\n")


def test_int8_is_quantized_and_close_to_fp32(setup):
    """Only loosely: with random weights, int8 flips many near-tie decisions
    (the WER check of int8 against fp32 is in benchmarks/decode_benchmark.py)."""
    out = setup["out"]
    for name in ("encoder", "decoder", "joiner"):
        ops = {n.op_type for n in onnx.load(str(out / f"{name}.int8.onnx")).graph.node}
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, (name, ops)
    fp32, int8 = _onnx_model(out), _onnx_model(out, ".int8")
    x, x_lens = setup["x"].numpy(), setup["x_lens"].numpy()
    a, b = fp32.run_encoder(x, x_lens)[0], int8.run_encoder(x, x_lens)[0]
    assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)
    y = [[-1, 0], [3, 4], [17, 49]]
    da, db = fp32.run_decoder(y), int8.run_decoder(y)
    assert np.linalg.norm(da - db) < 0.05 * np.linalg.norm(da)
    la, lb = fp32.run_joiner(a[:3, 0], da), int8.run_joiner(a[:3, 0], da)
    assert np.linalg.norm(la - lb) < 0.02 * np.linalg.norm(la)


def _meta(path: Path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_every_file_carries_the_same_export_id(setup):
    out = setup["out"]
    ids = {_meta(out / f"{n}{s}.onnx")["export_id"] for n in ("encoder", "decoder", "joiner") for s in ("", ".int8")}
    assert len(ids) == 1
    enc = _meta(out / "encoder.onnx")
    assert (enc["subsampling_factor"], enc["subsampling_offset"]) == ("4", "3")  # (T - 3) // 4


def _copy_with_metadata(src: Path, dst: Path, **changes) -> Path:
    model = onnx.load(str(src))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in changes]
    del model.metadata_props[:]
    for key, value in kept + [(k, v) for k, v in changes.items() if v is not None]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return dst


def test_files_of_different_exports_or_without_metadata_are_refused(setup, tmp_path):
    out = setup["out"]
    other = _copy_with_metadata(out / "decoder.onnx", tmp_path / "decoder.onnx", export_id="f" * 32)
    with pytest.raises(ValueError, match="different exports") as e:
        OnnxTransducer(out / "encoder.onnx", other, out / "joiner.onnx")
    assert "\n" not in str(e.value) and str(other) in str(e.value)
    bare = _copy_with_metadata(out / "encoder.onnx", tmp_path / "encoder.onnx", feature_dim=None,
                               subsampling_offset=None)
    with pytest.raises(ValueError, match=r"encoder\.onnx: no feature_dim, subsampling_offset"):
        OnnxTransducer(bare, out / "decoder.onnx", out / "joiner.onnx")
    proc = _run(RECIPE / "onnx_pretrained.py", "--encoder", str(out / "encoder.onnx"), "--decoder", str(other),
                "--joiner", str(out / "joiner.onnx"), "--tokens", str(out / "tokens.txt"), str(setup["files"][0]))
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "different exports" in proc.stderr


def test_a_failed_export_leaves_the_previous_one_untouched(setup, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    out.mkdir()
    for f in setup["out"].iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    module = _export_onnx_module()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "check_onnx_against_torch", fail)
    with pytest.raises(OSError):
        module.export_onnx(setup["model"], out)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # no stray or half-written file


def test_export_replaces_the_whole_set_quietly(setup, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "encoder.onnx").write_bytes(b"an old, broken export")
    (out / ".export-onnx-999999999-abc").mkdir()  # left by a killed run (no such pid)
    proc = _run(RECIPE / "export-onnx.py", "--checkpoint", str(setup["ckpt"]), "--tokens",
                str(setup["tokens"]), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    names = sorted(f.name for f in out.iterdir())
    assert names == sorted(f"{n}{s}.onnx" for n in ("encoder", "decoder", "joiner") for s in ("", ".int8")) + [
        "tokens.txt"]
    ids = {_meta(out / n)["export_id"] for n in names if n.endswith(".onnx")}
    assert len(ids) == 1
    # onnxruntime's quantizer prints 44 lines unless --verbose: only our own log lines remain
    lines = proc.stderr.strip().splitlines()
    assert all(" INFO " in line for line in lines) and len(lines) <= 12, proc.stderr


def test_a_nan_file_does_not_lose_the_other_transcripts(setup, tmp_path):
    import soundfile as sf

    out, files = setup["out"], [str(f) for f in setup["files"][:4]]
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    onnx_args = ["--encoder", str(out / "encoder.onnx"), "--decoder", str(out / "decoder.onnx"),
                 "--joiner", str(out / "joiner.onnx"), "--tokens", str(out / "tokens.txt")]
    want = _run(RECIPE / "onnx_pretrained.py", *onnx_args, *files)
    got = _run(RECIPE / "onnx_pretrained.py", *onnx_args, *files[:2], str(nan), *files[2:])
    assert got.returncode == 1 and got.stdout == want.stdout
    assert f"error: {nan}: " in got.stderr and "NaN" in got.stderr


def test_onnx_pretrained_decodes_a_long_file_in_chunks_as_pretrained_does(setup, tmp_path):
    """The chunk plan and stitching of onnx_pretrained.py against pretrained.py's
    (PyTorch) on a file of about 50 s in 8 s chunks. (Chunked against whole-file decoding
    needs a trained model: test_recipe_export.py; a random one is not robust to
    the cut context.)"""
    import soundfile as sf

    out = setup["out"]
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate(setup["waves"] * 2), 16000, subtype="FLOAT")
    chunking = ["--chunk-duration", "8", "--chunk-context", "2", str(long)]
    want = _run(RECIPE / "pretrained.py", "--checkpoint", str(setup["ckpt"]), "--tokens",
                str(setup["tokens"]), "--device", "cpu", *chunking)
    got = _run(RECIPE / "onnx_pretrained.py", "--encoder", str(out / "encoder.onnx"), "--decoder",
               str(out / "decoder.onnx"), "--joiner", str(out / "joiner.onnx"), "--tokens",
               str(out / "tokens.txt"), *chunking)
    assert want.returncode == got.returncode == 0, got.stderr
    import re

    for proc in (want, got):  # progress, to the end, of several chunks
        done = re.findall(r"chunk: (\d+)/(\d+)", proc.stderr)
        assert done and done[-1][0] == done[-1][1] and int(done[-1][1]) >= 3, proc.stderr
    assert len(re.findall(r"t\d+", got.stdout.split("\n")[1])) >= 10  # tokens t2..t49
    assert got.stdout == want.stdout


def test_a_factor_6_model_exports_its_frame_rate(tmp_path):
    """A 60 ms model (--subsampling-factor 6): the encoder's metadata says
    (T - 1) // 6, and the ONNX encoder gives the PyTorch encoder's frames."""
    torch.manual_seed(1)
    config = {**default_config(), **SMALL, "subsampling_factor": 6}
    model = build_model(config).eval()
    ckpt = tmp_path / "pretrained.pt"
    atomic_save({"model": model.state_dict(), "config": config}, ckpt)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(f"t{i} {i}\n" for i in range(50)), encoding="utf-8")
    out = tmp_path / "exp"
    assert _export_onnx_module().main(["--checkpoint", str(ckpt), "--tokens", str(tokens),
                                       "--output-dir", str(out), "--int8", "false"]) == 0
    enc = _meta(out / "encoder.onnx")
    assert (enc["subsampling_factor"], enc["subsampling_offset"]) == ("6", "1")
    x, x_lens = example_features(80, [250, 111, 31, 7])
    got, got_lens = _onnx_model(out).run_encoder(x.numpy(), x_lens.numpy())
    with torch.no_grad():
        enc_out, enc_lens = model.encoder(x, x_lens)
        want = model.joiner.encoder_proj(enc_out).numpy()
    assert got_lens.tolist() == enc_lens.tolist() == [41, 18, 5, 1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

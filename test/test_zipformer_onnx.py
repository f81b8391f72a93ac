"""Tests of zipformer/export-onnx.py and onnx_pretrained*.py.

A small random Zipformer with both heads (blank logits biased so that about
half the frames emit) is exported; sherpa-onnx, an independent decoder of
the files, must give the tokens of our PyTorch greedy searches on the same
(kaldi-native-fbank) features.  export_onnx itself checks every graph
against PyTorch with onnxruntime at lengths other than the traced one.
"""

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "zipformer"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icefall.beam_search import greedy_search_batch  # noqa: E402
from icefall.checkpoint import atomic_save  # noqa: E402
from icefall.ctc_decode import ctc_greedy_search  # noqa: E402
from icefall.onnx_decode import compute_fbank_knf, pad_features  # noqa: E402
from icefall.onnx_export import read_metadata  # noqa: E402

SMALL = ("--num-encoder-layers 1,1,1,1 --downsampling-factor 1,2,4,2 --feedforward-dim 48,64,64,48 "
         "--num-heads 2 --encoder-dim 24,32,40,32 --encoder-unmasked-dim 16,24,24,24 "
         "--query-head-dim 8 --value-head-dim 4 --pos-head-dim 2 --pos-dim 16 "
         "--cnn-module-kernel 15,11,7,11 --decoder-dim 24 --joiner-dim 40 --context-size 2 "
         "--use-transducer 1 --use-ctc 1").split()
NUM_FILES = 8


def _load_script(name: str):
    """export-onnx.py as a module; it puts the zipformer recipe first on sys.path
    and imports its `model`, so the pts3 recipe's modules of the same names are
    set aside while it loads and restored after."""
    names = ("model", "scaling", "scaling_grad", "scaling_schedule", "subsampling",
             "zipformer", "decoder", "joiner")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    old_path = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(name, RECIPE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.recipe_model = sys.modules["model"]
        return module
    finally:
        sys.path[:] = old_path
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def _signal(rng: np.random.RandomState, seconds: float) -> np.ndarray:
    """Harmonics of a wandering f0 under a syllable-rate envelope, plus noise."""
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 100 + 80 * rng.rand() + 30 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    x = x * np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.rand()), 0, None)
    x = x + 0.05 * rng.randn(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _bias_blank(linear: torch.nn.Linear, logits: torch.Tensor) -> None:
    """Add to the blank bias the median margin of the best other logit."""
    margin = logits[..., 1:].max(-1).values - logits[..., 0]
    linear.bias.data[0] += margin.median()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import soundfile as sf

    tmp = tmp_path_factory.mktemp("zipformer_onnx")
    export = _load_script("export-onnx")
    M = export.recipe_model
    parser = argparse.ArgumentParser()
    M.add_model_arguments(parser)
    config = M.config_from_args(parser.parse_args(SMALL), vocab_size=50, blank_id=0)
    torch.manual_seed(0)
    model = M.build_model(config).eval()

    rng = np.random.RandomState(0)
    waves = [_signal(rng, rng.uniform(0.4, 3.0)) for _ in range(NUM_FILES)]
    files = []
    for i, wave in enumerate(waves):
        files.append(tmp / f"utt{i}.wav")
        sf.write(str(files[-1]), wave, 16000, subtype="PCM_16")
    waves = [sf.read(str(f), dtype="float32")[0] for f in files]
    x, x_lens = (torch.from_numpy(a) for a in pad_features(compute_fbank_knf(waves)))

    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        valid = torch.arange(enc.size(1)) < enc_lens.unsqueeze(1)
        dec = model.decoder(torch.tensor([[-1, 0]]), need_pad=False)
        _bias_blank(model.joiner.output_linear,
                    model.joiner(enc.unsqueeze(2), dec.unsqueeze(1))[:, :, 0][valid])
        _bias_blank(model.ctc_output[1], model.ctc_output(enc)[valid])
        transducer = greedy_search_batch(model, enc, enc_lens)
        ctc = ctc_greedy_search(model.ctc_output(enc), enc_lens)

    ckpt = tmp / "pretrained.pt"
    atomic_save({"model": model.state_dict(), "config": config}, ckpt)
    # No <unk>: sherpa-onnx would treat it like blank.
    symbols = ["<blk>", "<sos/eos>"] + [("\u2581" if i % 3 == 0 else "") + f"t{i}"
                                        for i in range(2, 50)]
    tokens = tmp / "tokens.txt"
    tokens.write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)), encoding="utf-8")
    out = tmp / "exp"
    assert export.main(["--checkpoint", str(ckpt), "--tokens", str(tokens),
                        "--output-dir", str(out)]) == 0
    return dict(out=out, files=files, waves=waves, symbols=symbols, transducer=transducer,
                ctc=ctc, frames=int(enc_lens.sum()))


def test_files_and_metadata(setup):
    out = setup["out"]
    for name in ("encoder", "decoder", "joiner", "ctc"):
        assert (out / f"{name}.onnx").is_file() and (out / f"{name}.int8.onnx").is_file()
    assert read_metadata(out / "encoder.onnx")["model_type"] == "zipformer2"
    assert read_metadata(out / "ctc.onnx")["model_type"] == "zipformer2_ctc"
    assert read_metadata(out / "decoder.onnx")["context_size"] == "2"
    assert read_metadata(out / "decoder.onnx")["vocab_size"] == "50"
    assert read_metadata(out / "joiner.onnx")["joiner_dim"] == "40"
    assert read_metadata(out / "decoder.int8.onnx")["vocab_size"] == "50"


def test_both_heads_emit_blanks_and_tokens(setup):
    for hyps in (setup["transducer"], setup["ctc"]):
        ratio = sum(len(h) for h in hyps) / setup["frames"]
        assert 0.15 < ratio < 0.85, ratio


def _tokens_of(streams, symbols):
    # sherpa-onnx shows the word-start mark of BPE pieces as a space
    to_id = {s.replace("\u2581", " "): i for i, s in enumerate(symbols)}
    return [[to_id[t] for t in s.result.tokens] for s in streams]


def _decode(recognizer, waves):
    streams = []
    for wave in waves:
        streams.append(recognizer.create_stream())
        streams[-1].accept_waveform(16000, wave)
    recognizer.decode_streams(streams)
    return streams


@pytest.mark.parametrize("suffix", ["", ".int8"])
def test_sherpa_onnx_transducer_matches_pytorch_greedy(setup, suffix):
    import sherpa_onnx

    out = setup["out"]
    recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(out / f"encoder{suffix}.onnx"), decoder=str(out / f"decoder{suffix}.onnx"),
        joiner=str(out / f"joiner{suffix}.onnx"), tokens=str(out / "tokens.txt"),
        num_threads=1, decoding_method="greedy_search", feature_dim=80, sample_rate=16000)
    got = _tokens_of(_decode(recognizer, setup["waves"]), setup["symbols"])
    if suffix == "":
        assert got == setup["transducer"]
    else:  # int8 weights: most utterances the same
        same = sum(g == w for g, w in zip(got, setup["transducer"]))
        assert same >= NUM_FILES // 2, f"{same} of {NUM_FILES}"


@pytest.mark.parametrize("suffix", ["", ".int8"])
def test_sherpa_onnx_ctc_matches_pytorch_greedy(setup, suffix):
    import sherpa_onnx

    out = setup["out"]
    recognizer = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(out / f"ctc{suffix}.onnx"), tokens=str(out / "tokens.txt"), num_threads=1,
        feature_dim=80, sample_rate=16000)
    got = _tokens_of(_decode(recognizer, setup["waves"]), setup["symbols"])
    if suffix == "":
        assert got == setup["ctc"]
    else:
        same = sum(g == w for g, w in zip(got, setup["ctc"]))
        assert same >= NUM_FILES // 2, f"{same} of {NUM_FILES}"


def _run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=120)


def _expected_output(setup, hyps):
    symbols = setup["symbols"]
    text = ["".join(symbols[i] for i in h).replace("\u2581", " ").strip() for h in hyps]
    return "".join(f"{f}:\n{t}\n\n" for f, t in zip(setup["files"], text))


def test_onnx_pretrained_scripts(setup):
    out = setup["out"]
    files = [str(f) for f in setup["files"]]
    got = _run(RECIPE / "onnx_pretrained.py", "--encoder", str(out / "encoder.onnx"),
               "--decoder", str(out / "decoder.onnx"), "--joiner", str(out / "joiner.onnx"),
               "--tokens", str(out / "tokens.txt"), *files)
    assert got.returncode == 0, got.stderr
    assert got.stdout == _expected_output(setup, setup["transducer"])
    got = _run(RECIPE / "onnx_pretrained_ctc.py", "--model", str(out / "ctc.onnx"),
               "--tokens", str(out / "tokens.txt"), *files)
    assert got.returncode == 0, got.stderr
    assert got.stdout == _expected_output(setup, setup["ctc"])
    bad = _run(RECIPE / "onnx_pretrained_ctc.py", "--model", str(out / "missing.onnx"),
               "--tokens", str(out / "tokens.txt"), *files)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing.onnx" in bad.stderr


def test_export_bad_checkpoint_is_a_one_line_error(setup, tmp_path, capsys):
    export = _load_script("export-onnx")
    rc = export.main(["--checkpoint", str(tmp_path / "nope.pt"),
                      "--tokens", str(setup["out"] / "tokens.txt"), "--output-dir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and err.count("\n") == 1

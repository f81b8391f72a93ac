"""Streaming Zipformer: chunk-by-chunk decoding of many streams, the microphone
mode, the streaming ONNX export in sherpa-onnx, and bounded memory.

The model is a small random causal Zipformer with the sizes of icefall's
streaming reference (test/data/icefall_zipformer_streaming_small.md), its
joiner sharpened and its blank logit biased so that blanks and tokens both
occur.  References are independent of the streaming code: the offline
encoder on the whole utterance with the chunk mask ("simulated streaming")
decoded by icefall/beam_search.py, icefall's state shapes, and sherpa-onnx's
own OnlineRecognizer.
"""

import importlib.util
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "zipformer"
DATA = Path(__file__).resolve().parent / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icefall.beam_search import _decoder_proj, greedy_search_batch, modified_beam_search  # noqa
from icefall.streaming_decoder import LOG_EPS, StreamingDecoder, decode_streams  # noqa: E402
from icefall.streaming_features import OnlineFeatures  # noqa: E402
from icefall.wer import load_transcripts  # noqa: E402
from recipe_fixture import import_recipe  # noqa: E402

RECIPE_MODULES = ("scaling_schedule", "scaling_grad", "scaling", "subsampling", "zipformer",
                  "decoder", "joiner", "model", "streaming_decode", "streaming_pretrained")
SCRIPTS = {"export_streaming": "export-onnx-streaming.py"}
ARGV = ("--num-encoder-layers 2,1,1,1,1,1 --downsampling-factor 1,2,4,8,4,2 "
        "--feedforward-dim 64,72,80,96,80,72 --num-heads 2,2,2,2,3,3 "
        "--encoder-dim 32,40,48,56,44,36 --encoder-unmasked-dim 24,32,32,40,32,32 "
        "--query-head-dim 8 --value-head-dim 4,4,6,6,4,4 --pos-head-dim 2 --pos-dim 16 "
        "--cnn-module-kernel 15,11,7,5,7,9 --decoder-dim 28 --joiner-dim 52 --context-size 2 "
        "--causal 1 --chunk-size 16 --left-context-frames 64").split()
VOCAB = 50
CHUNK, LEFT, PAD = 16, 64, 13  # 50 Hz frames; PAD fbank frames of look-ahead


R = import_recipe(RECIPE, RECIPE_MODULES, SCRIPTS)  # beside the pts3 recipe's model, scaling, ...


def tokens_file(path: Path) -> Path:
    """A BPE-like table: <blk>, then word-initial and word-internal pieces."""
    lines = ["<blk> 0"] + [f"{'▁' if i % 3 == 1 else ''}t{i} {i}" for i in range(1, VOCAB)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def synthetic_wave(rng: np.random.RandomState, seconds: float) -> np.ndarray:
    """Tones gliding and fading in and out, plus a little noise, 16 kHz."""
    n = int(16000 * seconds)
    t = np.arange(n) / 16000
    w = np.zeros(n)
    for _ in range(6):
        f0, glide, rate = 100 + 2500 * rng.rand(), 300 * rng.randn(), 0.5 + 4 * rng.rand()
        env = np.clip(np.sin(2 * np.pi * rate * t + 6 * rng.rand()), 0, None)
        w += rng.rand() * env * np.sin(2 * np.pi * (f0 + glide * t) * t)
    return (0.05 * w + 0.003 * rng.randn(n)).astype(np.float32)


def knf_features(wave: np.ndarray) -> torch.Tensor:
    fbank = OnlineFeatures()
    fbank.accept_waveform(wave)
    fbank.input_finished()
    return torch.from_numpy(fbank.pop_frames())


def make_model(argv):
    parser = __import__("argparse").ArgumentParser()
    R.model.add_model_arguments(parser)
    config = R.model.config_from_args(parser.parse_args(argv), vocab_size=VOCAB)
    torch.manual_seed(0)
    m = R.model.build_model(config).eval()
    feats = knf_features(synthetic_wave(np.random.RandomState(123), 4.0))
    with torch.no_grad():
        m.joiner.output_linear.weight *= 4.0  # a random joiner is too flat to pick varied tokens
        enc, _ = m.forward_encoder(feats[None], torch.tensor([feats.size(0)]))
        dec = _decoder_proj(m, [[-1, 0]], torch.device("cpu"))
        logits = m.joiner(m.joiner.encoder_proj(enc[0]), dec, project_input=False)
        gap = logits[:, 1:].max(dim=-1).values - logits[:, 0]
        m.joiner.output_linear.bias[0] += gap.quantile(0.6)  # blank wins on ~60% of frames
    return m


@pytest.fixture(scope="module")
def model():
    return make_model(ARGV)


def decoder_for(model, method="greedy_search", chunk=CHUNK):
    return StreamingDecoder(model, R.model.stack_states, R.model.unstack_states,
                            chunk_frames=2 * chunk, pad_frames=PAD, method=method)


def simulated(model, feats: torch.Tensor, method: str, chunk: int = CHUNK):
    """Offline encoder on the whole utterance with the chunk mask: the features
    padded as a stream pads them (13 + 30 frames, then to whole chunks), the
    output cut to the frames the chunks produce; searched by beam_search.py."""
    num_chunks = math.ceil((feats.size(0) + PAD + 30) / (2 * chunk))
    x = torch.nn.functional.pad(feats, (0, 0, 0, num_chunks * 2 * chunk + PAD - feats.size(0)),
                                value=LOG_EPS)[None]
    with torch.no_grad():
        enc, _ = model.forward_encoder(x, torch.tensor([x.size(1)]))
    n = num_chunks * chunk // 2
    enc, lens = enc[:, :n], torch.tensor([n])
    if method == "greedy_search":
        return greedy_search_batch(model, enc, lens)[0]
    return modified_beam_search(model, enc, lens, beam=4)[0]


# ----------------------------------------------------------------------------
# Many streams batched = each alone = simulated streaming


@pytest.mark.parametrize("method", ["greedy_search", "modified_beam_search"])
def test_batched_streams_equal_each_alone_and_simulated_streaming(model, method):
    rng = np.random.RandomState(1)
    utts = [(f"u{i}", knf_features(synthetic_wave(rng, s)))
            for i, s in enumerate([2.5, 0.37, 1.61, 3.0, 0.9, 0.64, 1.33])]
    lengths = [f.size(0) for _, f in utts]
    decoder = decoder_for(model, method)
    batched, stats = decode_streams(decoder, utts, num_streams=3)
    sizes = [n for _, n in stats.chunk_times]
    assert max(sizes) == 3 and min(sizes) < 3  # streams joined and left
    assert len(sizes) < sum(math.ceil((n + PAD + 30) / 32) for n in lengths)
    for utt_id, feats in utts:
        alone, _ = decode_streams(decoder, [(utt_id, feats)], num_streams=1)
        want = simulated(model, feats, method)
        assert batched[utt_id] == alone[utt_id] == want, utt_id
    all_tokens = [t for ids in batched.values() for t in ids]
    num_frames = sum(math.ceil((n + PAD + 30) / 32) * 8 for n in lengths)
    assert 0.1 * num_frames < len(all_tokens) < 0.9 * num_frames  # blanks and tokens
    assert len(set(all_tokens)) >= 5


def test_chunk_32_streams_equal_simulated(model):
    import copy

    m = copy.deepcopy(model)
    R.streaming_decode.set_streaming(m, 32, 128)
    rng = np.random.RandomState(2)
    utts = [(f"u{i}", knf_features(synthetic_wave(rng, s))) for i, s in enumerate([2, 0.77, 3.4])]
    got, _ = decode_streams(decoder_for(m, chunk=32), utts, num_streams=2)
    for utt_id, feats in utts:
        assert got[utt_id] == simulated(m, feats, "greedy_search", chunk=32)


def test_a_lighter_front_end_streams_as_it_simulates(tmp_path, capsys):
    """--embed-channels: other front-end sizes stream too; the streaming ONNX
    export refuses those sherpa-onnx cannot run, naming the flag."""
    light = make_model(ARGV + ["--embed-channels", "4,8,16,24"])
    assert light.encoder_embed.convnext.pointwise_conv1.weight.shape[:2] == (24, 16)
    rng = np.random.RandomState(3)
    utts = [(f"u{i}", knf_features(synthetic_wave(rng, s))) for i, s in enumerate([2.2, 0.8])]
    got, _ = decode_streams(decoder_for(light), utts, num_streams=2)
    for utt_id, feats in utts:
        assert got[utt_id] == simulated(light, feats, "greedy_search")
    assert sum(len(ids) for ids in got.values()) > 5
    with pytest.raises(ValueError, match="--embed-channels"):
        R.export_streaming.export_streaming_onnx(light, tmp_path / "out", int8=False)
    assert not (tmp_path / "out").exists()


def test_state_shapes_are_icefalls(model):
    ref = torch.load(DATA / "icefall_zipformer_streaming_small.pt", weights_only=True)
    want = ref["outputs"]["chunk16_left64"]["streaming"][0]["initial_state_shapes"]
    assert [list(s.shape) for s in model.get_init_states(1)] == [list(s) for s in want]


# ----------------------------------------------------------------------------
# The streaming ONNX export in sherpa-onnx


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("stream-exp")
    torch.save({"model": model.state_dict(), "config": model.config}, d / "pretrained.pt")
    return SimpleNamespace(dir=d, path=d / "pretrained.pt", tokens=tokens_file(d / "tokens.txt"))


@pytest.fixture(scope="module")
def onnx_export(checkpoint, tmp_path_factory):
    """export-onnx-streaming.py run on the saved model (its config in the file)."""
    out = tmp_path_factory.mktemp("onnx-streaming")
    (out / ".export-onnx-streaming-999999999-abc").mkdir()  # a killed run's (no such pid)
    argv = ["--checkpoint", str(checkpoint.path), "--tokens", str(checkpoint.tokens),
            "--output-dir", str(out), "--chunk-size", "16", "--left-context-frames", "64"]
    assert R.export_streaming.main(argv) == 0
    paths = {"tokens": out / "tokens.txt"}
    for name in ("encoder", "decoder", "joiner"):
        paths[name] = out / f"{name}-chunk-16-left-64.onnx"
        paths[f"{name}.int8"] = out / f"{name}-chunk-16-left-64.int8.onnx"
    return paths


def test_export_refuses_several_chunk_sizes_and_non_causal_models(checkpoint, model, tmp_path,
                                                                  capsys):
    argv = ["--checkpoint", str(checkpoint.path), "--tokens", str(checkpoint.tokens),
            "--output-dir", str(tmp_path), "--left-context-frames", "64"]
    assert R.export_streaming.main(argv + ["--chunk-size", "16,32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --chunk-size") and "\n" not in err
    import copy

    m = copy.deepcopy(model)
    m.encoder.causal = False
    with pytest.raises(ValueError, match="not causal"):
        R.export_streaming.export_streaming_onnx(m, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_export_has_icefalls_names_metadata_and_nothing_left_over(model, onnx_export):
    import onnx

    enc = onnx.load(str(onnx_export["encoder"]))
    meta = {p.key: p.value for p in enc.metadata_props}
    assert meta["model_type"] == "zipformer2"
    # icefall's values for these sizes, by hand: left 64 at rates 1,2,4,8,4,2
    assert {k: meta[k] for k in ("decode_chunk_len", "T", "num_encoder_layers", "encoder_dims",
                                 "cnn_module_kernels", "left_context_len", "query_head_dims",
                                 "value_head_dims", "num_heads")} == {
        "decode_chunk_len": "32", "T": "45", "num_encoder_layers": "2,1,1,1,1,1",
        "encoder_dims": "32,40,48,56,44,36", "cnn_module_kernels": "15,11,7,5,7,9",
        "left_context_len": "64,32,16,8,16,32", "query_head_dims": "8,8,8,8,8,8",
        "value_head_dims": "4,4,6,6,4,4", "num_heads": "2,2,2,2,3,3"}
    names = [i.name for i in enc.graph.input]
    layer_names = ["cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2",
                   "cached_conv1", "cached_conv2"]
    assert names == ["x"] + [f"{n}_{i}" for i in range(7) for n in layer_names] + \
        ["embed_states", "processed_lens"]
    assert [o.name for o in enc.graph.output] == ["encoder_out"] + [f"new_{n}" for n in names[1:]]
    assert enc.graph.input[-1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    out_dir = onnx_export["encoder"].parent
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        p.name for p in onnx_export.values())  # and no temporary folder


def sherpa_tokens(recognizer, stream):
    result = json.loads(recognizer.get_result_as_json_string(stream))
    return [int(t.strip(" ▁")[1:]) for t in result["tokens"]]  # "▁" may come back as " "


def test_sherpa_onnx_online_recognizer_gives_our_streaming_tokens(model, onnx_export):
    """sherpa-onnx decodes a chunk when more than T = 45 frames are ready past
    the processed ones and never pads the end itself: we do the same on the
    same kaldi-native-fbank frames."""
    import sherpa_onnx

    rng = np.random.RandomState(7)
    waves = [synthetic_wave(rng, 0.5 + 3 * rng.rand()) for _ in range(30)]
    recognizers = {
        kind: sherpa_onnx.OnlineRecognizer.from_transducer(
            tokens=str(onnx_export["tokens"]), encoder=str(onnx_export[f"encoder{kind}"]),
            decoder=str(onnx_export[f"decoder{kind}"]), joiner=str(onnx_export[f"joiner{kind}"]),
            num_threads=1, sample_rate=16000, feature_dim=80, decoding_method="greedy_search")
        for kind in ("", ".int8")}
    decoder = decoder_for(model)
    agree, agree_int8, num_tokens = 0, 0, 0
    for wave in waves:
        stream = decoder.new_stream("w")
        stream.accept_features(knf_features(wave))
        while stream.features.size(0) - stream.processed > 2 * CHUNK + PAD:
            decoder.decode_chunk([stream])
        got = {}
        for kind, rec in recognizers.items():
            s = rec.create_stream()
            s.accept_waveform(16000, wave)
            s.input_finished()
            while rec.is_ready(s):
                rec.decode_stream(s)
            got[kind] = sherpa_tokens(rec, s)
        agree += got[""] == stream.tokens
        agree_int8 += got[".int8"] == stream.tokens
        num_tokens += len(stream.tokens)
    assert num_tokens > 100
    assert agree >= 0.99 * len(waves), (agree, len(waves))
    print(f"int8 export: same tokens on {agree_int8} of {len(waves)} utterances")


# ----------------------------------------------------------------------------
# The microphone mode and the scripts


def write_wav(path: Path, wave: np.ndarray) -> Path:
    import soundfile

    soundfile.write(str(path), wave, 16000, subtype="PCM_16")
    return path


def test_streaming_pretrained_partials_grow_into_the_final_transcript(checkpoint, model,
                                                                      tmp_path, capsys):
    wave = synthetic_wave(np.random.RandomState(11), 3.0)
    wav = write_wav(tmp_path / "a.wav", wave)
    argv = ["--checkpoint", str(checkpoint.path), "--tokens", str(checkpoint.tokens),
            "--chunk-size", "16", "--left-context-frames", "64", str(wav)]
    assert R.streaming_pretrained.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    partial = [ln.split(" partial: ", 1)[1] for ln in lines if " partial: " in ln]
    final = [ln.split(" final: ", 1)[1] for ln in lines if " final: " in ln]
    assert len(final) == 1 and len(partial) >= 3
    assert all(final[0].startswith(p) for p in partial)  # greedy: text only grows
    assert len(set(partial)) == len(partial)  # printed only when it changes
    # the final transcript is that of simulated streaming of the file's features
    from icefall.tokens import read_tokens

    samples = np.asarray(__import__("soundfile").read(str(wav), dtype="float32")[0])
    want = simulated(model, knf_features(samples), "greedy_search")
    assert final[0] == read_tokens(checkpoint.tokens).decode(want)


def test_streaming_pretrained_bad_file_and_flag(checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(checkpoint.path), "--tokens", str(checkpoint.tokens),
            "--left-context-frames", "64"]
    assert R.streaming_pretrained.main(base + ["--chunk-size", "16,32", "x.wav"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --chunk-size") and "\n" not in err
    assert R.streaming_pretrained.main(base + ["--chunk-size", "16",
                                               str(tmp_path / "missing.wav")]) == 1
    err = capsys.readouterr().err.strip()
    assert "missing.wav" in err and "\n" not in err


@pytest.mark.parametrize("method", ["greedy_search", "modified_beam_search"])
def test_streaming_decode_script_writes_icefalls_result_files(checkpoint, model, tmp_path,
                                                              method):
    """Cuts with precomputed features and cuts with audio only, 2 streams at a time."""
    from lhotse import CutSet, NumpyFilesWriter, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    from icefall.features import compute_fbank, make_fbank
    from icefall.tokens import read_tokens

    rng = np.random.RandomState(5)
    cuts, feats = [], {}
    with NumpyFilesWriter(str(tmp_path / "feats")) as writer:
        for i in range(5):
            wav = write_wav(tmp_path / f"c{i}.wav", synthetic_wave(rng, 0.4 + 2 * rng.rand()))
            rec = Recording.from_file(wav, recording_id=f"c{i}")
            sup = SupervisionSegment(id=f"c{i}", recording_id=f"c{i}", start=0,
                                     duration=rec.duration, text="T1 T4")
            cut = MonoCut(id=f"c{i}", start=0, duration=rec.duration, channel=0,
                          recording=rec, supervisions=[sup])
            if i >= 3:
                cut = cut.compute_and_store_features(make_fbank(), writer)
                feats[cut.id] = torch.from_numpy(cut.load_features())
            else:
                feats[cut.id] = compute_fbank([rec.load_audio()[0]])[0]
            cuts.append(cut)
    (tmp_path / "fbank").mkdir()
    CutSet.from_cuts(cuts).to_file(tmp_path / "fbank" / "synth_cuts_test.jsonl.gz")
    argv = ["--checkpoint", str(checkpoint.path), "--tokens", str(checkpoint.tokens),
            "--exp-dir", str(tmp_path / "exp"), "--manifest-dir", str(tmp_path / "fbank"),
            "--chunk-size", "16", "--left-context-frames", "64", "--num-decode-streams", "2",
            "--decoding-method", method]
    assert R.streaming_decode.main(argv) == 0
    res = tmp_path / "exp" / "streaming" / method
    key = "greedy_search" if method == "greedy_search" else "num_active_paths_4"
    suffix = f"test-{key}-pretrained-chunk-16-left-context-64.txt"
    for kind in ("recogs", "errs", "wer-summary"):
        assert (res / f"{kind}-{suffix}").is_file(), kind
    hyps = {cut_id: hyp for cut_id, _, hyp in load_transcripts(res / f"recogs-{suffix}")}
    table = read_tokens(checkpoint.tokens)
    for cut_id, f in feats.items():
        assert hyps[cut_id] == table.decode(simulated(model, f, method)).split(), cut_id


def test_streaming_decode_refuses_a_non_causal_model(tmp_path, capsys):
    parser = __import__("argparse").ArgumentParser()
    R.model.add_model_arguments(parser)
    argv = [a for a in ARGV]
    argv[argv.index("--causal") + 1] = "0"
    argv[argv.index("--chunk-size") + 1] = "-1"
    argv[argv.index("--left-context-frames") + 1] = "-1"
    m = R.model.build_model(R.model.config_from_args(parser.parse_args(argv), vocab_size=VOCAB))
    torch.save({"model": m.state_dict(), "config": m.config}, tmp_path / "p.pt")
    code = R.streaming_decode.main(["--checkpoint", str(tmp_path / "p.pt"),
                                    "--tokens", str(tokens_file(tmp_path / "t.txt")),
                                    "--chunk-size", "16", "--left-context-frames", "64",
                                    "--manifest-dir", str(tmp_path)])
    assert code == 2 and "not causal" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# A 10-minute file streams through in bounded memory

LONG_AUDIO_SCRIPT = textwrap.dedent("""
    import sys, torch, numpy as np, soundfile
    sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
    from model import build_model, stack_states, unstack_states
    from icefall.streaming_decoder import StreamingDecoder
    from icefall.streaming_features import OnlineFeatures
    ckpt = torch.load(sys.argv[3], weights_only=True)
    model = build_model(ckpt["config"]); model.load_state_dict(ckpt["model"]); model.eval()
    # 1.28 s chunks: fewer steps, the same state-carrying code
    model.encoder.chunk_size, model.encoder.left_context_frames = (64,), (128,)
    decoder = StreamingDecoder(model, stack_states, unstack_states, chunk_frames=128)
    stream, fbank = decoder.new_stream("long"), OnlineFeatures()
    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    marks = {}
    with torch.no_grad(), soundfile.SoundFile(sys.argv[4]) as f:
        for block in f.blocks(blocksize=10240, dtype="float32"):
            fbank.accept_waveform(block)
            stream.accept_features(fbank.pop_frames())
            while stream.ready():
                decoder.decode_chunk([stream])
            minute = f.tell() // (16000 * 60)
            if minute in (2, 10) and minute not in marks:
                marks[minute] = dict(rss=rss_mb(), buffered=stream.features.size(0),
                    state=sum(s.numel() for s in stream.states))
    marks["tokens"] = len(stream.tokens)
    print(marks)
""")


def test_ten_minute_wav_streams_in_bounded_memory(checkpoint, tmp_path):
    import soundfile

    rng = np.random.RandomState(3)
    piece = synthetic_wave(rng, 10.0)
    with soundfile.SoundFile(str(tmp_path / "long.wav"), "w", 16000, 1, "PCM_16") as f:
        for _ in range(60):  # 10 minutes, never all in memory
            f.write(piece)
    proc = subprocess.run(
        [sys.executable, "-c", LONG_AUDIO_SCRIPT, str(RECIPE), str(ROOT), str(checkpoint.path),
         str(tmp_path / "long.wav")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    marks = eval(proc.stdout.strip().splitlines()[-1])
    m2, m10 = marks[2], marks[10]
    print(f"RSS at minute 2: {m2['rss']:.1f} MB, at minute 10: {m10['rss']:.1f} MB")
    assert m10["state"] == m2["state"] and m10["buffered"] <= 2 * 64 + PAD + 64
    assert m10["rss"] - m2["rss"] < 15  # MB; the tokens (a few thousand ints) are the only growth
    assert marks["tokens"] > 100


# ----------------------------------------------------------------------------
# onnx_pretrained-streaming.py: the export, streamed without torch

ONNX_STREAMING_RUN = textwrap.dedent("""
    import runpy, sys
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        assert not e.code, e.code
    assert "torch" not in sys.modules, "torch was imported"
""")


def test_onnx_pretrained_streaming_prints_what_the_pytorch_streaming_prints(
        checkpoint, onnx_export, tmp_path, capsys):
    wav = write_wav(tmp_path / "b.wav", synthetic_wave(np.random.RandomState(21), 4.0))
    argv = ["--checkpoint", str(checkpoint.path), "--tokens", str(checkpoint.tokens),
            "--chunk-size", "16", "--left-context-frames", "64", str(wav)]
    assert R.streaming_pretrained.main(argv) == 0
    want = capsys.readouterr().out.splitlines()
    script = RECIPE / "onnx_pretrained-streaming.py"
    proc = subprocess.run(
        [sys.executable, "-c", ONNX_STREAMING_RUN, str(script),
         "--encoder", str(onnx_export["encoder"]), "--decoder", str(onnx_export["decoder"]),
         "--joiner", str(onnx_export["joiner"]), "--tokens", str(onnx_export["tokens"]),
         str(wav)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = proc.stdout.splitlines()
    assert len(want) >= 4 and got == want


def test_onnx_pretrained_streaming_refuses_an_offline_encoder(onnx_export, tmp_path, capsys):
    import onnx

    m = onnx.load(str(onnx_export["encoder"]))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "enc.onnx"))
    spec = importlib.util.spec_from_file_location("onnx_streaming",
                                                  RECIPE / "onnx_pretrained-streaming.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main(["--encoder", str(tmp_path / "enc.onnx"),
                        "--decoder", str(onnx_export["decoder"]),
                        "--joiner", str(onnx_export["joiner"]),
                        "--tokens", str(onnx_export["tokens"]), "x.wav"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "export-onnx-streaming.py" in err and "\n" not in err

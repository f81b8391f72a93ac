"""Word delay of streaming partial results: icefall/word_latency.py on
hand-made partials (hand-computed delays), and benchmarks/streaming_latency.py
end to end with a tiny random causal Zipformer (test_zipformer_streaming.py's)
on three utterances of a tiny synthetic plan."""

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from icefall.word_latency import (aligned_correct, first_time_covering, voiced_end,
                                  word_delays, word_ends)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------
# The delay computation, against hand-computed values


def test_delays_of_a_growing_greedy_transcript():
    ref = "A B C D".split()
    partials = [(0.32, []), (0.64, ["A"]), (0.96, ["A", "X"]), (1.28, ["A", "X", "C"]),
                (1.5, ["A", "X", "C", "D"])]
    ends = [0.2, 0.5, 0.9, 1.2]
    # B is substituted by X: not timed; A at 0.64, C at 1.28, D in the final at 1.5
    got = word_delays(ref, partials, ends)
    assert [(i, e) for i, e, _ in got] == [(0, 0.2), (2, 0.9), (3, 1.2)]
    assert [a for _, _, a in got] == [0.64, 1.28, 1.5]
    delays = [round(a - e, 6) for _, e, a in got]
    assert delays == [0.44, 0.38, 0.3]


def test_a_word_counts_once_it_has_its_final_spelling():
    # BPE pieces: "WOR" then "WORD"; only the complete word counts
    partials = [(1.0, ["A", "WOR"]), (2.0, ["A", "WORD"]), (3.0, ["A", "WORD", "Z"])]
    got = word_delays(["A", "WORD"], partials, [0.5, 1.0])
    assert got == [(0, 0.5, 1.0), (1, 1.0, 2.0)]


def test_a_word_that_comes_goes_and_comes_back_counts_from_its_return():
    # beam search may change its best hypothesis
    partials = [(1.0, ["A"]), (2.0, ["B"]), (3.0, ["A"])]
    assert word_delays(["A"], partials, [0.4]) == [(0, 0.4, 3.0)]


def test_positions_follow_the_alignment_with_deletions_and_insertions():
    # ref A B C, final A C: C is hyp word 1
    partials = [(1.0, ["A"]), (2.0, ["A", "C"])]
    assert word_delays("A B C".split(), partials, [0.1, 0.2, 0.3]) == [
        (0, 0.1, 1.0), (2, 0.3, 2.0)]
    # ref A C, final A Z C: C is hyp word 2, so a C at position 1 does not count
    partials = [(1.0, ["A", "C"]), (2.0, ["A", "Z"]), (3.0, ["A", "Z", "C"])]
    assert word_delays(["A", "C"], partials, [0.1, 0.2]) == [(0, 0.1, 1.0), (1, 0.2, 3.0)]
    assert aligned_correct("A B C".split(), ["A", "C"]) == [(0, 0), (2, 1)]
    assert aligned_correct(["A", "C"], ["A", "Z", "C"]) == [(0, 0), (1, 2)]


def test_words_without_an_end_are_not_timed_and_early_words_have_negative_delay():
    partials = [(0.32, ["A"]), (0.64, ["A", "B"])]
    assert word_delays(["A", "B"], partials, [None, 0.8]) == [(1, 0.8, 0.64)]


def test_word_ends_voiced_end_and_the_structural_time():
    assert word_ends([0, 100, -1, 300], 400) == [100, None, 300, 400]
    audio = np.array([0.0, 0.5, 0.001, -0.2, 0.004, 0.0], np.float32)
    assert voiced_end(audio) == 4  # last sample above 1% of 0.5 is index 3
    assert voiced_end(np.zeros(5, np.float32)) == 0
    steps = [(0.64, 0.32), (0.96, 0.64), (1.2, 0.96)]
    assert first_time_covering(steps, 0.5) == 0.96
    assert first_time_covering(steps, 0.32) == 0.64
    assert first_time_covering(steps, 2.0) == 1.2


# ----------------------------------------------------------------------------
# The benchmark end to end


def load_benchmark(name: str = "streaming_latency"):
    """benchmarks/<name>.py as a module; the recipe modules it imports (model,
    zipformer, ...) are removed from sys.modules afterwards so that other
    recipes' modules of the same names are not shadowed; those already loaded
    (pts3's model, scaling, ... by earlier tests) are set aside meanwhile, so
    that the benchmark gets the Zipformer's."""
    recipe = ROOT / "egs" / "librispeech" / "ASR" / "zipformer"
    others = {n: sys.modules.pop(n) for n in {p.stem for p in recipe.glob("*.py")}
              if n in sys.modules}
    before = set(sys.modules)
    path = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                      ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.recipe_modules = {}
        for loaded in set(sys.modules) - before:
            f = getattr(sys.modules[loaded], "__file__", None) or ""
            if Path(f).parent == recipe:
                module.recipe_modules[loaded] = sys.modules.pop(loaded)
    finally:
        sys.path[:] = path
        sys.modules.update(others)
    return module


def run_benchmark(module, argv) -> int:
    """run_main(module.main, argv) with the recipe modules it was loaded with
    in sys.modules (export-onnx-streaming.py, loaded at run time, imports
    them by name), restored afterwards."""
    from icefall.cli import run_main

    saved = {n: sys.modules.get(n) for n in module.recipe_modules}
    sys.modules.update(module.recipe_modules)
    try:
        return run_main(module.main, argv)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random causal Zipformer checkpoint and a three-utterance test plan."""
    import test_zipformer_streaming as zs
    from icefall.synth_corpus import Utterance

    d = tmp_path_factory.mktemp("latency")
    model = zs.make_model(zs.ARGV)
    torch.save({"model": model.state_dict(), "config": model.config}, d / "pretrained.pt")
    zs.tokens_file(d / "tokens.txt")
    texts = ["HE FORGOT HIS UMBRELLA", "THE OLD TOWN WAS BUILT NEAR THE RIVER",
             "PEOPLE COME HERE IN THE WINTER"]
    utts = [Utterance(id=f"u{i}", split="test", text=t, voice="en-us+m3", rate=170, pitch=50,
                      pitch_range=50, snr=30.0, gain=0.5, lead=0.1, noise_seed=i)
            for i, t in enumerate(texts)]
    # the corpus as synthesize_corpus writes it: one block, the engine reset before it
    import soundfile as sf
    from icefall.espeak import get_engine
    from icefall.synth_corpus import render

    (d / "audio" / "test").mkdir(parents=True)
    get_engine().reset()
    for u in utts:
        sf.write(str(d / "audio" / "test" / f"{u.id}.flac"), render(u), 16000, format="FLAC",
                 subtype="PCM_16")
    (d / "audio" / "test.jsonl").write_text("".join(json.dumps(asdict(u)) + "\n" for u in utts))
    return d, model, utts


def test_benchmark_runs_end_to_end(bench, tiny, capsys, tmp_path):
    d, _, utts = tiny
    out = tmp_path / "words.tsv"
    argv = ["--checkpoint", str(d / "pretrained.pt"), "--tokens", str(d / "tokens.txt"),
            "--audio-dir", str(d / "audio"), "--num-utts", "3", "--chunk-sizes", "16,32",
            "--left-context-frames", "64", "--per-word-out", str(out)]
    assert run_benchmark(bench, argv) == 0
    text = capsys.readouterr().out
    num_words = sum(len(u.text.split()) for u in utts)
    assert f"3 utterances of {d / 'audio'}/test" in text
    from icefall.espeak import get_engine
    from icefall.synth_corpus import render_with_word_starts

    get_engine().reset()
    joined = sum(int((render_with_word_starts(u)[1][1:] < 0).sum()) for u in utts)
    assert f"{num_words} words, {joined} without a known end" in text
    # spoken again as the corpus was: equal to its FLAC files up to 16-bit rounding
    diff = float(text.split("max difference ")[1].split()[0])
    assert diff <= 1.0 / 32768
    rows = [line for line in text.splitlines() if line.startswith("| 16 ") or line.startswith("| 32 ")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        timed, total = (int(x) for x in cells[2].split(" / "))
        assert total == num_words and 0 <= timed <= num_words - 1
        assert float(cells[1]) >= 0.0
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["utt", "chunk", "word", "end_ms", "appear_ms", "structural_ms"]
    timed = sum(int(r.strip("|").split("|")[2].split(" / ")[0]) for r in rows)
    assert len(lines) == 1 + timed


def test_measure_utterance_against_partials_recorded_independently(bench, tiny):
    """With the reference set to the model's own final words, every word with
    a known end is timed, at the first partial (recorded here through
    stream_samples' on_change) that holds it."""
    from icefall.streaming_decoder import StreamingDecoder
    from icefall.synth_corpus import render_with_word_starts
    from icefall.tokens import read_tokens

    d, model, utts = tiny
    tokens = read_tokens(d / "tokens.txt")
    audio, starts, speech_end = render_with_word_starts(utts[1])
    chunk = 16
    bench.set_streaming(model, chunk, 64)
    decoder = StreamingDecoder(model, bench.stack_states, bench.unstack_states,
                               chunk_frames=2 * chunk, pad_frames=bench.PAD_FRAMES)
    changes = []  # (samples fed so far, words) at each change, via a second feed
    fed = {"n": 0}
    piece = 2 * chunk * 160

    def on_chunk(n, ids):
        fed["n"] = n

    with torch.no_grad():
        final_ids = bench.stream_samples(
            decoder, audio, piece, lambda ids: changes.append((fed["n"], tokens.decode(ids).split())),
            on_chunk=on_chunk)
    final = tokens.decode(final_ids).split()
    assert len(final) >= 3, final  # the sharpened random joiner emits tokens
    # fake word boundaries for the model's own words, spread over the audio
    n = len(final)
    fake_starts = np.linspace(0, speech_end, n, endpoint=False).astype(np.int64)
    with torch.no_grad():
        hyp, timed = bench.measure_utterance(decoder, tokens, chunk, final, audio, fake_starts,
                                             speech_end)
    assert hyp == final
    assert [i for i, *_ in timed] == list(range(n))
    for i, end, appear, structural in timed:
        want = min(t for t, words in changes if len(words) > i and words[i] == final[i])
        assert appear == pytest.approx(want / 16000)
        want_end = (fake_starts[i + 1] if i + 1 < n else speech_end) / 16000
        assert end == pytest.approx(want_end)
        # structural: a multiple of the piece duration or the whole audio
        k = structural * 16000 / piece
        assert abs(k - round(k)) < 1e-6 or structural == pytest.approx(len(audio) / 16000)
        assert structural >= end
    # smaller pieces (100 ms): the chunk holding the end is decoded once its
    # 130 ms of look-ahead (and a 25 ms window) are in, at the next piece
    with torch.no_grad():
        hyp100, timed100 = bench.measure_utterance(decoder, tokens, chunk, final, audio,
                                                   fake_starts, speech_end, piece=1600)
    assert hyp100 == final
    seconds = len(audio) / 16000
    for i, end, appear, structural in timed100:
        k = structural / 0.1
        assert abs(k - round(k)) < 1e-6 or structural == pytest.approx(seconds)
        assert end <= structural <= max(end + 0.32 + 0.13 + 0.025 + 0.1, seconds)
    mean = np.mean([s - e for _, e, _, s in timed])
    mean100 = np.mean([s - e for _, e, _, s in timed100])
    assert mean100 < mean  # a chunk's worth of look-ahead wait is gone


def test_missing_inputs_are_one_line_errors(bench, tiny, capsys, tmp_path):
    d, _, _ = tiny
    base = ["--tokens", str(d / "tokens.txt"), "--audio-dir", str(d / "audio")]
    assert run_benchmark(bench, base + ["--checkpoint", str(tmp_path / "no.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --checkpoint") and "no.pt: not found" in err
    assert len(err.strip().splitlines()) == 1
    argv = ["--checkpoint", str(d / "pretrained.pt"), "--tokens", str(d / "tokens.txt"),
            "--audio-dir", str(tmp_path / "nodir")]
    assert run_benchmark(bench, argv) == 2
    err = capsys.readouterr().err
    assert "nodir: not found" in err and len(err.strip().splitlines()) == 1
    argv[-1] = str(d / "audio")
    assert run_benchmark(bench, argv + ["--split", "dev"]) == 2
    assert "dev.jsonl: not found" in capsys.readouterr().err
    assert run_benchmark(bench, argv + ["--chunk-sizes", "16,x"]) == 2
    assert "--chunk-sizes" in capsys.readouterr().err


def test_streaming_benchmark_on_a_trained_checkpoint_and_corpus_audio(tiny, capsys):
    """benchmarks/streaming_benchmark.py with --checkpoint and --audio-dir:
    PyTorch and sherpa-onnx rows for the given model on the corpus audio."""
    bench = load_benchmark("streaming_benchmark")
    d, _, _ = tiny
    argv = ["--checkpoint", str(d / "pretrained.pt"), "--tokens", str(d / "tokens.txt"),
            "--audio-dir", str(d / "audio"), "--num-utts", "2", "--chunk-sizes", "16",
            "--left-context-frames", "64"]
    assert run_benchmark(bench, argv) == 0
    text = capsys.readouterr().out
    assert f"2 utterances ({d / 'audio'}/test)" in text and "trained model" in text
    for what in ("PyTorch, 1 stream", "PyTorch, 2 streams batched", "sherpa-onnx fp32",
                 "sherpa-onnx int8"):
        row = next(line for line in text.splitlines() if what in line)
        assert float(row.split("|")[3]) > 0  # an RTF
    assert run_benchmark(bench, argv[2:] + ["--exp-dir", str(d / "nothing")]) == 2
    assert run_benchmark(bench, argv[:2] + argv[4:]) == 2  # no --tokens
    assert "--tokens" in capsys.readouterr().err

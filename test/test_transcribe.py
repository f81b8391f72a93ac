"""icefall/transcribe.py: chunk plans, chunked encoding against whole-file
encoding with a local (brute-force checkable) encoder, batching and per-file errors."""

import numpy as np
import pytest
import soundfile as sf

from icefall.transcribe import (ALIGN_FRAMES, Backend, min_samples, plan_chunks, subsampling_factor,
                                transcribe_files)


def pts3_frames(t: int) -> int:
    return ((t - 1) // 2 - 1) // 2


def zipformer_frames(t: int) -> int:
    return ((t - 7) // 2 + 1) // 2


class LocalBackend(Backend):
    """A stand-in model whose output frame j depends on input frames 4j..4j+6
    only (like two stride-2 convolutions): chunked encoding must give exactly
    the whole file's output. Features: mean |x| per 160-sample frame, times
    the frame index parity, so that a misplaced frame shows."""

    def __init__(self):
        self.batches = []

    def frames_after_subsampling(self, t):
        return pts3_frames(t)

    def features(self, waves):
        out = []
        for w in waves:
            n = (len(w) + 80) // 160
            padded = np.concatenate([w, np.zeros(n * 160 - len(w) + 160, np.float32)])
            out.append(np.abs(padded[: n * 160]).reshape(n, 160).mean(1, keepdims=True))
        return out

    def encode(self, features):
        self.batches.append(len(features))
        outs = []
        for f in features:
            t = pts3_frames(len(f))
            outs.append(np.stack([f[4 * j: 4 * j + 7, 0] @ np.arange(1, 8) for j in range(t)])[:, None])
        return outs

    def concat(self, parts):
        return np.concatenate(parts)

    def search(self, encs):
        # "tokens": the encoder output quantised, so that results compare exactly
        return [list(np.round(e[:, 0] * 1e4).astype(int)) for e in encs]


@pytest.mark.parametrize("frames_fn", [pts3_frames, zipformer_frames])
@pytest.mark.parametrize("num_frames", [7, 100, 3008, 3009, 10_000, 123_457])
def test_chunk_plan_tiles_the_output_and_starts_aligned(frames_fn, num_frames):
    assert subsampling_factor(frames_fn) == 4
    chunks = plan_chunks(num_frames, frames_fn, chunk_frames=3000, context_frames=400)
    kept = []
    for c in chunks:
        assert c.start % ALIGN_FRAMES == 0 and 0 <= c.start < c.end <= num_frames
        assert c.keep_end <= frames_fn(c.end - c.start)  # the chunk's output has the kept frames
        offset = c.start // 4
        kept.extend(range(c.keep_start + offset, c.keep_end + offset))
    assert kept == list(range(frames_fn(num_frames)))


def test_chunked_encoding_equals_whole_file_encoding(tmp_path):
    rng = np.random.default_rng(0)
    wave = (0.5 * rng.standard_normal(16000 * 47 + 123) * np.sin(np.arange(16000 * 47 + 123) / 900)).astype(np.float32)
    wave = np.clip(wave, -1, 1)
    path = tmp_path / "long.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    whole = next(transcribe_files(LocalBackend(), [path], chunk_duration=100))
    backend = LocalBackend()
    chunked = next(transcribe_files(backend, [path], chunk_duration=5, chunk_context=1))
    assert len(backend.batches) >= 9  # it was chunked
    assert len(whole.tokens) == pts3_frames((len(wave) + 80) // 160)
    assert chunked.tokens == whole.tokens


def test_batches_stay_under_max_duration_and_errors_keep_the_others(tmp_path):
    paths = []
    for i, seconds in enumerate([1, 1, 1, 3, 1, 0.05, 1]):
        p = tmp_path / f"{i}.wav"
        sf.write(p, np.full(int(16000 * seconds), 0.1, np.float32), 16000)
        paths.append(p)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    paths.insert(2, nan)
    paths.append(tmp_path)  # a directory
    backend = LocalBackend()
    results = list(transcribe_files(backend, paths, max_duration=4, chunk_duration=30))
    assert [r.path for r in results] == paths
    errors = {r.path.name if r.path != tmp_path else "dir": r.error for r in results if r.error}
    assert set(errors) == {"nan.wav", "5.wav", "dir"}
    assert "NaN" in errors["nan.wav"] and "too short" in errors["5.wav"] and "directory" in errors["dir"]
    assert all(r.tokens for r in results if not r.error)
    # padded duration per batch <= 4 s: never the 3 s file with another
    assert max(backend.batches) <= 4 and sum(backend.batches) == 6


def test_min_samples_is_the_shortest_decodable_input():
    n = min_samples(pts3_frames)
    assert pts3_frames((n + 80) // 160) == 1 and pts3_frames((n - 1 + 80) // 160) == 0

"""Tests of icefall/features.py: the one fbank extractor."""

import numpy as np
import pytest
import torch

from icefall.features import compute_fbank, make_fbank, num_frames


def kaldi_fbank_frame(x: np.ndarray, t: int) -> np.ndarray:
    """Frame ``t`` of Kaldi's fbank (25 ms povey window, 10 ms shift,
    snip_edges=False, preemphasis 0.97, 512-point power spectrum, 80 mel bins
    from 20 Hz to 7600 Hz) computed directly with numpy, for a frame that does
    not touch the signal edges."""
    length, shift, nfft, rate = 400, 160, 512, 16000
    start = t * shift + shift // 2 - length // 2  # snip_edges=False: frames centred on t*shift+shift/2
    frame = x[start:start + length].astype(np.float64)
    frame = frame - frame.mean()
    frame = np.concatenate([[frame[0] * (1 - 0.97)], frame[1:] - 0.97 * frame[:-1]])
    frame = frame * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / (length - 1))) ** 0.85
    power = np.abs(np.fft.rfft(frame, nfft)) ** 2
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
    lo, hi = mel(20.0), mel(rate / 2 - 400.0)
    delta = (hi - lo) / 81
    fft_mel = mel(np.arange(nfft // 2) * rate / nfft)
    out = np.zeros(80)
    for b in range(80):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        up = (fft_mel - left) / (center - left)
        down = (right - fft_mel) / (right - center)
        weights = np.clip(np.minimum(up, down), 0, None)
        out[b] = np.log(max(np.dot(weights, power[: nfft // 2]), np.finfo(np.float32).eps))
    return out


def test_shape_and_frame_count():
    rng = np.random.default_rng(0)
    lengths = [16000, 16080, 16079, 12345, 400, 160]
    feats = compute_fbank([rng.standard_normal(n).astype(np.float32) * 0.1 for n in lengths])
    for n, f in zip(lengths, feats):
        assert f.dtype == torch.float32 and f.shape == (num_frames(n), 80)
        assert abs(f.shape[0] - n // 160) <= 1


def test_deterministic_and_batch_independent():
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 12000))
    fa, fb = compute_fbank([a, b])
    assert torch.equal(fa, compute_fbank([a])[0])  # dither 0, batching changes nothing
    assert torch.equal(fb, compute_fbank([b, a])[0])


def test_matches_direct_numpy_computation():
    rng = np.random.default_rng(2)
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(16000)).astype(np.float32)
    feats = compute_fbank([x])[0].numpy()
    for frame in (20, 50, 77):
        np.testing.assert_allclose(feats[frame], kaldi_fbank_frame(x, frame), atol=2e-3, rtol=1e-3)


def test_config_is_icefalls():
    config = make_fbank().config
    assert config.num_filters == 80 and config.dither == 0.0
    assert config.snip_edges is False and config.high_freq == -400.0 and config.low_freq == 20.0
    assert make_fbank().frame_shift == 0.01


def test_wrong_rate_is_an_error():
    with pytest.raises(ValueError, match="sample_rate=8000"):
        compute_fbank([np.zeros(800, dtype=np.float32)], sample_rate=8000)

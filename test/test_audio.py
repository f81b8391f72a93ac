"""Tests of icefall/audio.py: read_audio and resample."""

import numpy as np
import pytest
import soundfile as sf

from icefall.audio import AudioFileError, read_audio, resample


def peak_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def test_stereo_44k_is_resampled_and_first_channel_kept(tmp_path):
    rate, seconds = 44100, 1.0
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * 1000 * t)  # 1 kHz in channel 0
    right = 0.5 * np.sin(2 * np.pi * 3000 * t)  # 3 kHz in channel 1
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate)
    x = read_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000) <= 1
    assert abs(peak_frequency(x, 16000) - 1000) < 5
    assert 0.45 < np.abs(x[1000:-1000]).max() < 0.55


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("rates", [(22050, 16000), (8000, 16000), (48000, 16000), (16000, 44100)])
def test_resample_matches_scipy_bit_for_bit(dtype, rates):
    """resample designs its filter once per rate pair; the output is what
    scipy's resample_poly gives designing its default filter on each call."""
    from math import gcd

    from scipy.signal import resample_poly

    x = (np.random.default_rng(1).standard_normal(9001) * 3000).astype(dtype)
    g = gcd(*rates)
    want = resample_poly(x, rates[1] // g, rates[0] // g).astype(np.float32)
    for _ in range(2):  # the second call uses the cached filter
        got = resample(x, *rates)
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_16k_flac_round_trip(tmp_path):
    x = (np.random.default_rng(0).uniform(-0.5, 0.5, 8000)).astype(np.float32)
    sf.write(tmp_path / "a.flac", x, 16000, subtype="PCM_16")
    y = read_audio(tmp_path / "a.flac")
    assert y.shape == x.shape
    assert np.abs(y - x).max() < 1e-4  # 16-bit quantisation


def test_other_target_rate(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    assert len(read_audio(tmp_path / "a.wav", sample_rate=8000)) == 8000


def test_silent_file_is_fine(tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros(1600, dtype=np.float32), 16000)
    x = read_audio(tmp_path / "silence.wav")
    assert x.shape == (1600,) and not x.any()


def test_errors_name_the_file(tmp_path):
    with pytest.raises(AudioFileError, match=r"missing\.wav: audio file not found"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioFileError, match=r"empty\.wav: audio file is empty"):
        read_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "nosamples.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioFileError, match=r"nosamples\.wav: audio file has 0 samples"):
        read_audio(tmp_path / "nosamples.wav")
    (tmp_path / "notes.flac").write_text("this is not audio\n" * 10)
    with pytest.raises(AudioFileError, match=r"notes\.flac: not a readable audio file") as e:
        read_audio(tmp_path / "notes.flac")
    assert "\n" not in str(e.value)


def test_directory_fifo_and_device_are_named_for_what_they_are(tmp_path):
    import os

    with pytest.raises(AudioFileError, match=r"is a directory, not an audio file"):
        read_audio(tmp_path)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioFileError, match=r"pipe\.wav: is a named pipe \(FIFO\)"):
        read_audio(fifo)  # must not block waiting for a writer
    with pytest.raises(AudioFileError, match=r"/dev/null: is a character device"):
        read_audio("/dev/null")


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"),
                                          (3.5, r"outside \[-1, 1\] \(peak 3.5\)")])
def test_nan_inf_and_out_of_range_float_samples_are_refused(tmp_path, bad, message):
    x = np.zeros(1600, dtype=np.float32)
    x[100] = bad
    sf.write(tmp_path / "f.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=r"f\.wav: .*" + message) as e:
        read_audio(tmp_path / "f.wav")
    assert "\n" not in str(e.value)

"""Reading audio files as 16 kHz mono float32 arrays.

One function, :func:`read_audio`, used by decoding scripts and data
preparation. It reads anything libsndfile reads (wav, flac, ogg, ...), keeps
the first channel of multi-channel audio and resamples other sampling rates
with :func:`scipy.signal.resample_poly`. Every failure is an
:class:`AudioFileError` whose one-line message starts with the file name.
"""

import functools
import logging
from math import gcd
from pathlib import Path
from typing import Union

import numpy as np

from icefall.cli import UserError
from icefall.fsutil import describe_non_file

PathLike = Union[str, Path]


class AudioFileError(UserError, ValueError):
    """An audio file that cannot be used; the message names the file."""


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a 1-D float signal ``[N]`` from ``orig_rate`` to ``new_rate`` Hz
    with a polyphase filter; returns float32 ``[round(N * new_rate / orig_rate)]``."""
    if orig_rate == new_rate:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(orig_rate), int(new_rate))
    up, down = int(new_rate) // g, int(orig_rate) // g
    samples = np.asarray(samples)
    dtype = samples.dtype if samples.dtype in (np.float32, np.float64) else np.float64
    out = resample_poly(samples.astype(dtype, copy=False), up, down, window=_lowpass(up, down, dtype))
    return out.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _lowpass(up: int, down: int, dtype) -> np.ndarray:
    """resample_poly's own anti-aliasing filter (Kaiser window, beta 5, 20 *
    max(up, down) + 1 taps), designed once per rate pair instead of on every
    call (a sixth of the synthesis time of a short utterance). Read-only:
    resample_poly copies it."""
    from scipy.signal import firwin

    taps = firwin(20 * max(up, down) + 1, 1.0 / max(up, down), window=("kaiser", 5.0)).astype(dtype)
    taps.flags.writeable = False
    return taps


def read_audio(path: PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Read an audio file as mono float32 samples in [-1, 1] at ``sample_rate``.

    Args:
      path: an audio file libsndfile can read (wav, flac, ogg, ...).
      sample_rate: the wanted rate in Hz; other rates are resampled (and logged).

    Returns:
      ``np.ndarray`` float32 of shape ``[num_samples]``; the first channel of a
      multi-channel file. A silent file gives zeros.

    Raises:
      AudioFileError: the file is missing, a directory, FIFO or device, empty
        (0 bytes or 0 samples), not audio, or holds NaN/Inf or samples
        outside [-1, 1] (a float file that was not normalised).
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: audio file not found")
    if not path.is_file():  # never open a FIFO or a device: it may block or never end
        raise AudioFileError(f"{path}: is {describe_non_file(path)}, not an audio file")
    if path.stat().st_size == 0:
        raise AudioFileError(f"{path}: audio file is empty (0 bytes)")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError
        msg = str(e).replace("\n", " ")
        raise AudioFileError(f"{path}: not a readable audio file ({msg})") from None
    if samples.shape[0] == 0:
        raise AudioFileError(f"{path}: audio file has 0 samples")
    if samples.shape[1] > 1:
        logging.debug(f"{path}: {samples.shape[1]} channels, using the first")
    samples = samples[:, 0]
    check_samples(samples, path, rate)
    if rate != sample_rate:
        logging.info(f"{path}: resampling from {rate} Hz to {sample_rate} Hz")
        samples = resample(samples, rate, sample_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


def check_samples(samples: np.ndarray, path: PathLike, sample_rate: int = 16000, block: int = 1 << 20) -> None:
    """Refuse NaN/Inf and samples outside [-1, 1] (integer formats cannot
    hold them; a float file can), with a one-line :class:`AudioFileError`.
    Checks ``block`` samples at a time, so a long file needs no second copy."""
    peak = 0.0
    for start in range(0, len(samples), block):
        part = samples[start: start + block]
        finite = np.isfinite(part)
        if not finite.all():
            first = start + int(np.argmin(finite))
            raise AudioFileError(f"{path}: has NaN or Inf samples (the first at {first / sample_rate:.3f} s); "
                                 "refusing the file")
        peak = max(peak, float(np.abs(part).max()))
    if peak > 1.0:
        raise AudioFileError(f"{path}: samples outside [-1, 1] (peak {peak:.3g}); normalise the file")


def read_audio_files(paths, sample_rate: int = 16000) -> "tuple[list, list, int]":
    """Read several files for a decoding script: ``(waves, readable paths,
    number of failures)``. Each file that cannot be used gets its one-line
    error on stderr and is skipped, so one bad file does not stop the others."""
    import sys

    waves, names, failed = [], [], 0
    for path in paths:
        try:
            waves.append(read_audio(path, sample_rate))
            names.append(path)
        except AudioFileError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    return waves, names, failed

"""Transcribing sound files with bounded memory, for any model and runtime.

:func:`transcribe_files` is the loop of ``pretrained.py`` and
``onnx_pretrained.py``: it reads the files one by one, packs short files into
batches whose padded duration stays under ``max_duration`` seconds, and
decodes a file longer than ``chunk_duration`` alone, in overlapping chunks:

    |<-ctx->|<--- chunk k kept --->|<-ctx->|
                            |<-ctx->|<--- chunk k+1 kept --->|<-ctx->|

Each chunk is encoded with ``context`` seconds of audio on each side; only
the encoder frames of its middle part are kept, and the kept parts are
concatenated into the encoder output of the whole file, which is then
searched as one utterance. Memory thus grows with the chunk length (the
attention is quadratic in it), not with the file's; the concatenated encoder
output is small (1 hour: 90,000 frames). Chunks start at multiples of
``ALIGN_FRAMES`` fbank frames so that the subsampling sees the same frames
as it would in the whole file.

What differs between models and runtimes is behind :class:`Backend`
(PyTorch: :class:`icefall.torch_backend.TorchBackend`; onnxruntime:
:class:`icefall.onnx_decode.OnnxBackend`). This module needs only numpy.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from icefall.audio import AudioFileError, read_audio

PathLike = Union[str, Path]

SAMPLE_RATE = 16000
FRAME_SHIFT = 160  # samples per fbank frame (10 ms)
# Chunk starts are multiples of this many fbank frames: a multiple of every
# encoder's total stride (pts3: 4; Zipformer's inner stacks: up to 32).
ALIGN_FRAMES = 64


class Backend:
    """What :func:`transcribe_files` needs from a model (subclasses implement it).

    ``features`` and ``encode`` work on lists, one element per utterance;
    encoder outputs are ``[T'_i, C]`` arrays or tensors of any kind, only
    sliced and passed to :meth:`concat` and :meth:`search`.
    """

    def frames_after_subsampling(self, num_frames: int) -> int:
        """Encoder output frames for ``num_frames`` fbank frames."""
        raise NotImplementedError

    def features(self, waves: Sequence[np.ndarray]) -> List[Any]:
        """16 kHz float32 signals ``[N_i]`` -> fbank ``[T_i, 80]``, ``T_i = (N_i + 80) // 160``."""
        raise NotImplementedError

    def encode(self, features: Sequence[Any]) -> List[Any]:
        """Fbanks ``[T_i, 80]`` -> encoder outputs ``[frames_after_subsampling(T_i), C]``."""
        raise NotImplementedError

    def concat(self, parts: Sequence[Any]) -> Any:
        """Join encoder outputs ``[T'_k, C]`` along time."""
        raise NotImplementedError

    def search(self, encoder_outs: Sequence[Any]) -> List[List[int]]:
        """Encoder outputs ``[T'_i, C]`` -> one list of token ids each."""
        raise NotImplementedError


@dataclass
class Chunk:
    """One piece of a long file: fbank frames ``[start, end)`` are encoded and
    encoder frames ``[keep_start, keep_end)`` of its output are kept."""

    start: int
    end: int
    keep_start: int
    keep_end: int


def subsampling_factor(frames_after_subsampling: Callable[[int], int]) -> int:
    """The encoder's total stride (4 for pts3 and Zipformer), from its length formula."""
    n = 100_000
    return int(round(n / frames_after_subsampling(n)))


def plan_chunks(num_frames: int, frames_after_subsampling: Callable[[int], int],
                chunk_frames: int, context_frames: int) -> List[Chunk]:
    """Split ``num_frames`` fbank frames into overlapping chunks.

    Args:
      num_frames: fbank frames of the file.
      frames_after_subsampling: the model's length formula.
      chunk_frames: fbank frames kept per chunk (rounded to ``ALIGN_FRAMES``).
      context_frames: extra fbank frames encoded on each side (rounded likewise).
    Returns:
      chunks whose kept encoder frames tile ``[0, frames_after_subsampling(num_frames))``.
    """
    factor = subsampling_factor(frames_after_subsampling)
    align = ALIGN_FRAMES // factor  # encoder frames per alignment step
    keep = max(1, round(chunk_frames / ALIGN_FRAMES)) * align
    ctx = max(1, round(context_frames / ALIGN_FRAMES)) * align
    total = frames_after_subsampling(num_frames)
    chunks = []
    for k0 in range(0, total, keep):
        k1 = min(total, k0 + keep)
        start = max(0, k0 - ctx) * factor
        # the last kept frame needs input up to (k1 - 1) * factor + receptive field
        end = min(num_frames, (k1 + ctx) * factor + 2 * factor)
        offset = start // factor
        chunks.append(Chunk(start, end, k0 - offset, k1 - offset))
    return chunks


class Progress:
    """Logs ``what: i/n, elapsed, ETA`` at most every ``every`` seconds, and at the end."""

    def __init__(self, what: str, total: int, every: float = 5.0):
        self.what, self.total, self.every = what, total, every
        self.begin = self.last = time.monotonic()
        self.logged = -1

    def update(self, done: int) -> None:
        now = time.monotonic()
        if (now - self.last < self.every and done < self.total) or done == self.logged:
            return
        self.last, self.logged = now, done
        elapsed = now - self.begin
        eta = elapsed / done * (self.total - done) if done else float("nan")
        logging.info(f"{self.what}: {done}/{self.total}, {elapsed:.0f} s elapsed, ETA {eta:.0f} s")


def encode_long(backend: Backend, wave: np.ndarray, chunk_seconds: float, context_seconds: float,
                name: str = "") -> Any:
    """The encoder output ``[T', C]`` of one long signal, encoded chunk by chunk."""
    num_frames = (len(wave) + FRAME_SHIFT // 2) // FRAME_SHIFT
    chunks = plan_chunks(num_frames, backend.frames_after_subsampling,
                         int(chunk_seconds * 100), int(context_seconds * 100))
    progress = Progress(f"{name} ({len(wave) / SAMPLE_RATE:.0f} s): chunk", len(chunks))
    parts = []
    for i, c in enumerate(chunks):
        piece = wave[c.start * FRAME_SHIFT: min(len(wave), c.end * FRAME_SHIFT)]
        feats = backend.features([piece])[0][: c.end - c.start]
        enc = backend.encode([feats])[0]
        # a copy of the kept frames, so the chunk's whole output can be freed
        parts.append(backend.concat([enc[c.keep_start: c.keep_end]]))
        progress.update(i + 1)
    return backend.concat(parts)


def min_samples(frames_after_subsampling: Callable[[int], int]) -> int:
    """The fewest samples that give at least one encoder frame."""
    frames = 1
    while frames_after_subsampling(frames) < 1:
        frames += 1
    return frames * FRAME_SHIFT - FRAME_SHIFT // 2


@dataclass
class Result:
    """One file's outcome: ``tokens`` (ids) or ``error`` (a one-line message)."""

    path: PathLike
    tokens: Optional[List[int]] = None
    error: Optional[str] = None


def _read(path: PathLike, shortest: int) -> Tuple[Optional[np.ndarray], Optional[str]]:
    try:
        wave = read_audio(path, SAMPLE_RATE)
    except AudioFileError as e:
        return None, str(e)
    if len(wave) < shortest:
        return None, (f"{path}: too short ({len(wave)} samples, {len(wave) / SAMPLE_RATE:.3f} s); "
                      f"the model needs at least {shortest / SAMPLE_RATE:.3f} s")
    return wave, None


def transcribe_files(backend: Backend, paths: Sequence[PathLike], max_duration: float = 200.0,
                     chunk_duration: float = 30.0, chunk_context: float = 4.0) -> Iterator[Result]:
    """Decode sound files in order, yielding one :class:`Result` per file.

    Args:
      backend: the model (see :class:`Backend`).
      paths: audio files (any format libsndfile reads, any rate).
      max_duration: seconds of padded audio per batch of short files.
      chunk_duration: files longer than this (seconds) are decoded alone in
        chunks of this length.
      chunk_context: seconds of audio encoded on each side of a chunk.
    A file that cannot be used (unreadable, too short, NaN samples, ...) gets
    its error; the other files are decoded as usual.
    """
    shortest = min_samples(backend.frames_after_subsampling)
    pending: List[Tuple[PathLike, np.ndarray]] = []
    progress = Progress("files", len(paths), every=10.0)

    def flush() -> Iterator[Result]:
        if pending:
            encs = backend.encode(backend.features([w for _, w in pending]))
            for (p, _), hyp in zip(pending, backend.search(encs)):
                yield Result(p, tokens=hyp)
            pending.clear()

    for i, path in enumerate(paths):
        wave, error = _read(path, shortest)
        if error is not None:
            yield from flush()
            yield Result(path, error=error)
        elif len(wave) > chunk_duration * SAMPLE_RATE:
            yield from flush()
            enc = encode_long(backend, wave, chunk_duration, chunk_context, name=str(path))
            del wave  # the search needs only the encoder output
            yield Result(path, tokens=backend.search([enc])[0])
        else:
            longest = max([len(w) for _, w in pending] + [len(wave)])
            if pending and (len(pending) + 1) * longest > max_duration * SAMPLE_RATE:
                yield from flush()
            pending.append((path, wave))
        progress.update(i + 1 - len(pending))
    yield from flush()
    progress.update(len(paths))


def print_results(results: Iterator[Result], decode: Callable[[List[int]], str]) -> int:
    """Print each transcript as ``<file>:\n<text>\n`` on stdout and each error
    as ``error: <message>`` on stderr, as they come; returns the exit code a
    script gives: 0, or 1 if some file could not be decoded."""
    import sys

    failed = 0
    for result in results:
        if result.error is not None:
            print(f"error: {result.error}", file=sys.stderr, flush=True)
            failed += 1
        else:
            print(f"{result.path}:\n{decode(result.tokens)}\n", flush=True)
    return 1 if failed else 0


def add_transcribe_arguments(parser) -> None:
    """``--max-duration``, ``--chunk-duration``, ``--chunk-context`` and the
    positional ``sound_files`` (used by :func:`transcribe_and_print`)."""
    parser.add_argument("--max-duration", type=float, default=200.0,
                        help="seconds of (padded) audio decoded in one batch of short files")
    parser.add_argument("--chunk-duration", type=float, default=30.0,
                        help="files longer than this many seconds are decoded alone, in chunks "
                        "this long, so that memory does not grow with the file's length")
    parser.add_argument("--chunk-context", type=float, default=4.0,
                        help="seconds of audio encoded on each side of a chunk (not kept)")
    parser.add_argument("sound_files", type=Path, nargs="+", help="audio files (wav, flac, ...), any sample rate")


def transcribe_and_print(backend: Backend, args, decode: Callable[[List[int]], str]) -> int:
    """Decode ``args.sound_files`` with the flags of :func:`add_transcribe_arguments`
    (:func:`transcribe_files`) and print them (:func:`print_results`); returns
    the exit code, 0 or 1 (some file could not be decoded)."""
    results = transcribe_files(backend, args.sound_files, args.max_duration,
                               args.chunk_duration, args.chunk_context)
    return print_results(results, decode)


def drop_short_cuts(cuts, frames_after_subsampling: Callable[[int], int], name: str = "") -> Tuple[Any, int]:
    """Remove the cuts of a lhotse CutSet that are too short for the model
    (no encoder frame), logging how many; returns (kept CutSet, dropped count)."""
    from lhotse import CutSet
    from lhotse.utils import compute_num_frames

    def frames(c) -> int:
        if getattr(c, "num_frames", None):
            return c.num_frames
        return compute_num_frames(c.duration, frame_shift=0.01, sampling_rate=SAMPLE_RATE)

    kept, dropped = [], []
    for c in cuts:
        (kept if frames_after_subsampling(frames(c)) >= 1 else dropped).append(c)
    if dropped:
        logging.warning(f"{name}: dropped {len(dropped)} cut(s) too short for the model's subsampling "
                        f"(e.g. {dropped[0].id}, {dropped[0].duration:.3f} s)")
    return CutSet.from_cuts(kept), len(dropped)

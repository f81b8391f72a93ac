"""When does a streaming recogniser show a word, relative to when it was said?

A stream is described by its partial transcripts: ``(t, words)`` after each
decoded chunk, ``t`` being the seconds of audio fed in so far, in order; the
last one is the final transcript. The reference words come with their end
times (seconds; None where unknown).

For each reference word that the final transcript gets right (an edit-distance
alignment of reference and final words, as the WER counts them), its
appearance time is the first ``t`` from which on every partial holds that
word, in its final spelling, at its final position; its delay is appearance
minus end. With greedy search a partial only grows, so this is the first
partial that holds it; with beam search a word that comes, goes and comes
back counts from its last arrival.

    timings = word_delays(ref_words, partials, ends)   # [(ref index, end, appear)]
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np

Partial = Tuple[float, Sequence[str]]  # (seconds of audio fed, words)
EPS = "*"


def aligned_correct(ref: Sequence[str], hyp: Sequence[str]) -> List[Tuple[int, int]]:
    """(ref index, hyp index) of the words an edit-distance alignment of
    ``ref`` and ``hyp`` finds correct (kaldialign, as icefall/wer.py)."""
    import kaldialign

    pairs, i, j = [], 0, 0
    for r, h in kaldialign.align(list(ref), list(hyp), EPS):
        if r != EPS and h != EPS and r == h:
            pairs.append((i, j))
        i += r != EPS
        j += h != EPS
    return pairs


def word_delays(ref: Sequence[str], partials: Sequence[Partial],
                ends: Sequence[Optional[float]]) -> List[Tuple[int, float, float]]:
    """Appearance times of the correctly recognised reference words.

    Args:
      ref: the reference words ``[W]``.
      partials: ``[(t, words), ...]`` in time order, the last the final
        transcript (see the module docstring); at least one.
      ends: ``[W]`` end time of each reference word in seconds, None if unknown.

    Returns:
      ``[(ref index, end, appearance)]`` in seconds, for each reference word
      that the final transcript has right and whose end is known;
      delay = appearance - end (negative if the word shows before it ends).
    """
    assert len(ref) == len(ends), (len(ref), len(ends))
    final = list(partials[-1][1])
    out = []
    for i, j in aligned_correct(ref, final):
        if ends[i] is None:
            continue
        appear = partials[-1][0]
        for t, words in reversed(partials):
            if len(words) > j and words[j] == final[j]:
                appear = t
            else:
                break
        out.append((i, float(ends[i]), float(appear)))
    return out


def voiced_end(audio: np.ndarray, threshold: float = 0.01) -> int:
    """One past the last sample of ``audio`` ``[N]`` whose magnitude exceeds
    ``threshold`` times the peak (0 for silence)."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    loud = np.nonzero(np.abs(audio) > threshold * peak)[0] if peak > 0 else []
    return int(loud[-1]) + 1 if len(loud) else 0


def word_ends(starts: Sequence[int], last_end: int) -> List[Optional[int]]:
    """End of each word (samples): the next word's start; ``last_end`` for
    the last word; None where the next word's start is unknown (< 0, a word
    espeak joined to the one before it)."""
    ends: List[Optional[int]] = []
    for k in range(len(starts)):
        nxt = starts[k + 1] if k + 1 < len(starts) else last_end
        ends.append(int(nxt) if nxt >= 0 else None)
    return ends


def first_time_covering(steps: Sequence[Tuple[float, float]], end: float) -> float:
    """The first ``t`` of ``steps`` ``[(t, seconds of audio the decoded chunks
    cover)]`` whose chunks reach ``end`` (seconds), else the last ``t``:
    the earliest a word ending at ``end`` can show at all."""
    for t, covered in steps:
        if covered >= end:
            return t
    return steps[-1][0]

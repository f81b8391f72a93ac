"""Tests of icefall.ctc_decode: greedy search against icefall's output and by
hand, prefix beam search against brute force over all alignments."""

import itertools
import math
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icefall.ctc_decode import (  # noqa: E402
    ctc_greedy_search,
    ctc_prefix_beam_search,
    ctc_prefix_beam_search_one,
)

DATA = Path(__file__).resolve().parent / "data"


def test_greedy_matches_icefall():
    """icefall.decode.ctc_greedy_search on a small Zipformer's CTC output."""
    ref = torch.load(DATA / "icefall_ctc_greedy_ref.pt", weights_only=True)
    hyps = ctc_greedy_search(ref["ctc_output"], ref["encoder_out_lens"], blank_id=0)
    assert hyps == ref["ctc_greedy_search_hyps"] == [[49], [6, 39, 5, 5, 46, 37, 43, 11]]


def test_greedy_by_hand():
    # argmax per frame: utt 0: 1 1 0 1 2 2 0 | 2 (padding); utt 1: 0 0 2 2 1
    best = [[1, 1, 0, 1, 2, 2, 0, 2], [0, 0, 2, 2, 1, 1, 1, 1]]
    log_probs = torch.full((2, 8, 3), -5.0)
    for n, row in enumerate(best):
        for t, v in enumerate(row):
            log_probs[n, t, v] = -0.1
    assert ctc_greedy_search(log_probs, torch.tensor([7, 5])) == [[1, 1, 2], [2, 1]]
    # another blank id: 2 is dropped, 0 kept
    assert ctc_greedy_search(log_probs, torch.tensor([7, 5]), blank_id=2) == [[1, 0, 1, 0], [0, 1]]


def _brute_force(log_probs: torch.Tensor, blank_id: int = 0):
    """log P(labelling) for every labelling, summing over all V**T alignments."""
    T, V = log_probs.shape
    lp = log_probs.double().tolist()
    total = defaultdict(list)
    for path in itertools.product(range(V), repeat=T):
        labels = tuple(v for i, v in enumerate(path)
                       if v != blank_id and (i == 0 or path[i - 1] != v))
        total[labels].append(sum(lp[t][v] for t, v in enumerate(path)))
    return {k: math.log(sum(math.exp(x) for x in v)) for k, v in total.items()}


def _random_log_probs(T, V, seed, sharpness=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (sharpness * torch.randn(T, V, generator=gen, dtype=torch.float64)).log_softmax(-1)


@pytest.mark.parametrize("T, V, blank_id, seed", [
    (1, 3, 0, 0), (4, 3, 0, 1), (5, 3, 0, 2), (6, 4, 0, 3), (6, 3, 2, 4), (7, 3, 1, 5),
])
def test_prefix_beam_search_with_large_beam_is_exact(T, V, blank_id, seed):
    log_probs = _random_log_probs(T, V, seed)
    want = _brute_force(log_probs, blank_id)
    got = ctc_prefix_beam_search_one(log_probs, beam=10_000, blank_id=blank_id)
    assert len(got) == len(want)  # every labelling survives
    for hyp, score in got:
        assert score == pytest.approx(want[tuple(hyp)], abs=1e-9)
    best = max(want, key=want.get)
    assert tuple(got[0][0]) == best
    assert math.fsum(math.exp(s) for _, s in got) == pytest.approx(1.0, abs=1e-9)


def test_prefix_beam_search_by_hand():
    """Without blanks, frames 'a a' read 'a'; and the best labelling need not
    be the best path's."""
    p = torch.tensor([[0.0, 0.55, 0.45], [0.0, 0.55, 0.45]]).clamp(min=1e-30).log()
    got = dict((tuple(h), s) for h, s in ctc_prefix_beam_search_one(p, beam=10))
    assert got[(1,)] == pytest.approx(math.log(0.55 * 0.55))
    assert got[(2,)] == pytest.approx(math.log(0.45 * 0.45))
    assert got[(1, 2)] == pytest.approx(math.log(0.55 * 0.45))
    assert got[(2, 1)] == pytest.approx(math.log(0.45 * 0.55))
    # blank 0.4, a 0.35, b 0.25 on both frames: the best path is blank blank
    # (0.16), but P(a) = 0.35 * 0.35 + 2 * 0.35 * 0.4 = 0.4025
    p = torch.tensor([[0.4, 0.35, 0.25]] * 2).log().unsqueeze(0)
    assert ctc_greedy_search(p, torch.tensor([2])) == [[]]
    assert ctc_prefix_beam_search(p, torch.tensor([2]), beam=2) == [[1]]
    best = ctc_prefix_beam_search_one(p[0], beam=2)[0]
    assert best[0] == [1] and best[1] == pytest.approx(math.log(0.4025))


def test_prefix_beam_search_batch_and_lengths():
    """Each utterance uses only its first lens[n] frames; small beams still
    find the brute-force best on these peaked inputs."""
    a = _random_log_probs(6, 4, seed=10, sharpness=3.0)
    b = _random_log_probs(6, 4, seed=11, sharpness=3.0)
    batch = torch.stack([a, b]).float()
    batch[1, 4:] = 0.0  # padding must be ignored
    got = ctc_prefix_beam_search(batch, torch.tensor([6, 4]), beam=4)
    for hyp, lp in zip(got, [a, b[:4]]):
        want = _brute_force(lp.float())
        assert tuple(hyp) == max(want, key=want.get)


def test_prefix_beam_search_keeps_beam_best():
    """With beam B the result holds at most B prefixes, best first, each
    scored no higher than its exact probability (pruned alignments)."""
    lp = _random_log_probs(7, 4, seed=7, sharpness=1.0)
    want = _brute_force(lp)
    got = ctc_prefix_beam_search_one(lp, beam=3)
    assert len(got) == 3
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    for hyp, score in got:
        assert score <= want[tuple(hyp)] + 1e-12

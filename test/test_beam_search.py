"""Tests for icefall/beam_search.py.

The decoders are compared with independent references written here: a
plain step-by-step greedy loop, and brute-force enumeration of all
alignments for the beam searches. The references call the toy joiner with
``project_input=True`` (projection inside the joiner), unlike the library.
"""

import itertools
import math
from typing import Dict, List, Tuple

import pytest
import torch
from torch import nn

from icefall.beam_search import (
    DECODING_METHODS,
    Hypothesis,
    HypothesisList,
    beam_search,
    decode_batch,
    greedy_search,
    greedy_search_batch,
    modified_beam_search,
)

BLANK = 0


class ToyDecoder(nn.Module):
    """Stateless decoder: embeddings of the last context_size tokens -> linear."""

    def __init__(self, vocab_size: int, dim: int, context_size: int):
        super().__init__()
        self.blank_id = BLANK
        self.context_size = context_size
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, dim)
        self.linear = nn.Linear(context_size * dim, dim)

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        assert not need_pad
        assert y.dtype == torch.int64 and y.shape[1] == self.context_size, y
        # -1 means "no token": zero embedding, as icefall's Decoder.
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)
        return self.linear(emb.reshape(y.shape[0], 1, -1))  # (N, 1, dim)


class ToyJoiner(nn.Module):
    def __init__(self, enc_dim: int, dec_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(enc_dim, joiner_dim)
        self.decoder_proj = nn.Linear(dec_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)
        self.blank_bias = 0.0
        self.calls = 0

    def forward(self, enc, dec, project_input: bool = True):
        assert enc.ndim == dec.ndim, (enc.shape, dec.shape)
        self.calls += 1
        if project_input:
            enc, dec = self.encoder_proj(enc), self.decoder_proj(dec)
        logits = self.output_linear(torch.tanh(enc + dec))
        if self.blank_bias:
            bias = torch.zeros(logits.shape[-1])
            bias[BLANK] = self.blank_bias
            logits = logits + bias
        return logits


class ToyTransducer(nn.Module):
    def __init__(self, vocab_size=4, context_size=2, enc_dim=6, dim=8, seed=0, scale=2.0):
        super().__init__()
        torch.manual_seed(seed)
        self.decoder = ToyDecoder(vocab_size, dim, context_size)
        self.joiner = ToyJoiner(enc_dim, dim, dim, vocab_size)
        with torch.no_grad():
            # Sharper (but not degenerate) output distributions.
            self.joiner.output_linear.weight.mul_(scale)
        self.eval()


def make_batch(lens: List[int], enc_dim: int = 6, seed: int = 100):
    """A padded batch whose padding is random garbage (must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lens), max(lens), enc_dim, generator=g)
    return x, torch.tensor(lens, dtype=torch.int64)


# ---------------------------------------------------------------- references


class StepTable:
    """Cached float64 log-probs of the joiner at (frame, decoder context)."""

    def __init__(self, model: ToyTransducer, enc: torch.Tensor):
        self.model, self.enc = model, enc  # enc: (T, C)
        self.cache: Dict[Tuple[int, Tuple[int, ...]], List[float]] = {}

    def __call__(self, t: int, context: Tuple[int, ...]) -> List[float]:
        key = (t, context)
        if key not in self.cache:
            with torch.no_grad():
                y = torch.tensor([list(context)], dtype=torch.int64)
                dec = self.model.decoder(y, need_pad=False)  # (1, 1, D)
                logits = self.model.joiner(
                    self.enc[t].reshape(1, 1, 1, -1),
                    dec.reshape(1, 1, 1, -1),
                    project_input=True,
                )
            self.cache[key] = logits.reshape(-1).double().log_softmax(-1).tolist()
        return self.cache[key]


def init_context(model) -> Tuple[int, ...]:
    return tuple([-1] * (model.decoder.context_size - 1) + [BLANK])


def ref_greedy(model, enc: torch.Tensor, max_sym_per_frame: int) -> List[int]:
    table = StepTable(model, enc)
    context, hyp = init_context(model), []
    for t in range(enc.shape[0]):
        for _ in range(max_sym_per_frame):
            lp = table(t, context)
            y = max(range(len(lp)), key=lambda v: lp[v])
            if y == BLANK:
                break
            hyp.append(y)
            context = context[1:] + (y,)
    return hyp


def logadd(a: float, b: float) -> float:
    return float(torch.logaddexp(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))


def brute_force_modified(model, enc) -> Dict[Tuple[int, ...], float]:
    """Total log-prob of each token sequence, over all alignments in which
    every frame emits exactly one symbol (blank or a token)."""
    table = StepTable(model, enc)
    V, T = model.decoder.vocab_size, enc.shape[0]
    totals: Dict[Tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        context, ys, lp = init_context(model), (), 0.0
        for t, s in enumerate(path):
            lp += table(t, context)[s]
            if s != BLANK:
                ys += (s,)
                context = context[1:] + (s,)
        totals[ys] = logadd(totals.get(ys, -math.inf), lp)
    return totals


def brute_force_graves(model, enc, cap: int) -> Dict[Tuple[int, ...], float]:
    """Total log-prob of each token sequence, over all alignments in which
    every frame emits 0..cap tokens followed by one blank."""
    table = StepTable(model, enc)
    V, T = model.decoder.vocab_size, enc.shape[0]
    tokens = [v for v in range(V) if v != BLANK]
    paths = [((), 0.0)]  # (ys, log-prob), one entry per alignment, unmerged
    for t in range(T):
        new_paths = []
        for ys, lp in paths:
            for k in range(cap + 1):
                for emitted in itertools.product(tokens, repeat=k):
                    y2, lp2 = ys, lp
                    for s in emitted:
                        context = (init_context(model) + y2)[-model.decoder.context_size :]
                        lp2 += table(t, context)[s]
                        y2 += (s,)
                    context = (init_context(model) + y2)[-model.decoder.context_size :]
                    new_paths.append((y2, lp2 + table(t, context)[BLANK]))
        paths = new_paths
    assert len(paths) == sum(len(tokens) ** k for k in range(cap + 1)) ** T
    totals: Dict[Tuple[int, ...], float] = {}
    for ys, lp in paths:
        totals[ys] = logadd(totals.get(ys, -math.inf), lp)
    return totals


def ranked(totals, context_size: int, length_norm: bool):
    score = (lambda ys: totals[ys] / (context_size + len(ys))) if length_norm else totals.get
    order = sorted(totals, key=score, reverse=True)
    return order, score(order[0]) - score(order[1])


# ---------------------------------------------------------------- helpers


def test_hypothesis_list_merges_by_log_add():
    hyps = HypothesisList()
    hyps.add(Hypothesis(ys=[-1, 0, 3, 4], log_prob=math.log(0.1)))
    hyps.add(Hypothesis(ys=[-1, 0, 3, 4], log_prob=math.log(0.2)))
    hyps.add(Hypothesis(ys=[-1, 0], log_prob=math.log(0.45)))
    assert len(hyps) == 2
    assert hyps.get_most_probable().ys == [-1, 0]
    # Normalised by len(ys) (prefix included): log(.3)/4 > log(.45)/2.
    best = hyps.get_most_probable(length_norm=True)
    assert best.ys == [-1, 0, 3, 4] and best.log_prob == pytest.approx(math.log(0.3))
    assert [h.ys for h in hyps.topk(1)] == [[-1, 0]]
    assert [h.ys for h in hyps.filter(math.log(0.35))] == [[-1, 0]]
    hyps.remove(best)
    assert len(hyps) == 1 and Hypothesis(ys=[-1, 0]) in hyps


# ---------------------------------------------------------------- greedy


@pytest.mark.parametrize("max_sym", [1, 2])
@pytest.mark.parametrize("context_size", [1, 2])
def test_greedy_batch_matches_single_and_reference(max_sym, context_size):
    model = ToyTransducer(vocab_size=5, context_size=context_size, seed=1)
    lens = [5, 9, 3, 9, 1, 7]  # unsorted, with ties
    x, x_lens = make_batch(lens)
    batch = greedy_search_batch(model, x, x_lens, max_sym_per_frame=max_sym)
    assert len(batch) == len(lens)
    nonempty = 0
    for i, n in enumerate(lens):
        enc = x[i : i + 1, :n]
        ref = ref_greedy(model, enc[0], max_sym)
        assert batch[i] == ref, (i, batch[i], ref)
        assert greedy_search(model, enc, max_sym_per_frame=max_sym) == ref
        assert greedy_search_batch(model, enc, torch.tensor([n]), max_sym) == [ref]
        assert len(ref) <= n * max_sym
        nonempty += len(ref) > 0
    assert nonempty >= 3  # the comparison is not trivially between empty lists


def test_greedy_max_sym_matters():
    # Sanity check that the max_sym_per_frame test above is meaningful: with
    # a low blank probability, allowing 2 symbols per frame emits more.
    model = ToyTransducer(vocab_size=5, seed=1)
    model.joiner.blank_bias = -2.0
    x, x_lens = make_batch([6, 8])
    one = greedy_search_batch(model, x, x_lens, max_sym_per_frame=1)
    two = greedy_search_batch(model, x, x_lens, max_sym_per_frame=2)
    assert [len(h) for h in one] != [len(h) for h in two]
    for i, n in enumerate([6, 8]):
        assert two[i] == ref_greedy(model, x[i, :n], 2)


def test_greedy_batch_order_follows_input():
    model = ToyTransducer(vocab_size=5, seed=2)
    lens = [2, 8, 4, 6, 8, 3]
    x, x_lens = make_batch(lens, seed=7)
    out = greedy_search_batch(model, x, x_lens)
    perm = [4, 0, 5, 2, 1, 3]
    out_perm = greedy_search_batch(model, x[perm], x_lens[perm])
    assert out_perm == [out[p] for p in perm]
    assert len(set(map(tuple, out))) > 1  # different utterances, different outputs


# ---------------------------------------------------------------- beam searches


def _seeds_with_margin(make_totals, length_norm: bool, n_needed: int = 5):
    """Yield (model, enc, best_ys) for cases whose best sequence wins by a
    clear margin, so float32 vs float64 rounding cannot flip the answer."""
    found = 0
    for seed in range(40):
        model = ToyTransducer(vocab_size=4, seed=seed)
        x, _ = make_batch([3], seed=1000 + seed)
        totals = make_totals(model, x[0])
        order, margin = ranked(totals, model.decoder.context_size, length_norm)
        if margin < 1e-3:
            continue
        found += 1
        yield model, x, order
        if found == n_needed:
            return
    raise AssertionError("not enough well-separated cases")


@pytest.mark.parametrize("length_norm", [False, True])
def test_modified_beam_search_exhaustive_matches_brute_force(length_norm):
    beats_greedy = 0
    for model, x, order in _seeds_with_margin(brute_force_modified, length_norm):
        # 1 + 3 + 9 + 27 = 40 sequences at most: beam 64 keeps everything.
        hyp = modified_beam_search(model, x, torch.tensor([3]), beam=64, length_norm=length_norm)
        assert hyp == [list(order[0])], (hyp, order[:3])
        beats_greedy += list(order[0]) != greedy_search(model, x)
    if not length_norm:
        # The test discriminates: the sequence-level best is not always the
        # greedy one.
        assert beats_greedy >= 1


@pytest.mark.parametrize("length_norm", [False, True])
def test_beam_search_exhaustive_matches_brute_force(length_norm):
    cap = 2
    beats_greedy = 0
    for model, x, order in _seeds_with_margin(
        lambda m, e: brute_force_graves(m, e, cap), length_norm
    ):
        hyp = beam_search(model, x, beam=10_000, max_sym_per_frame=cap, length_norm=length_norm)
        assert hyp == list(order[0]), (hyp, order[:3])
        beats_greedy += list(order[0]) != greedy_search(model, x, max_sym_per_frame=cap)
    if not length_norm:
        assert beats_greedy >= 1


def test_modified_beam_1_equals_greedy():
    model = ToyTransducer(vocab_size=5, seed=3)
    lens = [7, 3, 10, 5, 10]
    x, x_lens = make_batch(lens, seed=3)
    assert modified_beam_search(model, x, x_lens, beam=1) == greedy_search_batch(
        model, x, x_lens, max_sym_per_frame=1
    )


@pytest.mark.parametrize("beam", [2, 4])
def test_modified_beam_search_batch_equals_single(beam):
    model = ToyTransducer(vocab_size=5, seed=4)
    lens = [4, 11, 1, 8, 11, 6]
    x, x_lens = make_batch(lens, seed=4)
    batch = modified_beam_search(model, x, x_lens, beam=beam)
    single = [
        modified_beam_search(model, x[i : i + 1, :n], torch.tensor([n]), beam=beam)[0]
        for i, n in enumerate(lens)
    ]
    assert batch == single
    assert sum(len(h) > 0 for h in batch) >= 3


def test_beam_search_small_beam_runs_on_larger_vocab():
    model = ToyTransducer(vocab_size=12, seed=5)
    x, _ = make_batch([15], seed=5)
    for beam in (1, 4):
        hyp = beam_search(model, x, beam=beam)
        assert all(0 < y < 12 for y in hyp)
        assert len(hyp) <= 15 * 3
    # Non-exhaustive beams carry no optimality guarantee: only check that the
    # result is a valid token list.
    assert all(0 < y < 12 for y in modified_beam_search(model, x, torch.tensor([15]), beam=4)[0])


def test_blank_dominates_gives_empty():
    model = ToyTransducer(vocab_size=5, seed=6)
    model.joiner.blank_bias = 50.0
    lens = [5, 2, 7]
    x, x_lens = make_batch(lens)
    assert greedy_search_batch(model, x, x_lens, max_sym_per_frame=3) == [[], [], []]
    assert modified_beam_search(model, x, x_lens, beam=4) == [[], [], []]
    assert beam_search(model, x[:1, :5], beam=4) == []


def test_blank_never_wins_gives_max_symbols():
    model = ToyTransducer(vocab_size=5, seed=7)
    model.joiner.blank_bias = -50.0
    lens = [5, 2, 7]
    x, x_lens = make_batch(lens)
    mod = modified_beam_search(model, x, x_lens, beam=4)
    assert [len(h) for h in mod] == lens
    assert all(BLANK not in h for h in mod)
    greedy = greedy_search_batch(model, x, x_lens, max_sym_per_frame=2)
    assert [len(h) for h in greedy] == [2 * n for n in lens]
    # In Graves' topology every frame still ends with one blank, so the
    # result need not be long. The point here is that the search terminates:
    # with blank never the best candidate, a frame only ends when the
    # per-frame cap exhausts A.
    model.joiner.calls = 0
    hyp = beam_search(model, x[:1, :5], beam=4, max_sym_per_frame=3, length_norm=False)
    assert len(hyp) <= 5 * 3 and BLANK not in hyp
    # The cap bounds the work: at most beam * (1 + 4 + 16 + 64) joiner
    # evaluations per frame (fewer thanks to caching by context).
    assert model.joiner.calls <= 5 * 4 * 85
    hyp = beam_search(model, x[:1, :5], beam=4, max_sym_per_frame=3)
    assert 0 < len(hyp) <= 5 * 3 and BLANK not in hyp


def test_unk_is_never_emitted():
    model = ToyTransducer(vocab_size=5, seed=8)
    model.joiner.blank_bias = -1.0
    lens = [9, 6]
    x, x_lens = make_batch(lens, seed=8)
    plain = greedy_search_batch(model, x, x_lens)
    unk = next(y for h in plain for y in h)  # a token that the model does emit
    model.unk_id = unk
    for hyps in (
        greedy_search_batch(model, x, x_lens, max_sym_per_frame=2),
        modified_beam_search(model, x, x_lens, beam=3),
        [beam_search(model, x[:1, :9], beam=3)],
    ):
        assert all(unk not in h for h in hyps), hyps


def test_zero_length_utterances():
    model = ToyTransducer(vocab_size=5, seed=9)
    lens = [4, 0, 6, 0]
    x, x_lens = make_batch([4, 1, 6, 1])
    x_lens = torch.tensor(lens)
    ref = greedy_search_batch(model, x[[0, 2]], torch.tensor([4, 6]))
    out = greedy_search_batch(model, x, x_lens)
    assert out == [ref[0], [], ref[1], []]
    out = modified_beam_search(model, x, x_lens, beam=3)
    ref = modified_beam_search(model, x[[0, 2]], torch.tensor([4, 6]), beam=3)
    assert out == [ref[0], [], ref[1], []]
    assert greedy_search_batch(model, x[:, :0], torch.tensor([0, 0, 0, 0])) == [[]] * 4
    assert beam_search(model, x[:1, :0]) == []


def test_decode_batch_dispatches():
    model = ToyTransducer(vocab_size=5, seed=10)
    lens = [6, 0, 9, 4]
    x, _ = make_batch([6, 1, 9, 4], seed=10)
    x_lens = torch.tensor(lens)
    assert set(DECODING_METHODS) == {"greedy_search", "beam_search", "modified_beam_search"}
    assert decode_batch(model, x, x_lens, "greedy_search", max_sym_per_frame=2) == (
        greedy_search_batch(model, x, x_lens, max_sym_per_frame=2)
    )
    assert decode_batch(model, x, x_lens, "modified_beam_search", beam=3) == (
        modified_beam_search(model, x, x_lens, beam=3)
    )
    expected = [beam_search(model, x[i : i + 1, :n], beam=3) if n else [] for i, n in enumerate(lens)]
    assert decode_batch(model, x, x_lens, "beam_search", beam=3) == expected
    with pytest.raises(ValueError):
        decode_batch(model, x, x_lens, "fast_beam_search")

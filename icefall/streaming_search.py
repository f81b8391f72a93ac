"""Transducer search that carries its state from one chunk to the next.

A streaming decoder (see :mod:`icefall.streaming_decoder`) calls
:func:`search_chunk` once per chunk with the encoder output of a batch of
streams; each stream keeps its own search state between calls, so streams
can join and leave the batch at any chunk:

- greedy_search: :class:`GreedyState`, the decoded tokens after the decoder's
  initial context, and the stream's last projected decoder output;
- modified_beam_search: :class:`BeamState`, the stream's active hypotheses.

Both emit at most one token per frame, as icefall's streaming_beam_search.py,
so decoding a whole utterance in chunks gives exactly what
:func:`icefall.beam_search.greedy_search_batch` /
:func:`icefall.beam_search.modified_beam_search` give on the concatenated
encoder output.  The model interface is the one of :mod:`icefall.beam_search`
(``model.decoder``, ``model.joiner``, optional ``model.unk_id``).
"""

import math
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from icefall.beam_search import (Hypothesis, HypothesisList, _decoder_proj, _initial_context,
                                 _joiner_logits, _skip_ids)

SEARCH_METHODS = ("greedy_search", "modified_beam_search")


def add_streaming_search_arguments(parser) -> None:
    """--decoding-method and --num-active-paths, as icefall's streaming_decode.py."""
    parser.add_argument("--decoding-method", choices=SEARCH_METHODS, default="greedy_search",
                        help="search run on each chunk's encoder output (default: %(default)s)")
    parser.add_argument("--num-active-paths", type=int, default=4,
                        help="beam of modified_beam_search (default: %(default)s)")


class GreedyState:
    """One stream's greedy search: ``ys`` is the decoder's initial context
    followed by the tokens; ``decoder_out`` [joiner_dim] is the projected
    decoder output for ``ys[-context_size:]`` (None until first needed)."""

    def __init__(self, model: nn.Module):
        self.context_size = model.decoder.context_size
        self.ys: List[int] = _initial_context(model)
        self.decoder_out: Optional[Tensor] = None

    @property
    def tokens(self) -> List[int]:
        """The decoded token ids so far."""
        return self.ys[self.context_size:]


class BeamState:
    """One stream's modified beam search: its hypotheses, each starting with
    the decoder's initial context."""

    def __init__(self, model: nn.Module):
        self.context_size = model.decoder.context_size
        self.hyps = HypothesisList()
        self.hyps.add(Hypothesis(ys=_initial_context(model), log_prob=0.0))

    @property
    def tokens(self) -> List[int]:
        """The tokens of the best hypothesis so far (score / length, as icefall)."""
        return self.hyps.get_most_probable(length_norm=True).ys[self.context_size:]


SearchState = Union[GreedyState, BeamState]


def init_search_state(model: nn.Module, method: str) -> SearchState:
    """The state of a new stream for `method` (one of SEARCH_METHODS)."""
    if method == "greedy_search":
        return GreedyState(model)
    if method == "modified_beam_search":
        return BeamState(model)
    raise ValueError(f"unknown decoding method {method!r}; expected one of {SEARCH_METHODS}")


@torch.no_grad()
def search_chunk(model: nn.Module, encoder_out: Tensor, states: Sequence[SearchState],
                 num_active_paths: int = 4) -> None:
    """Advance each stream's search over its frames of one chunk (in place).

    Args:
      model: the transducer, in eval mode.
      encoder_out: [N, T, C] encoder output (not yet projected by the
        joiner's encoder_proj), every frame valid.
      states: N states of one kind (all GreedyState or all BeamState).
      num_active_paths: beam of modified_beam_search.
    """
    assert encoder_out.size(0) == len(states), (encoder_out.shape, len(states))
    if len(states) == 0:
        return
    enc = model.joiner.encoder_proj(encoder_out)  # [N, T, J]
    if all(isinstance(s, GreedyState) for s in states):
        _greedy_chunk(model, enc, states)
    elif all(isinstance(s, BeamState) for s in states):
        _beam_chunk(model, enc, states, num_active_paths)
    else:
        raise TypeError("search_chunk: the states must all be GreedyState or all BeamState")


def _greedy_chunk(model: nn.Module, enc: Tensor, states: Sequence[GreedyState]) -> None:
    device = enc.device
    skip = _skip_ids(model)
    c = model.decoder.context_size
    missing = [i for i, s in enumerate(states) if s.decoder_out is None]
    if missing:
        new = _decoder_proj(model, [states[i].ys[-c:] for i in missing], device)
        for i, d in zip(missing, new):
            states[i].decoder_out = d
    dec = torch.stack([s.decoder_out for s in states])  # [N, J]
    for t in range(enc.size(1)):
        ys = _joiner_logits(model, enc[:, t], dec).argmax(dim=-1).tolist()
        emitted = [i for i, y in enumerate(ys) if y not in skip]
        if not emitted:
            continue
        for i in emitted:
            states[i].ys.append(ys[i])
        idx = torch.tensor(emitted, dtype=torch.int64, device=device)
        new = _decoder_proj(model, [states[i].ys[-c:] for i in emitted], device)
        dec = dec.index_copy(0, idx, new.to(dec.dtype))
    for s, d in zip(states, dec):
        s.decoder_out = d


def _beam_chunk(model: nn.Module, enc: Tensor, states: Sequence[BeamState], beam: int) -> None:
    device = enc.device
    skip = _skip_ids(model)
    c = model.decoder.context_size
    n = len(states)
    for t in range(enc.size(1)):
        A = [list(s.hyps) for s in states]
        num_hyps = [len(a) for a in A]
        flat = [h for a in A for h in a]
        row_ids = torch.tensor([i for i, m in enumerate(num_hyps) for _ in range(m)],
                               dtype=torch.int64, device=device)
        pos = torch.tensor([j for m in num_hyps for j in range(m)], dtype=torch.int64,
                           device=device)
        dec = _decoder_proj(model, [h.ys[-c:] for h in flat], device)
        log_probs = _joiner_logits(model, enc[:, t].index_select(0, row_ids), dec)
        log_probs = log_probs.log_softmax(dim=-1) + torch.tensor(
            [h.log_prob for h in flat], dtype=torch.float32, device=device).unsqueeze(1)
        vocab_size = log_probs.size(1)
        # One topk over [N, max_hyps * V], padded with -inf.
        padded = log_probs.new_full((n, max(num_hyps), vocab_size), -math.inf)
        padded[row_ids, pos] = log_probs
        k = min(beam, padded.size(1) * vocab_size)
        values, indices = padded.reshape(n, -1).topk(k, dim=1)
        for i, s in enumerate(states):
            hyps = HypothesisList()
            for value, index in zip(values[i].tolist(), indices[i].tolist()):
                h, token = divmod(index, vocab_size)
                if h >= num_hyps[i]:
                    continue  # padding
                old = A[i][h]
                hyps.add(Hypothesis(ys=old.ys if token in skip else old.ys + [token],
                                    log_prob=value))
            s.hyps = hyps

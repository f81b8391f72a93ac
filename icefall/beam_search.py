"""Model-agnostic decoding for stateless transducers, in pure PyTorch (no k2).

Three search strategies are provided:

- :func:`greedy_search_batch` (and the single-utterance :func:`greedy_search`):
  take the arg-max symbol at every step.
- :func:`beam_search`: the Graves (2012) RNN-T beam search, Algorithm 1 of
  https://arxiv.org/abs/1211.3711, which may emit several symbols per frame.
- :func:`modified_beam_search`: batched beam search that emits at most one
  symbol per frame, so every hypothesis advances in lock-step over time.

The model interface is the one of icefall's ``Transducer``:

- ``model.decoder.blank_id`` and ``model.decoder.context_size`` (ints).
- ``model.decoder(y, need_pad=False)``: ``y`` is int64 ``(N, context_size)``
  holding the last ``context_size`` tokens of each hypothesis, where a
  negative id means "no token" (a zero embedding). Returns
  ``(N, 1, decoder_dim)``.
- ``model.joiner.encoder_proj`` / ``model.joiner.decoder_proj`` map encoder
  and decoder outputs to ``joiner_dim``.
- ``model.joiner(enc, dec, project_input=False)`` with ``enc`` and ``dec`` of
  shape ``(N, 1, 1, joiner_dim)`` returns logits ``(N, 1, 1, vocab_size)``.
- Optionally ``model.unk_id``: like icefall, the unknown token is never put in
  a hypothesis; emitting it is handled like emitting blank.

Every decoding state starts from the context ``[-1] * (context_size - 1) +
[blank_id]``, which is what the decoder sees during training for the first
token (the decoder left-pads with zero embeddings, i.e. "no token").

All tensors are created on ``encoder_out.device``; the model must live on
the same device. The functions run under ``torch.no_grad()`` and do not
change the model's train/eval mode, so call ``model.eval()`` first.
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "Hypothesis",
    "HypothesisList",
    "greedy_search",
    "greedy_search_batch",
    "beam_search",
    "modified_beam_search",
    "DECODING_METHODS",
    "decode_batch",
]

# Names accepted by decode_batch(), as icefall's --decoding-method values.
DECODING_METHODS = ("greedy_search", "beam_search", "modified_beam_search")


def log_add(a: float, b: float) -> float:
    """Return ``log(exp(a) + exp(b))`` for Python floats, exact for -inf."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


@dataclass
class Hypothesis:
    """One partial hypothesis.

    Attributes:
      ys:
        The initial decoder context (``context_size`` entries, see the module
        docstring) followed by the decoded tokens. Keeping the context prefix
        makes ``ys[-context_size:]`` always a valid decoder input.
      log_prob:
        Log-probability of ``ys`` summed over the alignments merged into it.
      num_syms:
        Symbols emitted on the current frame; only used by :func:`beam_search`
        to enforce its per-frame cap.
    """

    ys: List[int]
    log_prob: float = 0.0
    num_syms: int = 0

    @property
    def key(self) -> Tuple[int, ...]:
        """The token sequence, used to merge hypotheses."""
        return tuple(self.ys)


class HypothesisList:
    """A set of hypotheses in which entries with equal keys are merged.

    Merging adds probabilities (log-add), since two alignments that produce
    the same token sequence leave the (stateless) decoder in the same state:
    they are the same hypothesis reached along different paths.

    Args:
      key_fn:
        Maps a hypothesis to its merge key; default ``hyp.key`` (the token
        sequence).
    """

    def __init__(
        self, key_fn: Optional[Callable[[Hypothesis], Hashable]] = None
    ) -> None:
        self._key_fn = key_fn if key_fn is not None else (lambda h: h.key)
        self._data: Dict[Hashable, Hypothesis] = {}

    def _new(self) -> "HypothesisList":
        return HypothesisList(self._key_fn)

    def add(self, hyp: Hypothesis) -> None:
        """Insert ``hyp``, or log-add its probability into an existing entry.

        Caution: on a merge the stored object's ``log_prob`` is updated in
        place; ``hyp`` itself is not stored.
        """
        key = self._key_fn(hyp)
        old = self._data.get(key)
        if old is None:
            self._data[key] = hyp
        else:
            old.log_prob = log_add(old.log_prob, hyp.log_prob)

    def remove(self, hyp: Hypothesis) -> None:
        del self._data[self._key_fn(hyp)]

    def get_most_probable(self, length_norm: bool = False) -> Hypothesis:
        """Return the hypothesis with the largest score.

        Args:
          length_norm:
            If True, the score is ``log_prob / len(ys)``, as in icefall
            (``len(ys)`` includes the ``context_size`` prefix, so it is never
            zero). This counters the bias of log-probabilities against long
            outputs.
        """
        assert len(self._data) > 0, "empty HypothesisList"
        if length_norm:
            return max(self._data.values(), key=lambda h: h.log_prob / len(h.ys))
        return max(self._data.values(), key=lambda h: h.log_prob)

    def topk(self, k: int) -> "HypothesisList":
        """Return a new list with the ``k`` most probable hypotheses."""
        ans = self._new()
        for hyp in sorted(self._data.values(), key=lambda h: h.log_prob, reverse=True)[
            :k
        ]:
            ans.add(hyp)
        return ans

    def filter(self, threshold: float) -> "HypothesisList":
        """Return a new list with the hypotheses whose log_prob > threshold."""
        ans = self._new()
        for hyp in self._data.values():
            if hyp.log_prob > threshold:
                ans.add(hyp)
        return ans

    def __contains__(self, hyp: Hypothesis) -> bool:
        return self._key_fn(hyp) in self._data

    def __iter__(self) -> Iterator[Hypothesis]:
        return iter(self._data.values())

    def __len__(self) -> int:
        return len(self._data)


# ----------------------------------------------------------------------------
# Shared helpers


def _initial_context(model: nn.Module) -> List[int]:
    context_size = model.decoder.context_size
    return [-1] * (context_size - 1) + [model.decoder.blank_id]


def _skip_ids(model: nn.Module) -> Tuple[int, ...]:
    """Ids that do not extend a hypothesis: blank, and unk if the model has one."""
    blank_id = model.decoder.blank_id
    unk_id = getattr(model, "unk_id", None)
    return (blank_id,) if unk_id is None else (blank_id, unk_id)


def _decoder_proj(
    model: nn.Module, contexts: Sequence[Sequence[int]], device: torch.device
) -> torch.Tensor:
    """Run the decoder and its joiner projection.

    Args:
      contexts:
        N lists, each with the last ``context_size`` tokens of a hypothesis.
    Returns:
      A tensor of shape (N, joiner_dim).
    """
    n = len(contexts)
    y = torch.tensor(contexts, dtype=torch.int64, device=device).reshape(
        n, model.decoder.context_size
    )
    dec = model.joiner.decoder_proj(model.decoder(y, need_pad=False))
    # (N, 1, joiner_dim) -> (N, joiner_dim)
    return dec.reshape(n, dec.size(-1))


def _joiner_logits(
    model: nn.Module, enc: torch.Tensor, dec: torch.Tensor
) -> torch.Tensor:
    """Joiner on already projected inputs.

    Args:
      enc: (N, joiner_dim), projected encoder frames.
      dec: (N, joiner_dim), projected decoder outputs.
    Returns:
      Logits of shape (N, vocab_size), in float32 so that log-softmax and
      score accumulation are not done in half precision.
    """
    n = enc.size(0)
    # The joiner expects (N, T, s_range, joiner_dim); here T = s_range = 1.
    logits = model.joiner(
        enc.reshape(n, 1, 1, -1), dec.reshape(n, 1, 1, -1), project_input=False
    )
    return logits.reshape(n, logits.size(-1)).float()


def _pack(
    encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor
) -> Tuple[torch.Tensor, List[int], List[int]]:
    """Reorder a padded batch frame-major, longest utterance first.

    Args:
      encoder_out: (N, T, C); every length must be >= 1.
      encoder_out_lens: (N,)
    Returns:
      - data: (sum(lens), C); frame t occupies the next batch_sizes[t] rows
        and holds frame t of the batch_sizes[t] longest utterances (in
        decreasing length order), so at each frame the utterances that are
        still active are always a prefix of the sorted batch.
      - batch_sizes: list of T_max ints.
      - unsorted_indices: ``sorted_result[unsorted_indices[i]]`` is the result
        for utterance i of the original batch.
    """
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        input=encoder_out,
        lengths=encoder_out_lens.to("cpu", torch.int64),
        batch_first=True,
        enforce_sorted=False,
    )
    n = encoder_out.size(0)
    if packed.unsorted_indices is None:
        unsorted = list(range(n))
    else:
        unsorted = packed.unsorted_indices.tolist()
    return packed.data, packed.batch_sizes.tolist(), unsorted


def _check_batch(encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor) -> None:
    assert encoder_out.ndim == 3, encoder_out.shape
    assert encoder_out_lens.ndim == 1, encoder_out_lens.shape
    assert encoder_out_lens.numel() == encoder_out.size(0), (
        encoder_out_lens.shape,
        encoder_out.shape,
    )
    if encoder_out_lens.numel() == 0:
        return
    assert int(encoder_out_lens.max()) <= encoder_out.size(1), (
        encoder_out_lens,
        encoder_out.shape,
    )


def _decode_nonempty(
    decode: Callable[[torch.Tensor, torch.Tensor], List[List[int]]],
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
) -> List[List[int]]:
    """Run ``decode`` on the utterances with at least one frame.

    pack_padded_sequence rejects zero lengths; an empty utterance has an
    empty result, so decode the rest and put [] at the empty positions.
    """
    lens = encoder_out_lens.to("cpu", torch.int64)
    assert bool((lens >= 0).all()), lens
    nonempty = [i for i, n in enumerate(lens.tolist()) if n > 0]
    if len(nonempty) == len(lens):
        return decode(encoder_out, encoder_out_lens)
    ans: List[List[int]] = [[] for _ in range(len(lens))]
    if nonempty:
        idx = torch.tensor(nonempty, dtype=torch.int64)
        sub = decode(encoder_out[idx.to(encoder_out.device)], lens[idx])
        for i, hyp in zip(nonempty, sub):
            ans[i] = hyp
    return ans


# ----------------------------------------------------------------------------
# Greedy search


@torch.no_grad()
def greedy_search(
    model: nn.Module, encoder_out: torch.Tensor, max_sym_per_frame: int = 1
) -> List[int]:
    """Greedy search for a single utterance, step by step.

    At each step the arg-max symbol is taken: blank (or unk) moves to the
    next frame; any other token is appended and the decoder is re-run, and
    after ``max_sym_per_frame`` tokens on one frame we move on regardless.

    Args:
      model: the transducer (see the module docstring).
      encoder_out: (1, T, C) encoder output.
      max_sym_per_frame: maximum number of tokens emitted per frame (>= 1).
    Returns:
      The decoded token ids.
    """
    assert encoder_out.ndim == 3 and encoder_out.size(0) == 1, encoder_out.shape
    assert max_sym_per_frame >= 1, max_sym_per_frame
    device = encoder_out.device
    skip = _skip_ids(model)

    enc = model.joiner.encoder_proj(encoder_out[0])  # (T, joiner_dim)
    context = _initial_context(model)
    dec = _decoder_proj(model, [context], device)  # (1, joiner_dim)
    hyp: List[int] = []
    for t in range(enc.size(0)):
        for _ in range(max_sym_per_frame):
            y = int(_joiner_logits(model, enc[t : t + 1], dec).argmax(dim=-1))
            if y in skip:
                break
            hyp.append(y)
            context = context[1:] + [y]
            dec = _decoder_proj(model, [context], device)
    return hyp


@torch.no_grad()
def greedy_search_batch(
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    max_sym_per_frame: int = 1,
) -> List[List[int]]:
    """Greedy search for a padded batch.

    Gives the same result as :func:`greedy_search` on each utterance alone.

    Args:
      model: the transducer (see the module docstring).
      encoder_out: (N, T, C) padded encoder output.
      encoder_out_lens: (N,) number of valid frames of each utterance.
      max_sym_per_frame: maximum number of tokens emitted per frame (>= 1).
    Returns:
      N lists of token ids, in the original batch order.
    """
    _check_batch(encoder_out, encoder_out_lens)
    assert max_sym_per_frame >= 1, max_sym_per_frame
    return _decode_nonempty(
        lambda e, l: _greedy_search_batch(model, e, l, max_sym_per_frame),
        encoder_out,
        encoder_out_lens,
    )


def _greedy_search_batch(
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    max_sym_per_frame: int,
) -> List[List[int]]:
    device = encoder_out.device
    skip = _skip_ids(model)
    data, batch_sizes, unsorted = _pack(encoder_out, encoder_out_lens)
    n = encoder_out.size(0)

    enc = model.joiner.encoder_proj(data)  # (sum(lens), joiner_dim)
    # Everything below is indexed by position in the sorted batch.
    contexts = [_initial_context(model) for _ in range(n)]
    hyps: List[List[int]] = [[] for _ in range(n)]
    dec = _decoder_proj(model, contexts, device)  # (N, joiner_dim)

    offset = 0
    for batch_size in batch_sizes:
        cur_enc = enc[offset : offset + batch_size]  # (batch_size, joiner_dim)
        offset += batch_size
        # Utterances that may still emit on this frame: all at first, then
        # only those whose previous step on this frame emitted a token.
        active = list(range(batch_size))
        for _ in range(max_sym_per_frame):
            if len(active) == batch_size:
                logits = _joiner_logits(model, cur_enc, dec[:batch_size])
            else:
                idx = torch.tensor(active, dtype=torch.int64, device=device)
                logits = _joiner_logits(model, cur_enc[idx], dec[idx])
            ys = logits.argmax(dim=-1).tolist()
            emitted = [i for i, y in zip(active, ys) if y not in skip]
            if not emitted:
                break
            for i, y in zip(active, ys):
                if y not in skip:
                    hyps[i].append(y)
                    contexts[i] = contexts[i][1:] + [y]
            # Only the utterances that emitted have a new decoder state.
            idx = torch.tensor(emitted, dtype=torch.int64, device=device)
            new_dec = _decoder_proj(model, [contexts[i] for i in emitted], device)
            dec = dec.index_copy(0, idx, new_dec.to(dec.dtype))
            active = emitted

    return [hyps[unsorted[i]] for i in range(n)]


# ----------------------------------------------------------------------------
# Beam search (Graves)


@torch.no_grad()
def beam_search(
    model: nn.Module,
    encoder_out: torch.Tensor,
    beam: int = 4,
    max_sym_per_frame: int = 3,
    length_norm: bool = True,
) -> List[int]:
    """Graves' RNN-T beam search (Algorithm 1 of arXiv:1211.3711), one utterance.

    On each frame, the most probable hypothesis of the set A (hypotheses that
    may still emit on this frame) is repeatedly expanded: its blank
    extension goes to B (it is done with this frame), and its top non-blank
    extensions go back to A. The frame ends once B holds ``beam`` hypotheses
    better than anything left in A (they cannot be overtaken, as extending
    only lowers probability), or A is exhausted. Hypotheses with the same
    token sequence are merged by log-add, so a hypothesis' score sums over
    its alignments (within the beam).

    Differences from icefall: a cap ``max_sym_per_frame`` on tokens per frame
    guarantees termination (in A, hypotheses are keyed by token sequence
    *and* number of tokens emitted on the frame, so the cap applies exactly
    to every path), and ``beam >= vocab_size`` is allowed.

    Args:
      model: the transducer (see the module docstring).
      encoder_out: (1, T, C) encoder output.
      beam: number of hypotheses kept per frame; also the number of
        non-blank extensions tried per expansion.
      max_sym_per_frame: maximum number of tokens per frame (>= 1).
      length_norm: choose the final result by ``log_prob / len(ys)`` (as
        icefall) instead of ``log_prob``.
    Returns:
      The decoded token ids.
    """
    assert encoder_out.ndim == 3 and encoder_out.size(0) == 1, encoder_out.shape
    assert beam >= 1, beam
    assert max_sym_per_frame >= 1, max_sym_per_frame
    device = encoder_out.device
    blank_id = model.decoder.blank_id
    context_size = model.decoder.context_size
    skip = _skip_ids(model)

    enc = model.joiner.encoder_proj(encoder_out[0])  # (T, joiner_dim)

    # The decoder output depends only on the last context_size tokens, so
    # cache it by that context for the whole utterance.
    dec_cache: Dict[Tuple[int, ...], torch.Tensor] = {}

    def decoder_out(ys: List[int]) -> torch.Tensor:
        context = tuple(ys[-context_size:])
        if context not in dec_cache:
            dec_cache[context] = _decoder_proj(model, [list(context)], device)
        return dec_cache[context]

    B = HypothesisList()
    B.add(Hypothesis(ys=_initial_context(model), log_prob=0.0))

    for t in range(enc.size(0)):
        cur_enc = enc[t : t + 1]  # (1, joiner_dim)
        A = HypothesisList(key_fn=lambda h: (h.key, h.num_syms))
        for hyp in B:
            A.add(Hypothesis(ys=hyp.ys, log_prob=hyp.log_prob, num_syms=0))
        B = HypothesisList()

        # Per frame: context -> (blank log-prob, [(token, log-prob)] of the
        # best non-blank extensions). A context can be popped more than once
        # (e.g. with different num_syms, or after being re-added).
        joint_cache: Dict[Tuple[int, ...], Tuple[float, List[Tuple[int, float]]]] = {}

        while len(A) > 0:
            y_star = A.get_most_probable()
            A.remove(y_star)

            context = tuple(y_star.ys[-context_size:])
            if context not in joint_cache:
                log_probs = _joiner_logits(model, cur_enc, decoder_out(y_star.ys))[
                    0
                ].log_softmax(dim=-1)
                # beam + 1 so that `beam` non-blank candidates remain after
                # dropping blank.
                k = min(beam + 1, log_probs.numel())
                values, indices = log_probs.topk(k)
                joint_cache[context] = (
                    float(log_probs[blank_id]),
                    [
                        (i, v)
                        for i, v in zip(indices.tolist(), values.tolist())
                        if i not in skip
                    ],
                )
            blank_log_prob, extensions = joint_cache[context]

            # Emitting blank finishes this frame for y_star.
            B.add(Hypothesis(ys=y_star.ys, log_prob=y_star.log_prob + blank_log_prob))

            if y_star.num_syms < max_sym_per_frame:
                for token, v in extensions:
                    A.add(
                        Hypothesis(
                            ys=y_star.ys + [token],
                            log_prob=y_star.log_prob + v,
                            num_syms=y_star.num_syms + 1,
                        )
                    )

            if len(A) == 0:
                break
            kept_B = B.filter(A.get_most_probable().log_prob)
            if len(kept_B) >= beam:
                B = kept_B
                break

        B = B.topk(beam)

    best = B.get_most_probable(length_norm=length_norm)
    return best.ys[context_size:]


# ----------------------------------------------------------------------------
# Modified beam search


@torch.no_grad()
def modified_beam_search(
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    length_norm: bool = True,
) -> List[List[int]]:
    """Batched beam search emitting at most one symbol per frame.

    On every frame each hypothesis is extended by every symbol: blank keeps
    its token sequence, any other token is appended. Per utterance, the
    ``beam`` best of the (num_hyps * vocab_size) candidates, scored by hyp
    log-prob + log_softmax(logits), are kept, and candidates with the same
    token sequence are merged by log-add (summing over alignments).

    Args:
      model: the transducer (see the module docstring).
      encoder_out: (N, T, C) padded encoder output.
      encoder_out_lens: (N,) number of valid frames of each utterance.
      beam: number of hypotheses kept per utterance and frame.
      length_norm: choose the final result by ``log_prob / len(ys)`` (as
        icefall) instead of ``log_prob``.
    Returns:
      N lists of token ids (best hypothesis of each utterance), in the
      original batch order.
    """
    _check_batch(encoder_out, encoder_out_lens)
    assert beam >= 1, beam
    return _decode_nonempty(
        lambda e, l: _modified_beam_search(model, e, l, beam, length_norm),
        encoder_out,
        encoder_out_lens,
    )


def _modified_beam_search(
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int,
    length_norm: bool,
) -> List[List[int]]:
    device = encoder_out.device
    context_size = model.decoder.context_size
    skip = _skip_ids(model)
    data, batch_sizes, unsorted = _pack(encoder_out, encoder_out_lens)
    n = encoder_out.size(0)

    enc = model.joiner.encoder_proj(data)  # (sum(lens), joiner_dim)

    # B[i]: hypotheses of the i-th utterance in sorted order.
    B: List[HypothesisList] = []
    for _ in range(n):
        hyps = HypothesisList()
        hyps.add(Hypothesis(ys=_initial_context(model), log_prob=0.0))
        B.append(hyps)
    # Utterances already past their last frame, in sorted order.
    finished: List[HypothesisList] = []

    offset = 0
    for batch_size in batch_sizes:
        cur_enc = enc[offset : offset + batch_size]  # (batch_size, joiner_dim)
        offset += batch_size

        # The utterances that ended are the tail of the sorted batch; keep
        # `finished` in sorted order by prepending.
        finished = B[batch_size:] + finished
        A = [list(hyps) for hyps in B[:batch_size]]
        num_hyps = [len(a) for a in A]
        flat = [hyp for a in A for hyp in a]  # all hypotheses, utterance-major

        # row_ids[h]: utterance of flat hypothesis h; pos[h]: its index there.
        row_ids = torch.tensor(
            [i for i, m in enumerate(num_hyps) for _ in range(m)],
            dtype=torch.int64,
            device=device,
        )
        pos = torch.tensor(
            [j for m in num_hyps for j in range(m)], dtype=torch.int64, device=device
        )

        dec = _decoder_proj(model, [h.ys[-context_size:] for h in flat], device)
        logits = _joiner_logits(model, cur_enc.index_select(0, row_ids), dec)
        log_probs = logits.log_softmax(dim=-1)  # (num_hyps_total, V)
        log_probs = log_probs + torch.tensor(
            [h.log_prob for h in flat], dtype=log_probs.dtype, device=device
        ).unsqueeze(1)
        vocab_size = log_probs.size(1)

        # Scatter into (batch_size, max_hyps * V), padded with -inf, so one
        # topk call does the per-utterance selection (k2's ragged topk in
        # icefall).
        max_hyps = max(num_hyps)
        padded = log_probs.new_full((batch_size, max_hyps, vocab_size), -math.inf)
        padded[row_ids, pos] = log_probs
        k = min(beam, max_hyps * vocab_size)
        top_values, top_indices = padded.reshape(batch_size, -1).topk(k, dim=1)
        top_values = top_values.tolist()
        top_indices = top_indices.tolist()

        B = []
        for i in range(batch_size):
            new_hyps = HypothesisList()
            for value, index in zip(top_values[i], top_indices[i]):
                hyp_index, token = divmod(index, vocab_size)
                if hyp_index >= num_hyps[i]:
                    # Padding; only picked when fewer than k real candidates
                    # beat -inf.
                    continue
                hyp = A[i][hyp_index]
                ys = hyp.ys if token in skip else hyp.ys + [token]
                new_hyps.add(Hypothesis(ys=ys, log_prob=value))
            B.append(new_hyps)

    B = B + finished
    sorted_ans = [
        hyps.get_most_probable(length_norm=length_norm).ys[context_size:] for hyps in B
    ]
    return [sorted_ans[unsorted[i]] for i in range(n)]


# ----------------------------------------------------------------------------
# Dispatcher for recipe scripts


def decode_batch(
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    method: str,
    beam: int = 4,
    max_sym_per_frame: int = 1,
) -> List[List[int]]:
    """Decode a padded batch with one of :data:`DECODING_METHODS`.

    Args:
      model: the transducer (see the module docstring).
      encoder_out: (N, T, C) padded encoder output.
      encoder_out_lens: (N,) number of valid frames of each utterance.
      method: "greedy_search", "beam_search" or "modified_beam_search".
      beam: beam size (beam searches only).
      max_sym_per_frame: symbols per frame (greedy_search only; beam_search
        keeps its own default cap, modified_beam_search emits at most one).
    Returns:
      N lists of token ids, in the original batch order.
    """
    if method == "greedy_search":
        return greedy_search_batch(
            model, encoder_out, encoder_out_lens, max_sym_per_frame=max_sym_per_frame
        )
    if method == "modified_beam_search":
        return modified_beam_search(model, encoder_out, encoder_out_lens, beam=beam)
    if method == "beam_search":
        # Graves' search is sequential by nature: one utterance at a time.
        _check_batch(encoder_out, encoder_out_lens)
        return [
            beam_search(model, encoder_out[i : i + 1, :n], beam=beam)
            for i, n in enumerate(encoder_out_lens.tolist())
        ]
    raise ValueError(f"unknown decoding method {method!r}; expected one of {DECODING_METHODS}")

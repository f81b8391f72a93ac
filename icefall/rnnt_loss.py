"""RNN-T transducer losses in pure PyTorch, with k2 1.23.4's API and results.

The usual pruned-RNN-T training step (icefall's pruned_transducer_stateless)::

    simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(
        lm=decoder_proj, am=encoder_proj, symbols=y_padded,
        termination_symbol=blank_id, lm_only_scale=0.25, am_only_scale=0.0,
        boundary=boundary, reduction="sum", return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range=5)
    am_pruned, lm_pruned = do_rnnt_pruning(am=encoder_out, lm=decoder_out,
                                           ranges=ranges)
    logits = joiner(am_pruned, lm_pruned)                 # [B, T, K, C]
    pruned_loss = rnnt_loss_pruned(logits, y_padded, ranges, blank_id,
                                   boundary, reduction="sum")

Every loss reduces the problem to px [B, S, T+1] (or [B, S, T] for
``rnnt_type="modified"``) and py [B, S+1, T] -- the log-probabilities of
emitting symbol ``symbols[b, s]`` and of the termination (blank) symbol at
frame t with s symbols already emitted -- and returns minus
:func:`icefall.mutual_information.mutual_information_recursion`.

Conventions (as k2):
  * ``boundary`` rows are ``[0, 0, S_b, T_b]`` (int64; the losses read only
    columns 2 and 3).  None means every utterance has S symbols, T frames.
  * regular: px[b, :, T_b] is -inf, so no symbol is emitted after the last
    frame and every path ends with a blank on frame T_b - 1.
  * modified: a symbol also consumes a frame, so S_b <= T_b is needed.
  * An utterance with no path gets an infinite loss (with a warning) and a
    zero gradient, never NaN.

Unlike k2, the simple and smoothed losses never build a [B, S, T, C] tensor
(k2 does in its backward pass), and the full and pruned losses keep one
logits-sized gradient buffer rather than several.
"""

import functools
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from icefall.mutual_information import mutual_information_recursion

__all__ = [
    "rnnt_loss",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
    "get_rnnt_prune_ranges",
    "do_rnnt_pruning",
    "rnnt_loss_pruned",
]

NEG_INF = float("-inf")
_RNNT_TYPES = ("regular", "modified")


# ----------------------------------------------------------------------------
# Small shared pieces
# ----------------------------------------------------------------------------


def _in_float32(loss_fn):
    """Run a loss in float32 even inside a bfloat16/float16 autocast region:
    its exp-space matmuls and the recursion's sums of log-probabilities need
    the precision (icefall likewise leaves the losses out of autocast).
    Half-precision tensor arguments are cast up; gradients flow back in
    their dtype."""

    def up(x):
        return x.float() if torch.is_tensor(x) and x.is_floating_point() and x.dtype != torch.float64 else x

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        device = next((x.device.type for x in (*args, *kwargs.values()) if torch.is_tensor(x)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return loss_fn(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})

    return wrapper


def _check_rnnt_type(rnnt_type: str) -> bool:
    """True for "modified", False for "regular"; anything else is an error."""
    if rnnt_type not in _RNNT_TYPES:
        raise ValueError(f"rnnt_type must be one of {_RNNT_TYPES}, got "
                         f"{rnnt_type!r} ('constrained' is not implemented)")
    return rnnt_type == "modified"


def _reduce(loss: Tensor, reduction: Optional[str]) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError("reduction must be 'none', 'mean' or 'sum', "
                     f"got {reduction!r}")


def _finish_px(px: Tensor, boundary: Optional[Tensor],
               modified: bool) -> Tensor:
    """Turn px [B, S, T] into the recursion's px.

    Regular: append a -inf column T and put -inf in column T_b too -- no
    symbol may be emitted "after" the last frame, which is how the final
    blank on frame T_b - 1 enters the loss.
    """
    B, S, T = px.shape
    if not modified:
        px = torch.cat((px, px.new_full((B, S, 1), NEG_INF)), dim=2)
        if boundary is not None:
            cols = torch.arange(T + 1, device=px.device)
            past_end = cols.view(1, 1, -1) == boundary[:, 3].view(B, 1, 1)
            px = px.masked_fill(past_end, NEG_INF)
    return px


def _delay_penalty(px: Tensor, boundary: Optional[Tensor], modified: bool,
                   delay_penalty: float) -> Tensor:
    """[B, 1, T'] offsets ``delay_penalty * ((T_b - 1) / 2 - t)`` for px.

    Rewards early symbols and penalises late ones (zero-mean over the frames
    of each utterance), as in k2 and https://arxiv.org/abs/2211.00490.  k2
    forms the offset in float32 when a boundary is given; here it is formed
    in px's dtype, which differs from k2 only for penalties that are not
    short binary fractions (~1e-6 absolute in float64).
    """
    B, _, Tx = px.shape
    T = Tx if modified else Tx - 1
    if boundary is None:
        center = px.new_full((B, 1, 1), (T - 1) / 2)
    else:
        center = (boundary[:, 3].to(px.dtype).view(B, 1, 1) - 1) / 2
    frames = torch.arange(Tx, device=px.device, dtype=px.dtype).view(1, 1, Tx)
    return (center - frames) * delay_penalty


def _run(px: Tensor, py: Tensor, boundary: Optional[Tensor], rnnt_type: str,
         delay_penalty: float, reduction: Optional[str],
         return_grad: bool = False):
    """Add the delay penalty to px, run the recursion, negate and reduce;
    optionally also return (px_grad, py_grad)."""
    if delay_penalty > 0.0:
        px = px + _delay_penalty(px, boundary, rnnt_type == "modified",
                                 delay_penalty)
    out = mutual_information_recursion(px, py, boundary, return_grad)
    if return_grad:
        scores, grads = out
        return _reduce(-scores, reduction), grads
    return _reduce(-out, reduction)


def _check_lm_am(lm: Tensor, am: Tensor, symbols: Tensor) -> None:
    if lm.ndim != 3 or am.ndim != 3 or lm.shape[0] != am.shape[0] \
            or lm.shape[2] != am.shape[2]:
        raise ValueError("expected lm [B, S+1, C] and am [B, T, C], got "
                         f"{tuple(lm.shape)} and {tuple(am.shape)}")
    B, S1, _ = lm.shape
    if tuple(symbols.shape) != (B, S1 - 1):
        raise ValueError(f"symbols must be [B, S] = [{B}, {S1 - 1}] to match "
                         f"lm {tuple(lm.shape)}, got {tuple(symbols.shape)}")


# ----------------------------------------------------------------------------
# Simple and smoothed losses (additive joiner, no [B, T, S+1, C] tensor)
# ----------------------------------------------------------------------------


def _log_normalizers(lm: Tensor, am: Tensor):
    """log sum_c exp(am[b, t, c] + lm[b, s, c]) as [B, S+1, T], without the
    [B, S+1, T, C] sum: it factorises into a matrix product of exponentials,
    made safe by subtracting the per-row maxima first (so every exponential
    is <= 1 and each row has a 1).  ``tiny`` keeps the log finite like k2.

    Also returns the pieces the smoothed loss reuses.
    """
    am_max = am.max(dim=2, keepdim=True).values  # [B, T, 1]
    lm_max = lm.max(dim=2, keepdim=True).values  # [B, S+1, 1]
    am_probs = (am - am_max).exp()
    lm_probs = (lm - lm_max).exp()
    tiny = torch.finfo(am.dtype).tiny
    prod = torch.matmul(lm_probs, am_probs.transpose(1, 2))  # [B, S+1, T]
    norm = (prod + tiny).log() + lm_max + am_max.transpose(1, 2)
    return norm, (am_max, lm_max, am_probs, lm_probs)


def _symbol_scores(lm: Tensor, am: Tensor, symbols: Tensor,
                   termination_symbol: int):
    """Unnormalised scores gathered without broadcasting am over S.

    Returns px_am [B, S, T] = am[b, t, symbols[b, s]],
    px_lm [B, S, 1] = lm[b, s, symbols[b, s]],
    py_am [B, 1, T] and py_lm [B, S+1, 1] for the termination symbol.
    """
    B, T, _ = am.shape
    S = symbols.shape[1]
    px_am = am.gather(2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)
    px_lm = lm[:, :S].gather(2, symbols.unsqueeze(2))
    py_am = am[:, :, termination_symbol].unsqueeze(1)
    py_lm = lm[:, :, termination_symbol].unsqueeze(2)
    return px_am, px_lm, py_am, py_lm


def get_rnnt_logprobs(lm: Tensor, am: Tensor, symbols: Tensor,
                      termination_symbol: int,
                      boundary: Optional[Tensor] = None,
                      rnnt_type: str = "regular") -> Tuple[Tensor, Tensor]:
    """px, py of the simple loss: log_softmax(am[b, t] + lm[b, s]) at the
    symbol and at the termination symbol.

    Args: as :func:`rnnt_loss_simple`.
    Returns: px [B, S, T+1] (regular, -inf in column T_b) or [B, S, T]
      (modified), and py [B, S+1, T].
    """
    _check_lm_am(lm, am, symbols)
    modified = _check_rnnt_type(rnnt_type)
    S = symbols.shape[1]
    norm, _ = _log_normalizers(lm, am)
    px_am, px_lm, py_am, py_lm = _symbol_scores(lm, am, symbols,
                                                termination_symbol)
    px = px_am + px_lm - norm[:, :S]
    py = py_am + py_lm - norm
    return _finish_px(px, boundary, modified), py


@_in_float32
def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: Optional[str] = "mean",
    return_grad: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """RNN-T loss of the additive joiner ``logits = am[b, t] + lm[b, s]``,
    computed without the [B, T, S+1, C] logits.

    Args:
      lm: [B, S+1, C], prediction-network (decoder) part of the logits;
        lm[b, s] is the context after s symbols.
      am: [B, T, C], encoder part of the logits.
      symbols: int64 [B, S], the label sequences (padded with any valid id).
      termination_symbol: the blank id, 0 <= termination_symbol < C.
      boundary: optional int64 [B, 4] rows [0, 0, S_b, T_b]; None means
        [0, 0, S, T] for every utterance.
      rnnt_type: "regular" (any number of symbols per frame) or "modified"
        (at most one symbol per frame).
      delay_penalty: if > 0, adds ``delay_penalty * ((T_b - 1)/2 - t)`` to
        the log-probability of each symbol emitted on frame t.
      reduction: "none" ([B] losses), "mean" or "sum" over the batch.
      return_grad: also return (px_grad, py_grad), the gradients of
        ``-loss.sum()`` (reduction "none") w.r.t. px [B, S, T+1] (or
        [B, S, T]) and py [B, S+1, T]: occupation probabilities, used by
        :func:`get_rnnt_prune_ranges`.

    Returns:
      loss, or ``(loss, (px_grad, py_grad))`` if ``return_grad``.  The loss
      is differentiable w.r.t. am and lm.
    """
    px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol,
                               boundary, rnnt_type)
    return _run(px, py, boundary, rnnt_type, delay_penalty, reduction,
                return_grad)


def get_rnnt_logprobs_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
) -> Tuple[Tensor, Tensor]:
    """px, py of the smoothed loss: for each step, the interpolation
    ``(1 - a - b) * combined + a * lm_only + b * am_only`` of three
    log-probabilities (a = lm_only_scale, b = am_only_scale):

      * combined: log_softmax(am[b, t] + lm[b, s]), as the simple loss;
      * lm_only: log_softmax(lm[b, s]);
      * am_only: am[b, t] normalised against a unigram "LM", the mean of
        softmax(lm) over every row of lm (all utterances, all S+1 positions,
        padding included -- so the batch is coupled, as in k2).

    A term whose scale is 0 is left out (k2 scales it by 1e-20 instead,
    which differs by ~1e-20 relative).

    Args: as :func:`rnnt_loss_smoothed`.
    Returns: px [B, S, T+1] (regular) or [B, S, T] (modified); py [B, S+1, T].
    """
    _check_lm_am(lm, am, symbols)
    modified = _check_rnnt_type(rnnt_type)
    S = symbols.shape[1]
    norm, (am_max, lm_max, am_probs, lm_probs) = _log_normalizers(lm, am)
    px_am, px_lm, py_am, py_lm = _symbol_scores(lm, am, symbols,
                                                termination_symbol)
    combined = 1.0 - lm_only_scale - am_only_scale
    px = (px_am + px_lm - norm[:, :S]) * combined
    py = (py_am + py_lm - norm) * combined
    lm_sums = lm_probs.sum(dim=2, keepdim=True)  # [B, S+1, 1]
    if lm_only_scale != 0.0:
        lm_norm = lm_sums.log() + lm_max  # log-normaliser of lm alone
        px = px + (px_lm - lm_norm[:, :S]) * lm_only_scale
        py = py + (py_lm - lm_norm) * lm_only_scale
    if am_only_scale != 0.0:
        tiny = torch.finfo(lm.dtype).tiny
        unigram = (lm_probs / lm_sums).mean(dim=(0, 1)) + tiny  # [C]
        # log sum_c exp(am[b, t, c]) * unigram[c], as [B, 1, T]
        am_norm = (torch.matmul(am_probs, unigram).log().unsqueeze(2)
                   + am_max).transpose(1, 2)
        log_unigram = unigram.log()
        px = px + (px_am + log_unigram[symbols].unsqueeze(2) - am_norm) \
            * am_only_scale
        py = py + (py_am + log_unigram[termination_symbol] - am_norm) \
            * am_only_scale
    return _finish_px(px, boundary, modified), py


@_in_float32
def rnnt_loss_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: Optional[str] = "mean",
    return_grad: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """Simple (additive-joiner) RNN-T loss smoothed with LM-only and AM-only
    log-probabilities; see :func:`get_rnnt_logprobs_smoothed`.

    icefall's pruned-transducer recipes call it with lm_only_scale =
    ``--lm-scale`` (0.25), am_only_scale = ``--am-scale`` (0.0),
    reduction "sum" and return_grad=True, and feed px_grad/py_grad to
    :func:`get_rnnt_prune_ranges`.

    Args:
      lm: [B, S+1, C]; am: [B, T, C]; symbols: int64 [B, S];
      termination_symbol, boundary, rnnt_type, delay_penalty, reduction,
      return_grad: as :func:`rnnt_loss_simple`.
      lm_only_scale, am_only_scale: interpolation weights of the LM-only and
        AM-only log-probabilities (the combined one gets the rest).

    Returns:
      loss, or ``(loss, (px_grad, py_grad))`` if ``return_grad``.
    """
    px, py = get_rnnt_logprobs_smoothed(lm, am, symbols, termination_symbol,
                                        lm_only_scale, am_only_scale,
                                        boundary, rnnt_type)
    return _run(px, py, boundary, rnnt_type, delay_penalty, reduction,
                return_grad)


# ----------------------------------------------------------------------------
# Full and pruned losses (a joiner's [B, T, K, C] logits)
# ----------------------------------------------------------------------------


class _JointLogProbs(torch.autograd.Function):
    """log_softmax(logits) at two classes per (b, t, k), with a lean backward.

    Forward: logits [B, T, K, C], sym [B, T, K] -> the log-probabilities of
    class sym[b, t, k] and of class ``term``, each [B, T, K].
    Backward: d/dlogits = g_sym * (onehot(sym) - softmax)
                        + g_term * (onehot(term) - softmax),
    written into one logits-sized buffer.  Autograd through logsumexp and two
    gathers would hold three or four logits-sized tensors at once; this is
    what makes the full loss affordable.  Both passes go frame-chunk by
    frame-chunk so their temporaries stay small.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, sym: Tensor, term: int):
        lse = _logsumexp_last(logits)
        lp_sym = logits.gather(3, sym.unsqueeze(3)).squeeze(3) - lse
        lp_term = logits[:, :, :, term] - lse
        ctx.save_for_backward(logits, sym, lse)
        ctx.term = term
        return lp_sym, lp_term

    @staticmethod
    def backward(ctx, g_sym: Tensor, g_term: Tensor):
        logits, sym, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        g_all = -(g_sym + g_term)
        # A row of -inf logits has lse -inf; its softmax is taken as 0.
        lse = lse.masked_fill(torch.isinf(lse), 0.0)
        for t0, chunk in _frame_slices(logits):
            t1 = t0 + chunk.shape[1]
            out = grad[:, t0:t1]
            torch.sub(chunk, lse[:, t0:t1].unsqueeze(3), out=out)
            out.exp_().mul_(g_all[:, t0:t1].unsqueeze(3))
        grad.scatter_add_(3, sym.unsqueeze(3), g_sym.unsqueeze(3))
        grad[:, :, :, ctx.term] += g_term
        return grad, None, None


# Elements per chunk (4 MB of float32): small enough for the allocator to
# reuse the temporaries instead of mapping fresh, page-faulting memory.
_CHUNK_ELEMENTS = 1 << 20


def _frame_slices(x: Tensor):
    """(t0, x[:, t0:t1]) chunks of about _CHUNK_ELEMENTS elements."""
    per_frame = max(1, x[:, :1].numel())
    step = max(1, _CHUNK_ELEMENTS // per_frame)
    for t0 in range(0, x.shape[1], step):
        yield t0, x[:, t0:t0 + step]


def _logsumexp_last(x: Tensor) -> Tensor:
    """logsumexp over the last dim of x [B, T, K, C], frame-chunk by
    frame-chunk through one reused scratch buffer.

    torch.logsumexp would allocate logits-sized temporaries (1.3 GB for the
    full loss at B=16, T=400, S=100, C=500), and even per-chunk calls left
    the allocator holding about as much again.
    """
    B, T, K, _ = x.shape
    lse = x.new_empty(B, T, K)
    scratch = None
    for t0, chunk in _frame_slices(x):
        t1 = t0 + chunk.shape[1]
        if scratch is None or scratch.shape != chunk.shape:
            scratch = torch.empty_like(chunk)
        peak = chunk.amax(dim=3, keepdim=True)
        # An all -inf row would give -inf - -inf = NaN; shifting it by 0
        # instead gives log(0) = -inf as it should.
        peak.masked_fill_(torch.isinf(peak), 0.0)
        torch.sub(chunk, peak, out=scratch).exp_()
        torch.sum(scratch, dim=3, out=lse[:, t0:t1])
        lse[:, t0:t1].log_().add_(peak.squeeze(3))
    return lse


def get_rnnt_logprobs_joint(logits: Tensor, symbols: Tensor,
                            termination_symbol: int,
                            boundary: Optional[Tensor] = None,
                            rnnt_type: str = "regular"
                            ) -> Tuple[Tensor, Tensor]:
    """px, py of the full loss from joiner logits [B, T, S+1, C].

    Returns px [B, S, T+1] (regular) or [B, S, T] (modified), py [B, S+1, T].
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be [B, T, S+1, C], got "
                         f"{tuple(logits.shape)}")
    modified = _check_rnnt_type(rnnt_type)
    B, T, S1, _ = logits.shape
    if tuple(symbols.shape) != (B, S1 - 1):
        raise ValueError(f"symbols must be [{B}, {S1 - 1}] for logits "
                         f"{tuple(logits.shape)}, got {tuple(symbols.shape)}")
    # Context S has no next symbol; score the termination symbol there and
    # drop it below.
    sym = _with_termination(symbols, termination_symbol)
    sym = sym.unsqueeze(1).expand(B, T, S1)
    lp_sym, lp_term = _JointLogProbs.apply(logits, sym, termination_symbol)
    px = lp_sym[:, :, :S1 - 1].transpose(1, 2)
    py = lp_term.transpose(1, 2)
    return _finish_px(px, boundary, modified), py


def _with_termination(symbols: Tensor, termination_symbol: int) -> Tensor:
    """[B, S+1]: symbols followed by the termination symbol."""
    term = symbols.new_full((symbols.shape[0], 1), termination_symbol)
    return torch.cat((symbols, term), dim=1)


@_in_float32
def rnnt_loss(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: Optional[str] = "mean",
) -> Tensor:
    """The full RNN-T loss from a joiner's output.

    Args:
      logits: [B, T, S+1, C], unnormalised; logits[b, t, s] is the joiner
        output for frame t after s symbols.
      symbols: int64 [B, S].
      termination_symbol, boundary, rnnt_type, delay_penalty, reduction:
        as :func:`rnnt_loss_simple`.

    Returns:
      loss ([B] for reduction "none", else a scalar).

    Memory: one logits-sized gradient buffer besides the logits (see
    _JointLogProbs); at B=16, T=400, S=100, C=500 float32 the logits alone
    are 1.3 GB, so prefer the pruned loss.
    """
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol,
                                     boundary, rnnt_type)
    return _run(px, py, boundary, rnnt_type, delay_penalty, reduction)


def get_rnnt_prune_ranges(
    px_grad: Tensor,
    py_grad: Tensor,
    boundary: Optional[Tensor],
    s_range: int,
) -> Tensor:
    """Choose, for every frame, the K consecutive contexts the pruned loss
    keeps, from the occupation probabilities of a cheap loss.

    Rule (k2 1.23.4): K = s_range, or S+1 if s_range > S.  For frame t and
    candidate start s (0 .. S+1-K) the score is the py occupation of
    contexts s .. s+K-1 on that frame minus px_grad[b, s-1, t] (the mass
    that enters s from below on the same frame, which a window starting at
    s cannot hold); the start is the first argmax.  Frames t >= T_b - 1 get
    max(S_b - K + 1, 0) so the window covers the final context.  Then the
    starts are made non-decreasing (each lowered to the minimum of itself and
    all later ones), consecutive starts may differ by at most K - 1
    (regular) or 1 (modified, inferred from px_grad having T columns) --
    earlier starts are raised to satisfy it -- and frame 0 starts at 0.

    Args:
      px_grad: [B, S, T+1] (regular) or [B, S, T] (modified).
      py_grad: [B, S+1, T].
      boundary: int64 [B, 4] rows [0, 0, S_b, T_b] (k2 requires it; None
        is accepted here and means [0, 0, S, T]).
      s_range: K, the number of contexts kept per frame (>= 2 regular,
        >= 1 modified; with K - 1 symbols per frame at most, a regular
        utterance with S_b > (K - 1) T_b has no path left).

    Returns:
      int64 ranges [B, T, K], ranges[b, t, k] = start[b, t] + k.
    """
    B, S, Tx = px_grad.shape
    T = py_grad.shape[2]
    if Tx not in (T, T + 1) or tuple(py_grad.shape) != (B, S + 1, T):
        raise ValueError(f"px_grad {tuple(px_grad.shape)} and py_grad "
                         f"{tuple(py_grad.shape)} are not [B, S, T+1 or T] "
                         "and [B, S+1, T]")
    modified = Tx == T
    if s_range < (1 if modified else 2):
        raise ValueError(f"s_range must be >= {1 if modified else 2} for "
                         f"{'modified' if modified else 'regular'} RNN-T, "
                         f"got {s_range}")
    K = S + 1 if s_range > S else s_range
    if boundary is None:
        boundary = torch.tensor([[0, 0, S, T]], device=py_grad.device)
        boundary = boundary.expand(B, 4)
    start = _best_window_start(px_grad[:, :, :T], py_grad, K)
    start = _force_final_window(start, boundary, K)
    start = _constrain_starts(start, K - 1 if not modified else 1)
    return start.unsqueeze(2) + torch.arange(K, device=start.device)


def _best_window_start(px_grad: Tensor, py_grad: Tensor, K: int) -> Tensor:
    """[B, T] first argmax over s of sum_{k<K} py_grad[s+k] - px_grad[s-1].

    The K-sum is taken over a strided view (as k2 does) so that float32
    near-ties resolve the same way as k2 as often as possible.
    """
    B, S1, T = py_grad.shape
    n = S1 - K + 1
    py_grad = py_grad.contiguous()
    sb, ss, st = py_grad.stride()
    windows = py_grad.as_strided((B, n, K, T), (sb, ss, ss, st)).sum(dim=2)
    entering = torch.cat((px_grad.new_zeros(B, 1, T), px_grad[:, :n - 1]),
                         dim=1)
    return (windows - entering).argmax(dim=1)


def _force_final_window(start: Tensor, boundary: Tensor, K: int) -> Tensor:
    """From frame T_b - 1 on, the window must end at context S_b."""
    B, T = start.shape
    frames = torch.arange(T, device=start.device).view(1, T)
    final = (boundary[:, 2] - K + 1).clamp(min=0).view(B, 1)
    return torch.where(frames < boundary[:, 3].view(B, 1) - 1, start, final)


def _suffix_min(x: Tensor) -> Tensor:
    """y[t] = min(x[t:]) along dim 1."""
    return x.flip(1).cummin(dim=1).values.flip(1)


def _constrain_starts(start: Tensor, max_step: int) -> Tensor:
    """Make starts non-decreasing with steps <= max_step and start[0] = 0.

    The step limit start[t+1] - start[t] <= max_step is the same as
    u[t] = max_step * t - start[t] being non-decreasing, so it is enforced
    by a suffix minimum on u (which raises earlier starts); clamping u at 0
    both pins frame 0 to start 0 and lowers starts that would run ahead of
    max_step * t.
    """
    B, T = start.shape
    start = _suffix_min(start)
    slope = max_step * torch.arange(T, device=start.device).view(1, T)
    u = _suffix_min(slope - start).clamp(min=0)
    return slope - u


def do_rnnt_pruning(am: Tensor, lm: Tensor,
                    ranges: Tensor) -> Tuple[Tensor, Tensor]:
    """Pick the joiner inputs for the kept contexts.

    Args:
      am: [B, T, D_am], encoder side (e.g. the joiner's encoder projection).
      lm: [B, S+1, D_lm], decoder side.  D_am and D_lm may differ.
      ranges: int64 [B, T, K] from :func:`get_rnnt_prune_ranges`.

    Returns:
      am_pruned [B, T, K, D_am] (a broadcast view of am) and
      lm_pruned [B, T, K, D_lm] with
      lm_pruned[b, t, k] = lm[b, ranges[b, t, k]].
    """
    B, T, K = ranges.shape
    if am.shape[:2] != (B, T) or lm.shape[0] != B:
        raise ValueError(f"ranges {tuple(ranges.shape)} does not match am "
                         f"{tuple(am.shape)} / lm {tuple(lm.shape)}")
    S1, D = lm.shape[1], lm.shape[2]
    am_pruned = am.unsqueeze(2).expand(B, T, K, am.shape[2])
    # Whole rows of lm are copied: index_select (and its index_add backward)
    # is several times faster than a gather with an index expanded over D.
    offsets = torch.arange(B, device=ranges.device).view(B, 1, 1) * S1
    rows = (ranges + offsets).reshape(-1)
    lm_pruned = lm.reshape(B * S1, D).index_select(0, rows)
    return am_pruned, lm_pruned.view(B, T, K, D)


def get_rnnt_logprobs_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor,
                             termination_symbol: int,
                             boundary: Optional[Tensor] = None,
                             rnnt_type: str = "regular"
                             ) -> Tuple[Tensor, Tensor]:
    """px, py of the pruned loss: the log-probabilities of the kept contexts
    placed at their positions, every other context -inf.

    Returns px [B, S, T+1] (regular) or [B, S, T] (modified), py [B, S+1, T].
    """
    modified = _check_rnnt_type(rnnt_type)
    B, T, K, _ = logits.shape
    S = symbols.shape[1]
    if tuple(ranges.shape) != (B, T, K):
        raise ValueError(f"ranges must be [{B}, {T}, {K}] for logits "
                         f"{tuple(logits.shape)}, got {tuple(ranges.shape)}")
    sym = _with_termination(symbols, termination_symbol)
    sym = sym.gather(1, ranges.reshape(B, T * K)).view(B, T, K)
    lp_sym, lp_term = _JointLogProbs.apply(logits, sym, termination_symbol)
    blank = lp_sym.new_full((B, T, S + 1), NEG_INF)
    px = blank.scatter(2, ranges, lp_sym)[:, :, :S].transpose(1, 2)
    py = blank.scatter(2, ranges, lp_term).transpose(1, 2)
    return _finish_px(px, boundary, modified), py


@_in_float32
def rnnt_loss_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: Optional[str] = "mean",
) -> Tensor:
    """RNN-T loss over the pruned lattice: contexts outside each frame's
    window count as impossible.

    Args:
      logits: [B, T, K, C], the joiner output for contexts ranges[b, t, k]
        (e.g. ``joiner(*do_rnnt_pruning(am, lm, ranges))``).
      symbols: int64 [B, S].
      ranges: int64 [B, T, K] from :func:`get_rnnt_prune_ranges`; context S
        stands for the termination symbol.
      termination_symbol, boundary, rnnt_type, delay_penalty, reduction:
        as :func:`rnnt_loss_simple`.

    Returns:
      loss ([B] for reduction "none", else a scalar).  With K = S+1 it
      equals :func:`rnnt_loss`.  A regular utterance with
      S_b > (K - 1) * T_b has no path inside the windows: inf, with a warning.
    """
    px, py = get_rnnt_logprobs_pruned(logits, symbols, ranges,
                                      termination_symbol, boundary, rnnt_type)
    return _run(px, py, boundary, rnnt_type, delay_penalty, reduction)

"""The mutual-information recursion behind the RNN-T losses, in pure PyTorch.

This is the pure-PyTorch counterpart of k2's ``mutual_information_recursion``
(k2 1.23.4): same arguments, same results, same gradients.  It sums, in the
log domain, the weights of every monotone path through a lattice of shape
[S+1, T+1]; see :func:`mutual_information_recursion` for the exact recursion.

How it is computed
------------------
A cell (s, t) depends only on cells of the previous anti-diagonal s + t - 1
(and, in "modified" shape, of s + t - 2), so a whole anti-diagonal of the whole
batch is computed at once.  px and py are copied once into a *skewed*,
diagonal-major layout [diagonal, B, s] in which each anti-diagonal is a
contiguous row; the recursion is a Python loop over the S + T diagonals, and
each step is two tensor ops on a [B, S+1] row: one ``logaddexp`` (which gives
-inf, not NaN, for two -inf operands) and one in-place addition that prepares
``alpha + px`` and ``alpha + py`` for the next diagonal.

The backward pass (run eagerly in the forward, as k2 does, because
``return_grad`` needs it there anyway) computes for every cell the share of
its alpha that came through its s-step, ``exp(alpha + px - alpha[dst])``, in
one vectorised expression; the t-step gets one minus that share, as in k2's
CPU kernel, so the two shares into a cell sum to one and no probability mass
is made or lost.  It then sweeps the diagonals in reverse in the linear
domain: the probability of visiting a cell is the sum over its outgoing steps
of (probability of the destination) x (share).  The gradient of a step is its
occupation probability.  Autograd never records a graph per cell: the whole
computation is one :class:`torch.autograd.Function` with a hand-written
backward.

Cost at B=16, T=400, S=100 (float32, one CPU core): 2 x 500 diagonals of two
small ops each plus about twenty [B, S, T]-sized ops, 40-60 ms for forward
and backward together (see benchmarks/README.md).

Precision: alpha reaches ~1e4 on long utterances, where a float32 ulp is
~1e-3, and each share would inherit that error; so every RENORM_EVERY
diagonals alpha is shifted by a whole number to keep it small (the shifts are
added back to the scores in float64).  At B=2, T=2000, S=300 the losses'
float32 gradients are within ~4e-5 of float64 (1.2e-3 with delay_penalty
0.25), k2's within 3e-5 to 4.6e-4 (3.3e-3); the recursion on random px, py,
whose likely paths lie far below each diagonal's maximum, ~5e-5, as k2's way
of forming the shares gives (benchmarks/README.md, "Float32 precision").
"""

import math
import warnings
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["mutual_information_recursion"]

NEG_INF = float("-inf")

# Every this many diagonals, alpha is shifted so that its largest value on
# the diagonal is 0 (see _alpha).
RENORM_EVERY = 16


class _Layout:
    """Geometry of the skewed, diagonal-major buffers of the recursion.

    Cell (s, t) of the [S+1, T+1] lattice lives at row ``s + t + 2`` (its
    anti-diagonal plus two) and column ``s + 1``.  Rows 0-1 and the last two
    rows, column 0 (s = -1) and the last column (s = S+1) are -inf padding,
    so that every step reads its neighbours without bounds checks.  Buffers
    are [R, B, C] (alpha, step ratios, occupations) or [R, B, 2, C] (pairs of
    a px and a py term), with R = S + T + 5 and C = S + 3: the rows are the
    outermost dimension so that one diagonal of the whole batch is a
    contiguous block.
    """

    def __init__(self, B: int, S: int, T: int):
        self.B, self.S, self.T = B, S, T
        self.R, self.C = S + T + 5, S + 3
        self.last = S + T + 2  # row of the final diagonal s + t = S + T

    def cells(self, buf: Tensor, size: Tuple[int, int], dr: int = 0,
              dc: int = 0, part: Optional[int] = None) -> Tensor:
        """[B, *size] view of ``buf`` whose element (b, s, t) is the buffer
        entry at row s + t + 2 + dr, column s + 1 + dc (and ``part`` 0 or 1 of
        a pair buffer)."""
        B, C = self.B, self.C
        inner = C if part is None else 2 * C
        row = B * inner
        offset = (2 + dr) * row + 1 + dc + (0 if part is None else part * C)
        return buf.as_strided((B, *size), (inner, row + 1, row), offset)

    def pairs(self, px: Tensor, py: Tensor) -> Tensor:
        """[R, B, 2, C] buffer holding px (part 0) and py (part 1) at their
        cells, -inf elsewhere."""
        buf = px.new_full((self.R, self.B, 2, self.C), NEG_INF)
        self.cells(buf, px.shape[1:], part=0).copy_(px)
        self.cells(buf, py.shape[1:], part=1).copy_(py)
        return buf

    def flat_index(self, s: Tensor, t: Tensor) -> Tensor:
        """Index of cell (s[b], t[b]) of utterance b in a flat [R*B*C]
        buffer."""
        b = torch.arange(self.B, device=s.device)
        return ((s + t + 2) * self.B + b) * self.C + s + 1

    def start_cells(self, cells: Tensor) -> Dict[int, Tuple[Tensor, Tensor]]:
        """Where each utterance's recursion starts, grouped by row.

        ``cells`` [B, 2] holds one (s, t) per utterance: (s_begin, t_begin)
        for alpha, (s_end, t_end) for the backward sweep.  They lie on
        different diagonals for different utterances, so each is set when
        the sweep reaches its row.  Returns {row: (utterance indices,
        s indices)}; one host sync, at most B entries.
        """
        by_row: Dict[int, List[List[int]]] = {}
        for b, (s, t) in enumerate(cells.tolist()):
            if 0 <= s <= self.S and 0 <= t <= self.T:
                by_row.setdefault(s + t + 2, [[], []])[0].append(b)
                by_row[s + t + 2][1].append(s)
        device = cells.device
        return {r: (torch.tensor(bs, device=device),
                    torch.tensor(ss, device=device))
                for r, (bs, ss) in by_row.items()}


def _alpha(lay: _Layout, px: Tensor, py: Tensor, modified: bool,
           start: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Forward pass: alpha[s, t], the log-sum of path weights from the start
    to (s, t) (regular shown; modified takes the s-step from (s-1, t-1))::

        alpha[s, t] = logaddexp(alpha[s-1, t] + px[s-1, t],
                                alpha[s, t-1] + py[s, t-1])

    ``start`` [B, 2] is (s_begin, t_begin).  Each diagonal r costs two ops::

        alpha[r] = logaddexp(pairs[r - 1 (or 2), part 0, shifted a column],
                             pairs[r - 1, part 1])
        pairs[r] += alpha[r]    # now alpha + px and alpha + py

    and a start cell, which no path from the start reaches (its logaddexp
    gave -inf), is then set to 0.  Every view is made once by ``unbind``.

    Renormalisation: every RENORM_EVERY diagonals, each utterance's diagonal
    is shifted by its maximum, ``shift[r, b]``, so the stored alpha is the
    true one minus the sum of the shifts so far.  Why: unshifted, alpha
    reaches ~1e4 on long utterances, where a float32 ulp is ~1e-3, and every
    step's share in the backward pass (an exp of a difference of alphas)
    inherits that error; shifted, the values stay within a few hundred.
    In the modified shape the s-terms of the diagonal before a shifted one
    are shifted too, as they meet the shifted diagonal's t-terms.  Shifts
    are whole numbers, so that subtracting them (and adding them back in
    the backward pass) is exact for values beyond +-1 and adds no rounding.

    Returns (alpha [R, B, C], pairs [R, B, 2, C] = alpha + px, alpha + py,
    shift [R, B, 1], zero on the diagonals that were not shifted).
    """
    S1 = lay.S + 1
    pairs = lay.pairs(px, py)
    alpha = px.new_full((lay.R, lay.B, lay.C), NEG_INF)
    # px[s-1, t] sits one diagonal back (two when modified), one column left.
    dr = -2 if modified else -1
    x_terms = pairs[:, :, 0, 0:S1].unbind(0)
    y_terms = pairs[:, :, 1, 1:1 + S1].unbind(0)
    targets = alpha[:, :, 1:1 + S1].unbind(0)
    rows_b = alpha.unsqueeze(2).unbind(0)
    pair_rows = pairs.unbind(0)
    shift = px.new_zeros((lay.R, lay.B, 1))
    shift_rows = shift.unbind(0)
    x_rows = pairs[:, :, 0].unbind(0)
    starts = lay.start_cells(start)
    for r in range(2, lay.last + 1):
        torch.logaddexp(x_terms[r + dr], y_terms[r - 1], out=targets[r])
        cells = starts.get(r)
        if cells is not None:
            targets[r][cells] = 0.0
        if r % RENORM_EVERY == 0:
            # A diagonal no path reaches yet (or any more) is left as it is.
            torch.amax(targets[r], dim=1, keepdim=True, out=shift_rows[r])
            shift_rows[r].nan_to_num_(neginf=0.0).round_()
            targets[r].sub_(shift_rows[r])
            if modified:
                x_rows[r - 1].sub_(shift_rows[r])
        pair_rows[r].add_(rows_b[r])
    return alpha, pairs, shift


def _step_ratios(lay: _Layout, alpha: Tensor, pairs: Tensor, shift: Tensor,
                 modified: bool) -> Tuple[Tensor, Tensor]:
    """Share of each destination's alpha that came through each step, both
    [R, B, C] at the step's source cell, in [0, 1]:

        rx[s, t] = exp(alpha[s, t] + px[s, t] - alpha[s+1, t])
        ry[s, t] = 1 - (the s-step share of (s, t+1))

    (modified: the s-step goes to (s+1, t+1)).  The two shares into a cell
    sum to one exactly, as in k2's CPU backward: computing ry with its own exp
    would round the two independently, so a little probability mass would be
    made or lost at every cell, and over thousands of frames the occupations
    (the gradients) drift by ~1e-3.  A t-step from a cell that no path
    reaches, or with py = -inf, gets 0.

    rx is formed from an alpha and the very value it was computed from, so
    float32 rounding largely cancels.  Where the destination is unreachable,
    -inf - -inf = NaN, which the flushed exp turns into 0 along with the
    underflows.

    On a shifted diagonal (see _alpha) alpha is first given its shift back
    (in place), so that it is in the frame of the terms it was computed
    from.
    """
    R, C = lay.R, lay.C
    dr = 2 if modified else 1
    alpha[::RENORM_EVERY].add_(shift[::RENORM_EVERY])
    rx = torch.zeros_like(alpha)
    torch.sub(pairs[:R - dr, :, 0, :C - 1], alpha[dr:, :, 1:],
              out=rx[:R - dr, :, :C - 1])
    mask = torch.empty_like(alpha, dtype=torch.bool)
    _exp_flushed(rx[:R - dr, :, :C - 1], mask[:R - dr, :, :C - 1])
    # The s-step into (s, t+1) starts at (s-1, t+1): same row, one column
    # left (modified: (s-1, t), one row up and one column left).
    ry = torch.zeros_like(alpha)
    torch.sub(1.0, rx[:R - dr, :, :C - 1], out=ry[dr - 1:R - 1, :, 1:])
    torch.eq(pairs[:, :, 1], NEG_INF, out=mask)
    ry.masked_fill_(mask, 0.0)
    return rx, ry


def _backward_sweep(lay: _Layout, rx: Tensor, ry: Tensor, end: Tensor,
                    modified: bool) -> Tensor:
    """occ[s, t]: probability that a path visits cell (s, t), i.e. the
    gradient of the score w.r.t. alpha[s, t], flowing back from the end::

        occ[end] = 1
        occ[s, t] = occ[s+1, t] * rx[s, t] + occ[s, t+1] * ry[s, t]

    (modified: occ[s+1, t+1] * rx[s, t]).  Linear domain, values in [0, 1];
    two ops per diagonal.  Returns occ [R, B, C].
    """
    S1 = lay.S + 1
    dr = 2 if modified else 1
    occ = torch.zeros_like(rx)
    via_x = occ[:, :, 2:2 + S1].unbind(0)
    targets = occ[:, :, 1:1 + S1].unbind(0)
    rx_rows = rx[:, :, 1:1 + S1].unbind(0)
    ry_rows = ry[:, :, 1:1 + S1].unbind(0)
    ends = lay.start_cells(end)
    for r in range(lay.last, 1, -1):
        torch.mul(via_x[r + dr], rx_rows[r], out=targets[r])
        targets[r].addcmul_(targets[r + 1], ry_rows[r])
        cells = ends.get(r)
        if cells is not None:
            targets[r][cells] = 1.0
    return occ


def _split_boundary(boundary: Optional[Tensor], B: int, S: int, T: int,
                    device: torch.device) -> Tuple[Tensor, Tensor]:
    """(start, end), each [B, 2] int64 cells (s, t)."""
    if boundary is None:
        start = torch.zeros(B, 2, dtype=torch.int64, device=device)
        end = torch.tensor([[S, T]], device=device).expand(B, 2)
        return start, end
    if boundary.dtype != torch.int64:
        raise TypeError(
            "boundary must be an int64 tensor [B, 4] of "
            f"[s_begin, t_begin, s_end, t_end], got dtype {boundary.dtype}")
    if tuple(boundary.shape) != (B, 4):
        raise ValueError(f"boundary must have shape [{B}, 4], got "
                         f"{tuple(boundary.shape)}")
    boundary = boundary.to(device)
    return boundary[:, :2], boundary[:, 2:]


def _forward(px: Tensor, py: Tensor, boundary: Optional[Tensor],
             want_occupation: bool):
    """scores [B], and (px_occ, py_occ) when ``want_occupation``."""
    B, S1, T = py.shape
    S = S1 - 1
    modified = px.shape[2] == T
    lay = _Layout(B, S, T)
    start, end = _split_boundary(boundary, B, S, T, px.device)
    alpha, pairs, shift = _alpha(lay, px, py, modified, start)
    scores = _scores(lay, alpha, shift, end)
    _warn_if_impossible(scores)
    if not want_occupation:
        return scores, None
    return scores, _occupation(lay, px, py, alpha, pairs, shift, end,
                               modified)


def _scores(lay: _Layout, alpha: Tensor, shift: Tensor, end: Tensor) -> Tensor:
    """alpha at each utterance's end cell plus the shifts of its diagonal
    and of every diagonal before it (summed in float64), [B]."""
    row = end[:, 0] + end[:, 1] + 2
    total_shift = shift.squeeze(2).double().cumsum(0)
    b = torch.arange(lay.B, device=alpha.device)
    stored = alpha.view(-1)[lay.flat_index(end[:, 0], end[:, 1])]
    return (stored.double() + total_shift[row, b]).to(alpha.dtype)


def _occupation(lay: _Layout, px: Tensor, py: Tensor, alpha: Tensor,
                pairs: Tensor, shift: Tensor, end: Tensor,
                modified: bool) -> Tuple[Tensor, Tensor]:
    """Occupation probabilities of every px and py step, i.e. the gradients
    of ``scores.sum()``: occ[destination] * ratio[step], shaped like px, py.

    An utterance with no path has all ratios 0, hence all occupations 0.
    """
    B, S, Tx = px.shape
    T = py.shape[2]
    rx, ry = _step_ratios(lay, alpha, pairs, shift, modified)
    occ = _backward_sweep(lay, rx, ry, end, modified)
    # A px step leads from (s, t) to (s+1, t) (modified: (s+1, t+1)): one
    # (two) diagonals on, one column right; a py step to (s, t+1).
    px_occ = lay.cells(occ, (S, Tx), 2 if modified else 1, 1) \
        * lay.cells(rx, (S, Tx))
    py_occ = lay.cells(occ, (S + 1, T), 1, 0) * lay.cells(ry, (S + 1, T))
    return px_occ, py_occ


def _exp_flushed(x: Tensor, mask: Tensor) -> Tensor:
    """exp(x) in place, with results below the smallest normal number, and
    NaN inputs, set to exactly 0.  ``mask`` is bool scratch shaped like x.

    Why: most step ratios are astronomically small (or exp(-inf)), and on
    CPU exp() takes a slow path for inputs that underflow, up to 10x slower
    than the whole rest of the computation.  Flushing them costs a few cheap
    masked fills and changes nothing above ~1e-38 (float32).
    """
    torch.ge(x, math.log(torch.finfo(x.dtype).tiny), out=mask)
    mask.logical_not_()  # underflow, -inf or NaN
    return x.masked_fill_(mask, 0.0).exp_().masked_fill_(mask, 0.0)


def _warn_if_impossible(scores: Tensor) -> None:
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        warnings.warn(
            "mutual_information_recursion: no path from start to end for "
            f"utterance(s) {bad.nonzero().flatten().tolist()} (e.g. more "
            "symbols than frames in rnnt_type='modified', a prune range too "
            "narrow, or all -inf inputs); their score is -inf (loss inf) and "
            "their gradient is 0.", stacklevel=4)


class _MutualInformation(torch.autograd.Function):
    """One autograd node for the whole recursion.

    Like k2, the occupation probabilities (the gradient w.r.t. px and py of
    ``scores.sum()``) are computed eagerly in the forward pass; the backward
    only scales them by the incoming per-utterance gradient.
    """

    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, boundary: Optional[Tensor]):
        scores, (px_occ, py_occ) = _forward(px, py, boundary, True)
        ctx.save_for_backward(px_occ, py_occ)
        ctx.mark_non_differentiable(px_occ, py_occ)
        return scores, px_occ, py_occ

    @staticmethod
    def backward(ctx, grad_scores: Tensor, _grad_px_occ, _grad_py_occ):
        px_occ, py_occ = ctx.saved_tensors
        g = grad_scores.view(-1, 1, 1)
        return px_occ * g, py_occ * g, None


def _check_shapes(px: Tensor, py: Tensor) -> None:
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError("px and py must be 3-D: px [B, S, T+1] or [B, S, T], "
                         f"py [B, S+1, T]; got {tuple(px.shape)} and "
                         f"{tuple(py.shape)}")
    B, S1, T = py.shape
    if (px.shape[0] != B or px.shape[1] != S1 - 1
            or px.shape[2] not in (T, T + 1)):
        raise ValueError(
            f"px has shape {tuple(px.shape)}, but py {tuple(py.shape)} needs "
            f"px to be [{B}, {S1 - 1}, {T + 1}] (regular) or "
            f"[{B}, {S1 - 1}, {T}] (modified)")
    if px.dtype != py.dtype or px.device != py.device:
        raise ValueError("px and py must have the same dtype and device")


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    boundary: Optional[Tensor] = None,
    return_grad: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """Log of the summed weight of every monotone path through a lattice.

    For each utterance b, with p of shape [S+1, T+1]::

        p[s_begin, t_begin] = 0
        p[s, t] = logaddexp(p[s-1, t] + px[b, s-1, t],        # regular
                            p[s, t-1] + py[b, s, t-1])
        p[s, t] = logaddexp(p[s-1, t-1] + px[b, s-1, t-1],    # modified
                            p[s, t-1] + py[b, s, t-1])
        scores[b] = p[s_end, t_end]

    Terms whose source cell lies before the start are -inf.  Nothing is
    masked: in the regular shape px[b, :, t_end] is used unless it is -inf
    (the RNN-T losses put -inf there so that no symbol follows the last frame).

    Args:
      px: [B, S, T+1] ("regular": an s-step stays on its frame) or
        [B, S, T] ("modified": an s-step also moves to the next frame);
        log-weights of the steps in s.  float32 or float64.
      py: [B, S+1, T], log-weights of the steps in t.  Same dtype and device.
      boundary: optional int64 [B, 4] of rows
        ``[s_begin, t_begin, s_end, t_end]`` with
        0 <= s_begin <= s_end <= S and 0 <= t_begin <= t_end <= T;
        None means (0, 0, S, T) for every utterance.
      return_grad: if True, also return the gradients of ``scores.sum()``
        w.r.t. px and py, i.e. the occupation probabilities in [0, 1].

    Returns:
      scores [B] (differentiable w.r.t. px and py), or
      ``(scores, (px_grad, py_grad))`` when ``return_grad`` (px_grad shaped
      like px, py_grad like py; not differentiable).

    An utterance with no path gets -inf and a warning; its gradients are 0.
    """
    _check_shapes(px, py)
    needs_grad = torch.is_grad_enabled() and (px.requires_grad
                                              or py.requires_grad)
    if needs_grad:
        scores, px_grad, py_grad = _MutualInformation.apply(px, py, boundary)
    else:
        with torch.no_grad():
            scores, occ = _forward(px, py, boundary, return_grad)
        px_grad, py_grad = occ if return_grad else (None, None)
    return (scores, (px_grad, py_grad)) if return_grad else scores

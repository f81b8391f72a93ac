"""CTC decoding without a graph: greedy search and prefix beam search.

Both take the CTC head's log-probs [N, T, V] and the valid frames per
utterance, and return token ids (blank removed), one list per utterance.
"""

import math
from typing import Dict, List, Tuple

import torch


def ctc_greedy_search(log_probs: torch.Tensor, lens: torch.Tensor,
                      blank_id: int = 0) -> List[List[int]]:
    """Best token per frame, repeats collapsed, blanks dropped.

    Args:
      log_probs: [N, T, V] (log-)probabilities; only the argmax matters.
      lens: [N] valid frames of each utterance.
      blank_id: the blank token.
    Returns:
      N lists of token ids.
    """
    best = log_probs.argmax(dim=-1).cpu()  # [N, T]
    hyps = []
    for n, length in enumerate(torch.as_tensor(lens).tolist()):
        tokens = torch.unique_consecutive(best[n, :length])
        hyps.append([t for t in tokens.tolist() if t != blank_id])
    return hyps


def ctc_prefix_beam_search(log_probs: torch.Tensor, lens: torch.Tensor, beam: int = 4,
                           blank_id: int = 0) -> List[List[int]]:
    """The most probable labelling found by CTC prefix beam search.

    Args:
      log_probs: [N, T, V] log-probabilities (log-softmax output).
      lens: [N] valid frames of each utterance.
      beam: prefixes kept after each frame.
      blank_id: the blank token.
    Returns:
      N lists of token ids.
    """
    log_probs = log_probs.detach().to("cpu", torch.float64)
    return [ctc_prefix_beam_search_one(log_probs[n, :length], beam, blank_id)[0][0]
            for n, length in enumerate(torch.as_tensor(lens).tolist())]


def ctc_prefix_beam_search_one(log_probs: torch.Tensor, beam: int = 4,
                               blank_id: int = 0) -> List[Tuple[List[int], float]]:
    """Prefix beam search over one utterance.

    Each prefix (labelling so far) carries two log-probabilities: of all
    alignments of the frames so far that produce it ending in blank (pb),
    and ending in its last token (pnb).  A frame's token v extends a prefix
    to prefix + v, except that a repeat of the last token only does so
    after a blank (pb); otherwise it stays the same prefix.  After every
    frame the `beam` prefixes with the largest logaddexp(pb, pnb) are kept.
    With a beam as large as the number of labellings it is exact.

    Args:
      log_probs: [T, V] log-probabilities.
      beam: prefixes kept after each frame.
      blank_id: the blank token.
    Returns:
      the final beam as (token ids, log-probability) pairs, best first.
    """
    log_probs = log_probs.detach().to("cpu", torch.float64)
    neg_inf = float("-inf")
    prefixes: List[Tuple[int, ...]] = [()]
    pb = torch.tensor([0.0], dtype=torch.float64)  # [B]
    pnb = torch.tensor([neg_inf], dtype=torch.float64)
    for frame in log_probs:
        total = torch.logaddexp(pb, pnb)
        # staying: a blank, or a repeat of the last token with no blank between
        last = torch.tensor([p[-1] if p else blank_id for p in prefixes])
        stay_pnb = torch.where(last == blank_id, neg_inf, pnb + frame[last])
        stay: Dict[Tuple[int, ...], List[float]] = {
            p: [b, nb] for p, b, nb in zip(prefixes, (total + frame[blank_id]).tolist(),
                                            stay_pnb.tolist())}
        # extending by v: from either ending, but from pb only for a repeat
        ext = total.unsqueeze(1) + frame.unsqueeze(0)  # [B, V]
        ext[:, blank_id] = neg_inf
        rows = (last != blank_id).nonzero().squeeze(1)
        ext[rows, last[rows]] = pb[rows] + frame[last[rows]]
        for i, p in enumerate(prefixes):  # an extension that is already in the beam
            if len(p) > 0 and p[:-1] in stay:
                j = prefixes.index(p[:-1])
                stay[p][1] = _logaddexp(stay[p][1], ext[j, p[-1]].item())
                ext[j, p[-1]] = neg_inf
        candidates = [(p, b, nb) for p, (b, nb) in stay.items()]
        k = min(beam, ext.numel())
        top_scores, top_index = ext.flatten().topk(k)
        for score, index in zip(top_scores.tolist(), top_index.tolist()):
            if score > neg_inf:
                i, v = divmod(index, ext.size(1))
                candidates.append((prefixes[i] + (v,), neg_inf, score))
        candidates.sort(key=lambda c: _logaddexp(c[1], c[2]), reverse=True)
        candidates = candidates[:beam]
        prefixes = [c[0] for c in candidates]
        pb = torch.tensor([c[1] for c in candidates], dtype=torch.float64)
        pnb = torch.tensor([c[2] for c in candidates], dtype=torch.float64)
    scores = torch.logaddexp(pb, pnb).tolist()
    return [(list(p), s) for p, s in zip(prefixes, scores)]


def _logaddexp(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    if low == float("-inf"):
        return high
    return high + math.log1p(math.exp(low - high))

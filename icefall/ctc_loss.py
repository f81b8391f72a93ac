"""A model's CTC head and its loss, for token lists as the recipes hold them.

    model.ctc_output = ctc_output(encoder_dim, vocab_size)
    log_probs = model.ctc_output(encoder_out)            # [N, T, V] log-softmax
    loss = ctc_loss(log_probs, encoder_out_lens, y)      # summed over the batch

PyTorch's ``torch.nn.functional.ctc_loss`` does the work (icefall uses it
too, in place of k2's CTC graph); this adds the layout the recipes use:
batch-first log-probs and one Python list of token ids per utterance.
"""

from typing import List

import torch
from torch import Tensor, nn


def ctc_output(encoder_dim: int, vocab_size: int) -> nn.Sequential:
    """icefall Zipformer's CTC head: Dropout(0.1), Linear, LogSoftmax (its
    weights are ``ctc_output.1.*`` in a state_dict, as in icefall's)."""
    return nn.Sequential(nn.Dropout(p=0.1), nn.Linear(encoder_dim, vocab_size), nn.LogSoftmax(dim=-1))


def ctc_loss(log_probs: Tensor, log_probs_lens: Tensor, y: List[List[int]], blank_id: int = 0,
             reduction: str = "sum") -> Tensor:
    """CTC loss of token sequences under per-frame log-probabilities.

    Args:
      log_probs: [N, T, V] log-softmax outputs (any float dtype; computed in float32).
      log_probs_lens: [N] valid frames of each row.
      y: N lists of token ids (no blank).
      blank_id: the blank token.
      reduction: "sum" (a scalar) or "none" ([N], one loss per utterance;
        infinite when an utterance has too few frames for its tokens).
    """
    assert reduction in ("sum", "none"), reduction
    assert log_probs.size(0) == log_probs_lens.size(0) == len(y), (log_probs.shape, len(y))
    targets = torch.tensor([t for ids in y for t in ids], dtype=torch.int64)
    target_lengths = torch.tensor([len(ids) for ids in y], dtype=torch.int64)
    return torch.nn.functional.ctc_loss(
        log_probs=log_probs.float().permute(1, 0, 2), targets=targets,
        input_lengths=log_probs_lens.cpu().to(torch.int64), target_lengths=target_lengths,
        blank=blank_id, reduction=reduction, zero_infinity=False)

"""The pruned transducer loss of a model's encoder output, shared by the
recipes' models (pruned_transducer_stateless3, zipformer).

icefall computes it inside each model's ``forward``: the smoothed "simple"
loss of a cheap joiner (``simple_am_proj(encoder_out) +
simple_lm_proj(decoder_out)``) gives, through its gradients, the few contexts
each frame keeps; the full joiner is then evaluated only there and gives the
pruned loss. Here the losses come from :mod:`icefall.rnnt_loss` and the
tokens are plain lists of ids instead of a ``k2.RaggedTensor``.
"""

from typing import List, Tuple

import torch
from torch import Tensor, nn

__all__ = ["model_rnnt_type", "pad_token_ids", "pruned_transducer_loss"]


def model_rnnt_type(model: nn.Module) -> str:
    """The topology a model was built for, from its config (``rnnt_type``,
    written by train.py --rnnt-type): "regular" when the config has no such
    key (icefall's models and configs saved before it) or there is no config."""
    return (getattr(model, "config", None) or {}).get("rnnt_type", "regular")


def pad_token_ids(y: List[List[int]], pad_id: int,
                  device: torch.device = torch.device("cpu")) -> Tuple[Tensor, Tensor]:
    """N lists of ids -> (padded [N, max(len)] int64 filled with pad_id, lens [N])."""
    lens = torch.tensor([len(ids) for ids in y], dtype=torch.int64)
    padded = torch.full((len(y), int(lens.max()) if len(y) else 0), pad_id, dtype=torch.int64)
    for i, ids in enumerate(y):
        padded[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.int64)
    return padded.to(device), lens.to(device)


def pruned_transducer_loss(
    decoder: nn.Module,
    joiner: nn.Module,
    simple_am_proj: nn.Module,
    simple_lm_proj: nn.Module,
    encoder_out: Tensor,
    encoder_out_lens: Tensor,
    y: List[List[int]],
    prune_range: int = 5,
    am_scale: float = 0.0,
    lm_scale: float = 0.0,
    reduction: str = "sum",
    rnnt_type: str = "regular",
) -> Tuple[Tensor, Tensor]:
    """(simple_loss, pruned_loss) of a batch.

    Args:
      decoder: the stateless decoder; ``decoder.blank_id`` is the blank (and
        start-of-sentence) token; called on [N, S+1] ids.
      joiner: called as ``joiner(am, lm, project_input=False)`` on projected
        inputs, with ``joiner.encoder_proj`` / ``joiner.decoder_proj``.
      simple_am_proj, simple_lm_proj: the simple loss's projections to the
        vocabulary.
      encoder_out: [N, T, C]; encoder_out_lens: [N] (each > 0).
      y: N lists of token ids (no blank, no SOS).
      prune_range: contexts kept per frame for the pruned loss (s_range).
      am_scale, lm_scale: weights of the am-only / lm-only terms of the
        smoothed simple loss.
      reduction: "sum" for scalars, "none" for per-utterance [N] losses.
      rnnt_type: "regular" (icefall's: any number of tokens on a frame) or
        "modified" (at most one token per frame, as greedy search with
        max_sym_per_frame=1, modified beam search and sherpa-onnx decode;
        needs at least as many frames as tokens).
    """
    from icefall.rnnt_loss import (do_rnnt_pruning, get_rnnt_prune_ranges,
                                   rnnt_loss_pruned, rnnt_loss_smoothed)

    assert reduction in ("sum", "none"), reduction
    assert encoder_out.size(0) == encoder_out_lens.size(0) == len(y), \
        (encoder_out.shape, encoder_out_lens.shape, len(y))
    device = encoder_out.device
    blank_id = decoder.blank_id
    y_padded, y_lens = pad_token_ids(y, blank_id, device)
    sos = torch.full((len(y), 1), blank_id, dtype=torch.int64, device=device)
    decoder_out = decoder(torch.cat([sos, y_padded], dim=1))  # [N, S+1, C]

    boundary = torch.zeros((encoder_out.size(0), 4), dtype=torch.int64, device=device)
    boundary[:, 2] = y_lens
    boundary[:, 3] = encoder_out_lens

    lm = simple_lm_proj(decoder_out)
    am = simple_am_proj(encoder_out)
    simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(
        lm=lm.float(), am=am.float(), symbols=y_padded, termination_symbol=blank_id,
        lm_only_scale=lm_scale, am_only_scale=am_scale, boundary=boundary,
        reduction=reduction, return_grad=True, rnnt_type=rnnt_type)

    ranges = get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad, boundary=boundary,
                                   s_range=prune_range)
    # Project before pruning: each frame/context is projected once, not once
    # per (t, s) pair.  am_pruned/lm_pruned: [N, T, prune_range, joiner_dim]
    am_pruned, lm_pruned = do_rnnt_pruning(am=joiner.encoder_proj(encoder_out),
                                           lm=joiner.decoder_proj(decoder_out), ranges=ranges)
    logits = joiner(am_pruned, lm_pruned, project_input=False)
    pruned_loss = rnnt_loss_pruned(logits=logits.float(), symbols=y_padded, ranges=ranges,
                                   termination_symbol=blank_id, boundary=boundary,
                                   reduction=reduction, rnnt_type=rnnt_type)
    return simple_loss, pruned_loss

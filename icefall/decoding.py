"""One entry point for every search a recipe's model offers, transducer or CTC.

    hyps = decode_encoder_output(model, encoder_out, encoder_out_lens,
                                 "ctc-prefix-beam-search", beam=4)

Transducer methods (:data:`icefall.beam_search.DECODING_METHODS`) need
``model.decoder``/``model.joiner``; CTC methods (:data:`CTC_METHODS`, icefall's
names) need ``model.ctc_output`` (log-probs ``[N, T, V]``). A model with a
flag ``use_transducer``/``use_ctc`` (Zipformer's AsrModel) says which heads it
has; a model without the flags is a transducer (pts3).
"""

import logging
from typing import List, Tuple

import torch
from torch import nn

from icefall.beam_search import DECODING_METHODS as TRANSDUCER_METHODS
from icefall.beam_search import decode_batch
from icefall.cli import UserError
from icefall.ctc_decode import ctc_greedy_search, ctc_prefix_beam_search
from icefall.transducer_loss import model_rnnt_type

CTC_METHODS = ("ctc-greedy-search", "ctc-prefix-beam-search")
ALL_METHODS = TRANSDUCER_METHODS + CTC_METHODS


def has_transducer(model: nn.Module) -> bool:
    return bool(getattr(model, "use_transducer", hasattr(model, "joiner")))


def has_ctc(model: nn.Module) -> bool:
    return bool(getattr(model, "use_ctc", False)) and hasattr(model, "ctc_output")


def methods_for(model: nn.Module) -> Tuple[str, ...]:
    """The methods of :data:`ALL_METHODS` that `model`'s heads support."""
    return (TRANSDUCER_METHODS if has_transducer(model) else ()) + \
        (CTC_METHODS if has_ctc(model) else ())


def one_token_per_frame(model: nn.Module) -> bool:
    """Whether the model was trained with ``--rnnt-type modified`` (its config
    says so): it has learnt to emit at most one token per frame, and blank
    is meaningless after a token on the same frame, so greedy search must
    move on after one token and Graves' beam_search does not apply."""
    return model_rnnt_type(model) == "modified"


def check_method(model: nn.Module, method: str, flag: str = "--decoding-method") -> None:
    """Raise :class:`icefall.cli.UserError` (one line naming `flag`) if the
    model has no head for `method`, or `method` is beam_search and the model
    was trained for one token per frame."""
    if method not in methods_for(model):
        head = "CTC head (train with --use-ctc 1)" if method in CTC_METHODS else \
            "transducer head (train with --use-transducer 1)"
        raise UserError(f"{flag} {method}: the model has no {head}; it can use "
                        f"{', '.join(methods_for(model))}")
    if method == "beam_search" and one_token_per_frame(model):
        raise UserError(f"{flag} beam_search: the model was trained with --rnnt-type modified "
                        f"(one token per frame), which beam_search does not follow; use "
                        f"modified_beam_search or greedy_search")


def max_sym_for(model: nn.Module, method: str, max_sym_per_frame: int,
                flag: str = "--max-sym-per-frame") -> int:
    """The tokens per frame greedy search may emit: ``max_sym_per_frame``,
    or 1 (with a warning naming `flag`) for a model trained for one token per
    frame, which would emit garbage with more."""
    if method == "greedy_search" and max_sym_per_frame > 1 and one_token_per_frame(model):
        logging.warning(f"{flag} {max_sym_per_frame}: the model was trained with --rnnt-type "
                        f"modified (one token per frame); using 1")
        return 1
    return max_sym_per_frame


@torch.no_grad()
def decode_encoder_output(model: nn.Module, encoder_out: torch.Tensor,
                          encoder_out_lens: torch.Tensor, method: str, beam: int = 4,
                          max_sym_per_frame: int = 1) -> List[List[int]]:
    """Token ids of each utterance of a padded batch.

    Args:
      model: in eval mode, on encoder_out's device.
      encoder_out: [N, T, C] from ``model.forward_encoder``.
      encoder_out_lens: [N] valid frames.
      method: one of :data:`ALL_METHODS`.
      beam: beam size (beam searches, transducer or CTC).
      max_sym_per_frame: greedy_search only; 1 for a model trained for one
        token per frame (see :func:`one_token_per_frame`), whatever is passed.
    Returns:
      N lists of token ids (blank removed).
    """
    if method in TRANSDUCER_METHODS:
        if one_token_per_frame(model):
            max_sym_per_frame = 1
        return decode_batch(model, encoder_out, encoder_out_lens, method, beam=beam,
                            max_sym_per_frame=max_sym_per_frame)
    if method not in CTC_METHODS:
        raise ValueError(f"unknown decoding method {method!r}; expected one of {ALL_METHODS}")
    log_probs = model.ctc_output(encoder_out)
    blank_id = int(getattr(model, "blank_id", 0))
    if method == "ctc-greedy-search":
        return ctc_greedy_search(log_probs, encoder_out_lens, blank_id=blank_id)
    return ctc_prefix_beam_search(log_probs, encoder_out_lens, beam=beam, blank_id=blank_id)

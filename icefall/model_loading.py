"""Loading a recipe's model for decoding or export, whatever the recipe.

A recipe's ``model.py`` offers ``add_model_arguments(parser)``,
``config_from_args(args, vocab_size, blank_id)`` and ``build_model(config)``
(see notes/interfaces). :func:`load_model` turns the flags of a decoding or
export script into that model:

- ``--checkpoint FILE`` (an export or any single checkpoint), or
  ``--exp-dir --epoch/--iter/--avg/--use-averaged-model`` (averaged);
- the config stored in the file, or, for icefall's own files (no config),
  the recipe's size flags.

Before allocating the model it is built on the meta device and its shapes
are compared with the weights, so a config that does not match its weights
(e.g. a crafted one that would allocate many GB) is refused with a
one-line :class:`~icefall.checkpoint.CheckpointError`.
"""

import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from icefall.checkpoint import (CheckpointError, load_file, read_config, select_checkpoints_from_args,
                                state_dict_mismatch, strip_ddp_prefix)
from icefall.tokens import SymbolTable, check_tokens_fit_model

PathLike = Union[str, Path]


def read_weights_and_config(args) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]], str]:
    """(state_dict, config or None, a name for messages) that the flags select:
    ``args.checkpoint`` if set, else the ``--epoch/--iter/--avg`` selection."""
    if getattr(args, "checkpoint", None) is not None:
        ckpt = load_file(args.checkpoint)
        config = ckpt.get("config")
        return strip_ddp_prefix(ckpt["model"]), dict(config) if config else None, str(args.checkpoint)
    selection = select_checkpoints_from_args(args)
    logging.info(f"loading {[str(f) for f in selection.files]} ({selection.mode})")
    state_dict = selection.load_state_dict()
    source = str(selection.files[-1]) if len(selection.files) == 1 else f"{selection.files[-1]} ({selection.flags})"
    return state_dict, read_config(selection.files[-1]), source


def drop_prefixes(state_dict: Dict[str, torch.Tensor], prefixes: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Remove the tensors whose names start with one of ``prefixes`` (heads
    the recipe's model does not have, e.g. icefall's GigaSpeech heads)."""
    dropped = [k for k in state_dict if prefixes and k.startswith(tuple(prefixes))]
    if not dropped:
        return state_dict
    logging.info(f"dropping {len(dropped)} tensors ({', '.join(sorted({k.split('.')[0] for k in dropped}))})")
    return {k: v for k, v in state_dict.items() if k not in set(dropped)}


def build_checked(model_module: ModuleType, config: Dict[str, Any], state_dict: Dict[str, torch.Tensor],
                  source: str) -> nn.Module:
    """``model_module.build_model(config)`` with ``state_dict`` loaded strictly,
    after checking on the meta device (no memory) that the shapes fit.

    Raises:
      CheckpointError: one line naming ``source`` and the first missing,
        unexpected or mismatched keys; or the config is not one the recipe builds.
    """
    try:
        with torch.device("meta"):
            skeleton = model_module.build_model(config)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{source}: its model config cannot be built: {e}") from None
    problem = state_dict_mismatch(skeleton.state_dict(), state_dict)
    if problem:
        raise CheckpointError(f"{source}: the weights do not fit the model of its config: {problem}")
    model = model_module.build_model(config)
    model.load_state_dict(state_dict, strict=True)
    return model


def load_model(model_module: ModuleType, args, tokens: SymbolTable, tokens_path: PathLike) -> nn.Module:
    """The model the script's flags select, weights loaded, in eval mode.

    Args:
      model_module: the recipe's model.py (``build_model``, ``config_from_args``;
        optionally ``EXTRA_PREFIXES``, names in icefall's files to drop).
      args: parsed flags: ``checkpoint`` or ``exp_dir/epoch/iter/avg/
        use_averaged_model``, plus the recipe's size flags.
      tokens, tokens_path: the token table, which must fit the model.
    Returns:
      the model on the CPU, with ``unk_id`` set when the tokens have ``<unk>``
      (an emitted ``<unk>`` is dropped like a blank, as in icefall).
    """
    state_dict, config, source = read_weights_and_config(args)
    if config is None:
        blank_id = tokens["<blk>"] if "<blk>" in tokens else 0
        config = model_module.config_from_args(args, vocab_size=len(tokens), blank_id=blank_id)
    check_tokens_fit_model(tokens, config["vocab_size"], tokens_path)
    state_dict = drop_prefixes(state_dict, getattr(model_module, "EXTRA_PREFIXES", ()))
    model = build_checked(model_module, config, state_dict, source)
    if "<unk>" in tokens:
        model.unk_id = tokens["<unk>"]
    return model.eval()


def export_pretrained(model_module: ModuleType, args, tokens: SymbolTable, tokens_path: PathLike,
                      out: PathLike) -> nn.Module:
    """export.py's job: the model the flags select (averaged as
    :func:`load_model` does) saved atomically to `out` as
    ``{"model": state_dict, "config": config}``, which loads with
    ``weights_only=True`` and rebuilds the model without flags. Returns the model.
    """
    from icefall.checkpoint import atomic_save
    from icefall.fsutil import megabytes

    selection = None if getattr(args, "checkpoint", None) else select_checkpoints_from_args(args)
    for f in (selection.files if selection else []):
        if f.exists():
            logging.info(f"input {f}: {megabytes(f):.1f} MB")
    model = load_model(model_module, args, tokens, tokens_path)
    out = Path(out)
    atomic_save({"model": model.state_dict(), "config": model.config}, out)
    how = f" ({selection.mode} of {len(selection.files)} file(s))" if selection else ""
    logging.info(f"wrote {out}: {megabytes(out):.1f} MB{how}")
    return model

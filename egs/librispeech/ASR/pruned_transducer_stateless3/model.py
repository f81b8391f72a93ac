"""The pruned RNN-T model of icefall's pruned_transducer_stateless3, and how to build it.

    config = default_config()            # icefall's LibriSpeech sizes
    model = build_model(config)          # state_dict names/shapes as icefall's
    load_icefall_state_dict(model, torch.load("pretrained.pt")["model"])

The config is a plain dict, meant to be saved next to the weights so that a
script can rebuild the model without retyping flags.

The loss functions come from `icefall.transducer_loss` (the repository root must be
on sys.path); they are imported on the first training forward, so building
the model and decoding do not need them.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from conformer import SUBSAMPLING_FACTORS, Conformer, output_frames
from decoder import Decoder
from joiner import Joiner
from scaling import ScaledLinear

# Keys build_model() requires; each is one of icefall's train.py params.
REQUIRED_KEYS = (
    "feature_dim", "subsampling_factor", "encoder_dim", "nhead", "dim_feedforward",
    "num_encoder_layers", "vocab_size", "blank_id", "context_size", "decoder_dim",
    "joiner_dim",
)
# Keys with icefall's defaults, so configs that omit them still build.
# rnnt_type: the topology the model was trained with (train.py --rnnt-type);
# decoding follows it (a "modified" model emits one token per frame).
# use_ctc: an auxiliary CTC head on the encoder (train.py --use-ctc; icefall's
# pts3 has none).
OPTIONAL_DEFAULTS = {"dropout": 0.1, "layer_dropout": 0.075, "cnn_module_kernel": 31,
                     "subsampling_channels": [8, 32, 128], "rnnt_type": "regular",
                     "use_ctc": False}

# Prefixes of the GigaSpeech heads that icefall's multi-dataset checkpoints carry.
EXTRA_PREFIXES = ("decoder_giga.", "joiner_giga.", "simple_am_proj_giga.",
                  "simple_lm_proj_giga.")

# Model-size flags and the config key each sets (vocab_size and blank_id come
# from the tokens, not from a flag).
SIZE_FLAGS = {
    "feature_dim": 80,
    "subsampling_factor": 4,
    "encoder_dim": 512,
    "nhead": 8,
    "dim_feedforward": 2048,
    "num_encoder_layers": 12,
    "cnn_module_kernel": 31,
    "decoder_dim": 512,
    "joiner_dim": 512,
    "context_size": 2,
}


class Transducer(nn.Module):
    """Encoder + stateless decoder + joiner, trained with the pruned RNN-T loss.

    Submodules (names as in icefall): encoder, decoder, joiner,
    simple_am_proj (encoder_dim -> vocab), simple_lm_proj (decoder_dim -> vocab);
    the last two give the cheap "simple" loss whose gradients choose the
    pruning ranges. With ``use_ctc``, also ctc_output (Dropout, Linear,
    LogSoftmax: encoder_dim -> vocab, named as icefall's Zipformer's), an
    auxiliary CTC head that training adds to the loss and that the CTC
    decoding methods can use.
    """

    def __init__(self, encoder: nn.Module, decoder: Decoder, joiner: Joiner,
                 encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int,
                 use_ctc: bool = False):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.joiner = joiner
        self.simple_am_proj = ScaledLinear(encoder_dim, vocab_size, initial_speed=0.5)
        self.simple_lm_proj = ScaledLinear(decoder_dim, vocab_size)
        self.blank_id = decoder.blank_id
        self.use_ctc = use_ctc
        if use_ctc:
            from icefall.ctc_loss import ctc_output

            self.ctc_output = ctc_output(encoder_dim, vocab_size)

    def frames_after_subsampling(self, num_frames: int) -> int:
        """Encoder output frames for ``num_frames`` fbank frames (this model's
        subsampling factor)."""
        return output_frames(num_frames, self.encoder.subsampling_factor)

    def forward_encoder(self, x: Tensor, x_lens: Tensor, warmup: float = 1.0) -> Tuple[Tensor, Tensor]:
        """fbank x [N, T, 80] (padded with log(1e-10)), x_lens [N] ->
        (encoder_out [N, T', encoder_dim], encoder_out_lens [N]), T' =
        frames_after_subsampling(T)."""
        return self.encoder(x, x_lens, warmup=warmup)

    def forward(self, x: Tensor, x_lens: Tensor, y: List[List[int]],
                prune_range: int = 5, am_scale: float = 0.0, lm_scale: float = 0.0,
                warmup: float = 1.0, reduction: str = "sum",
                rnnt_type: Optional[str] = None) -> Tuple[Tensor, ...]:
        """
        Args:
          x: features [B, T, F].
          x_lens: [B] int64, valid frames per utterance.
          y: B lists of token ids (no blank, no SOS); a plain Python list of
            lists replaces icefall's k2.RaggedTensor.
          prune_range: symbols kept per frame for the pruned loss (s_range).
          am_scale, lm_scale: weights of the am-only / lm-only terms in the
            smoothed simple loss.
          warmup: training progress for layer bypassing (see Conformer).
          reduction: "sum" for scalars, "none" for per-utterance [B] losses.
          rnnt_type: "regular" (icefall's: any number of symbols on a frame)
            or "modified" (at most one symbol per frame, as greedy search
            with max_sym_per_frame=1, modified beam search and sherpa-onnx
            decode; needs at least as many frames as tokens); None: the
            model's own (its config's rnnt_type, which train.py sets).
        Returns:
          (simple_loss, pruned_loss), each a scalar or [B] as `reduction` says;
          a model with a CTC head (``use_ctc``) returns (simple_loss,
          pruned_loss, ctc_loss).
        """
        from icefall.transducer_loss import model_rnnt_type, pruned_transducer_loss

        assert x.ndim == 3 and x_lens.ndim == 1, (x.shape, x_lens.shape)
        assert x.size(0) == x_lens.size(0) == len(y), (x.shape, x_lens.shape, len(y))

        encoder_out, encoder_out_lens = self.forward_encoder(x, x_lens, warmup=warmup)
        assert torch.all(encoder_out_lens > 0), encoder_out_lens
        losses = pruned_transducer_loss(
            self.decoder, self.joiner, self.simple_am_proj, self.simple_lm_proj, encoder_out,
            encoder_out_lens, y, prune_range=prune_range, am_scale=am_scale, lm_scale=lm_scale,
            reduction=reduction, rnnt_type=rnnt_type or model_rnnt_type(self))
        if not self.use_ctc:
            return losses
        from icefall.ctc_loss import ctc_loss

        ctc = ctc_loss(self.ctc_output(encoder_out), encoder_out_lens, y, blank_id=self.blank_id,
                       reduction=reduction)
        return (*losses, ctc)


def frames_after_subsampling(num_frames: int, subsampling_factor: int = 4) -> int:
    """Encoder output frames for ``num_frames`` fbank frames (Conv2dSubsampling:
    two 3x3 convolutions with stride 2, as icefall's pts3, or 2 and 3 for
    factor 6); below 1 (fewer than 7 frames) the input is too short for the
    model. A loaded model's own rule: ``model.frames_after_subsampling``."""
    return output_frames(num_frames, subsampling_factor)


def default_config() -> Dict:
    """icefall's LibriSpeech pruned_transducer_stateless3 sizes (BPE 500)."""
    return {**SIZE_FLAGS, "vocab_size": 500, "blank_id": 0, **OPTIONAL_DEFAULTS}


def build_model(config: Dict) -> Transducer:
    """Build a Transducer from a plain dict of sizes (see default_config()).

    Raises ValueError naming any missing or unknown key.
    """
    missing = [k for k in REQUIRED_KEYS if k not in config]
    unknown = [k for k in config if k not in REQUIRED_KEYS and k not in OPTIONAL_DEFAULTS]
    if missing or unknown:
        raise ValueError(f"model config: missing keys {missing}, unknown keys {unknown}; "
                         f"expected {list(REQUIRED_KEYS)} plus optional "
                         f"{list(OPTIONAL_DEFAULTS)}")
    c = {**OPTIONAL_DEFAULTS, **config}
    if c["rnnt_type"] not in ("regular", "modified"):
        raise ValueError(f"model config: rnnt_type must be 'regular' or 'modified', got {c['rnnt_type']!r}")
    encoder = Conformer(num_features=c["feature_dim"],
                        subsampling_factor=c["subsampling_factor"],
                        d_model=c["encoder_dim"], nhead=c["nhead"],
                        dim_feedforward=c["dim_feedforward"],
                        num_encoder_layers=c["num_encoder_layers"],
                        dropout=c["dropout"], layer_dropout=c["layer_dropout"],
                        cnn_module_kernel=c["cnn_module_kernel"],
                        subsampling_channels=c["subsampling_channels"])
    decoder = Decoder(vocab_size=c["vocab_size"], decoder_dim=c["decoder_dim"],
                      blank_id=c["blank_id"], context_size=c["context_size"])
    joiner = Joiner(encoder_dim=c["encoder_dim"], decoder_dim=c["decoder_dim"],
                    joiner_dim=c["joiner_dim"], vocab_size=c["vocab_size"])
    model = Transducer(encoder, decoder, joiner, encoder_dim=c["encoder_dim"],
                       decoder_dim=c["decoder_dim"], joiner_dim=c["joiner_dim"],
                       vocab_size=c["vocab_size"], use_ctc=bool(c["use_ctc"]))
    model.config = dict(config)  # a plain attribute: saved beside, not inside, the state_dict
    return model


def load_icefall_state_dict(model: nn.Module, state_dict: Dict[str, Tensor]) -> None:
    """Load an icefall pruned_transducer_stateless3 state_dict with strict=True.

    Accepts the bare state_dict or a checkpoint dict holding it under "model".
    Drops the GigaSpeech heads (decoder_giga.*, joiner_giga.*,
    simple_*_proj_giga.*) of multi-dataset checkpoints, which this model
    does not have; any other mismatch raises.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    dropped = [k for k in state_dict if k.startswith(EXTRA_PREFIXES)]
    if dropped:
        logging.info(f"load_icefall_state_dict: dropping {len(dropped)} GigaSpeech "
                     f"tensors ({', '.join(sorted({k.split('.')[0] for k in dropped}))})")
        dropped = set(dropped)
        state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
    model.load_state_dict(state_dict, strict=True)


def add_model_arguments(parser) -> None:
    """Model-size flags shared by train.py, decode.py, export.py and pretrained.py.

    The defaults are icefall's LibriSpeech model. Files written by this
    recipe carry their config, which wins over these flags; they matter for
    training and for icefall's own files, which carry none.
    """
    group = parser.add_argument_group("model sizes (ignored when the checkpoint carries a config)")
    help_text = {
        "feature_dim": "fbank bins of the input",
        "subsampling_factor": "encoder frame rate reduction: 4 (icefall's, 40 ms frames) or 6 "
                              "(60 ms: a third fewer frames for the encoder layers and the losses)",
        "encoder_dim": "Conformer d_model", "nhead": "attention heads per encoder layer",
        "dim_feedforward": "feed-forward width of an encoder layer", "num_encoder_layers": "encoder layers",
        "cnn_module_kernel": "kernel size of the Conformer convolution module",
        "decoder_dim": "decoder embedding size", "joiner_dim": "joiner hidden size",
        "context_size": "decoder context: 1 bigram, 2 trigram",
    }
    for key, default in SIZE_FLAGS.items():
        choices = SUBSAMPLING_FACTORS if key == "subsampling_factor" else None
        group.add_argument(f"--{key.replace('_', '-')}", type=int, default=default, choices=choices,
                           help=help_text[key])
    group.add_argument("--subsampling-channels", type=_three_ints, default="8,32,128",
                       help="channels of Conv2dSubsampling's three convolutions (icefall's: "
                            "8,32,128); fewer make the front end, a quarter of a small "
                            "model's training step, cheaper")


def _three_ints(text: str) -> List[int]:
    import argparse

    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers like 8,32,128, got '{text}'")
    return values


def config_from_args(args, vocab_size: int, blank_id: int = 0) -> Dict:
    """The model config the size flags describe."""
    config = {key: getattr(args, key) for key in SIZE_FLAGS}
    config.update(vocab_size=vocab_size, blank_id=blank_id)
    channels = getattr(args, "subsampling_channels", OPTIONAL_DEFAULTS["subsampling_channels"])
    if list(channels) != OPTIONAL_DEFAULTS["subsampling_channels"]:
        config["subsampling_channels"] = list(channels)
    rnnt_type = getattr(args, "rnnt_type", "regular")  # a training flag
    if rnnt_type != "regular":
        config["rnnt_type"] = rnnt_type
    if getattr(args, "use_ctc", False):  # a training flag
        config["use_ctc"] = True
    return config


def load_model(args, tokens, tokens_path) -> Transducer:
    """The model that ``--checkpoint`` (an exported file) or
    ``--exp-dir --epoch/--iter/--avg/--use-averaged-model`` select, in eval
    mode: :func:`icefall.model_loading.load_model` with this recipe."""
    import sys

    from icefall.model_loading import load_model as load

    return load(sys.modules[__name__], args, tokens, tokens_path)

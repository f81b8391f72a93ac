"""icefall's Zipformer2 ASR model (egs/librispeech/ASR/zipformer), and how to build it.

    parser = argparse.ArgumentParser(); add_model_arguments(parser)
    config = config_from_args(parser.parse_args(), vocab_size=500, blank_id=0)
    model = build_model(config)      # state_dict names/shapes as icefall's
    model.load_state_dict(torch.load("pretrained.pt", weights_only=True)["model"])

The config is a plain JSON-able dict, saved next to the weights so that a
script can rebuild the model without retyping flags.  The model has a
transducer head (--use-transducer), a CTC head (--use-ctc), or both.

Causal models (--causal 1) also decode chunk by chunk:
AsrModel.get_init_states() and AsrModel.streaming_forward(), with
stack_states()/unstack_states() to batch streams (icefall's streaming_decode.py).

The transducer loss comes from `icefall.transducer_loss` (the repository root must
be on sys.path); it is imported on the first training forward, so building
the model and decoding do not need it.
"""

import argparse
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from decoder import Decoder
from joiner import Joiner
from scaling import ScaledLinear, ScheduledFloat
from subsampling import Conv2dSubsampling
from zipformer import Zipformer2

# Flags holding comma-separated ints (one per encoder stack, or one for all),
# with icefall's defaults.
LIST_FLAGS = {
    "num_encoder_layers": ("2,2,3,4,3,2", "layers in each encoder stack"),
    "downsampling_factor": ("1,2,4,8,4,2", "frame-rate reduction of each stack, relative to 50 Hz"),
    "feedforward_dim": ("512,768,1024,1536,1024,768", "feed-forward hidden size, per stack"),
    "num_heads": ("4,4,4,8,4,4", "attention heads, per stack (or one value for all)"),
    "encoder_dim": ("192,256,384,512,384,256", "model width of each stack (or one value for all)"),
    "query_head_dim": ("32", "query/key size of one attention head, per stack or one for all"),
    "value_head_dim": ("12", "value size of one attention head, per stack or one for all"),
    "pos_head_dim": ("4", "positional-score size of one attention head, per stack or one for all"),
    "encoder_unmasked_dim": ("192,192,256,256,256,192",
                             "leading channels of each stack never masked by the training-time "
                             "feature masking; each must be <= that stack's --encoder-dim"),
    "cnn_module_kernel": ("31,31,15,15,15,31", "depthwise convolution kernel size, per stack"),
    "chunk_size": ("16,32,64,-1", "causal models: chunk sizes in 50 Hz frames, one drawn per "
                   "training batch (-1: whole utterance); must be -1 when not causal"),
    "left_context_frames": ("64,128,256,-1", "causal models: left context in 50 Hz frames, one "
                            "drawn per chunked training batch (-1: unlimited)"),
    "embed_channels": ("8,32,128,384", "front end (Conv2dSubsampling): channels of its three "
                       "2-D convolutions and of its ConvNeXt's hidden layer; icefall's are "
                       "8,32,128,384; e.g. 8,16,128,128 is about twice as fast on a CPU "
                       "(sherpa-onnx's streaming recognizer needs the third to be 128)"),
}
INT_FLAGS = {
    "pos_dim": (48, "size of the relative positional encoding"),
    "decoder_dim": (512, "embedding size of the stateless decoder"),
    "joiner_dim": (512, "size the joiner projects encoder and decoder outputs to before adding"),
    "context_size": (2, "tokens of left context the decoder sees (2: a trigram-like decoder)"),
}
BOOL_FLAGS = {
    "causal": (False, "build the causal (streaming) encoder"),
    "use_transducer": (True, "give the model a transducer head"),
    "use_ctc": (False, "give the model a CTC head"),
}
FEATURE_DIM = 80
# rnnt_type: the transducer topology the model was trained with (train.py
# --rnnt-type); decoding follows it (a "modified" model emits one token per frame).
CONFIG_KEYS = ("feature_dim", *LIST_FLAGS, *INT_FLAGS, *BOOL_FLAGS, "vocab_size", "blank_id",
               "rnnt_type")
# Keys added after configs were first saved, with the value older configs meant.
LATER_KEYS = {"embed_channels": [8, 32, 128, 384], "rnnt_type": "regular"}


class AsrModel(nn.Module):
    """Conv2dSubsampling + Zipformer2, with a transducer head (decoder, joiner,
    simple_am_proj, simple_lm_proj) and/or a CTC head (ctc_output).

    Submodule names are icefall's: encoder_embed, encoder, decoder, joiner,
    simple_am_proj, simple_lm_proj, ctc_output (Dropout, Linear, LogSoftmax).
    """

    def __init__(self, encoder_embed: nn.Module, encoder: nn.Module,
                 decoder: Optional[Decoder] = None, joiner: Optional[Joiner] = None,
                 encoder_dim: int = 384, decoder_dim: int = 512, vocab_size: int = 500,
                 use_transducer: bool = True, use_ctc: bool = False, blank_id: int = 0):
        super().__init__()
        assert use_transducer or use_ctc, "use_transducer and/or use_ctc must be True"
        self.encoder_embed = encoder_embed
        self.encoder = encoder
        self.use_transducer = use_transducer
        self.blank_id = blank_id
        if use_transducer:
            assert decoder is not None and joiner is not None
            self.decoder = decoder
            self.joiner = joiner
            self.simple_am_proj = ScaledLinear(encoder_dim, vocab_size, initial_scale=0.25)
            self.simple_lm_proj = ScaledLinear(decoder_dim, vocab_size, initial_scale=0.25)
        else:
            assert decoder is None and joiner is None
        self.use_ctc = use_ctc
        if use_ctc:
            from icefall.ctc_loss import ctc_output

            self.ctc_output = ctc_output(encoder_dim, vocab_size)

    def frames_after_subsampling(self, num_frames: int) -> int:
        """Encoder output frames for ``num_frames`` fbank frames (see the
        module's function of that name: one rule for every config)."""
        return frames_after_subsampling(num_frames)

    def forward_encoder(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """fbank x [N, T, 80] (padded with log(1e-10)), x_lens [N] ->
        (encoder_out [N, ((T-7)//2+1)//2, max(encoder_dim)], encoder_out_lens [N])."""
        x, x_lens = self.encoder_embed(x, x_lens)
        src_key_padding_mask = torch.arange(x.shape[1], device=x.device)[None, :] \
            >= x_lens[:, None]
        encoder_out, encoder_out_lens = self.encoder(x.permute(1, 0, 2), x_lens,
                                                     src_key_padding_mask)
        encoder_out = encoder_out.permute(1, 0, 2)
        assert torch.all(encoder_out_lens > 0), (x_lens, encoder_out_lens)
        return encoder_out, encoder_out_lens

    def get_init_states(self, batch_size: int = 1,
                        device: torch.device = torch.device("cpu")) -> List[Tensor]:
        """Streaming state of a causal model (icefall's streaming_decode.get_init_states):
        the encoder's caches (6 per layer), the embed's left pad, and
        processed_lens [N] int32 (frames done at 50 Hz)."""
        return self.encoder.get_init_states(batch_size, device) + [
            self.encoder_embed.get_init_states(batch_size, device),
            torch.zeros(batch_size, dtype=torch.int32, device=device)]

    def streaming_forward(self, features: Tensor, feature_lens: Tensor,
                          states: List[Tensor]) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """One chunk of a causal model in eval mode (icefall's streaming_decode.streaming_forward).

        Args:
          features: [N, 2 * chunk + 13, 80]: the chunk's 2 * chunk fbank frames
            and 13 frames of look-ahead (padded with log(1e-10) at the end);
            chunk = encoder.chunk_size[0].
          feature_lens: [N] valid frames of `features`.
          states: from get_init_states() or the previous call (see stack_states).
        Returns:
          (encoder_out [N, chunk // 2, C], encoder_out_lens [N], new states).
        """
        left_context_len = self.encoder.left_context_frames[0]
        x, x_lens, embed_left_pad = self.encoder_embed.streaming_forward(features, feature_lens,
                                                                         states[-2])
        assert x.size(1) == self.encoder.chunk_size[0], (x.shape, self.encoder.chunk_size)
        processed_lens = states[-1]
        # Cache slots are valid once that many frames have been processed
        # (slot left_context_len - 1 holds the latest frame).
        slots = torch.arange(left_context_len, device=x.device).expand(x.size(0), -1)
        cache_mask = (processed_lens.unsqueeze(1) <= slots).flip(1)
        chunk_mask = torch.arange(x.size(1), device=x.device)[None, :] >= x_lens[:, None]
        encoder_out, encoder_out_lens, encoder_states = self.encoder.streaming_forward(
            x.permute(1, 0, 2), x_lens, states[:-2], torch.cat([cache_mask, chunk_mask], dim=1))
        return (encoder_out.permute(1, 0, 2), encoder_out_lens,
                encoder_states + [embed_left_pad, processed_lens + x_lens])

    def forward_ctc(self, encoder_out: Tensor, encoder_out_lens: Tensor, targets: Tensor,
                    target_lengths: Tensor) -> Tensor:
        """CTC loss summed over the batch; targets [sum(target_lengths)] concatenated
        (icefall's signature; :func:`icefall.ctc_loss.ctc_loss` does the work)."""
        from icefall.ctc_loss import ctc_loss

        y = [t.tolist() for t in targets.cpu().split(target_lengths.tolist())]
        return ctc_loss(self.ctc_output(encoder_out), encoder_out_lens, y, blank_id=self.blank_id)

    def forward_transducer(self, encoder_out: Tensor, encoder_out_lens: Tensor,
                           y: List[List[int]], prune_range: int = 5, am_scale: float = 0.0,
                           lm_scale: float = 0.0, rnnt_type: Optional[str] = None) -> Tuple[Tensor, Tensor]:
        """(simple_loss, pruned_loss), each summed over the batch (see forward())."""
        from icefall.transducer_loss import model_rnnt_type, pruned_transducer_loss

        return pruned_transducer_loss(
            self.decoder, self.joiner, self.simple_am_proj, self.simple_lm_proj, encoder_out,
            encoder_out_lens, y, prune_range=prune_range, am_scale=am_scale, lm_scale=lm_scale,
            reduction="sum", rnnt_type=rnnt_type or model_rnnt_type(self))

    def forward(self, x: Tensor, x_lens: Tensor, y: List[List[int]], prune_range: int = 5,
                am_scale: float = 0.0, lm_scale: float = 0.0,
                rnnt_type: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """
        Args:
          x: fbank [N, T, 80]; x_lens: [N] valid frames.
          y: N lists of token ids (no blank, no SOS), in place of icefall's
            k2.RaggedTensor.
          prune_range: symbols kept per frame for the pruned loss.
          am_scale, lm_scale: weights of the am-only / lm-only terms of the
            smoothed simple loss.
          rnnt_type: the transducer losses' topology, "regular" or "modified"
            (see icefall.transducer_loss); None: the model's own (its
            config's rnnt_type, which train.py sets).
        Returns:
          (simple_loss, pruned_loss, ctc_loss), each summed over the batch; a
          head the model lacks gives torch.empty(0), as in icefall.
        """
        assert x.ndim == 3 and x_lens.ndim == 1, (x.shape, x_lens.shape)
        assert x.size(0) == x_lens.size(0) == len(y), (x.shape, x_lens.shape, len(y))
        encoder_out, encoder_out_lens = self.forward_encoder(x, x_lens)
        simple_loss = pruned_loss = ctc_loss = torch.empty(0)
        if self.use_transducer:
            simple_loss, pruned_loss = self.forward_transducer(
                encoder_out, encoder_out_lens, y, prune_range=prune_range, am_scale=am_scale,
                lm_scale=lm_scale, rnnt_type=rnnt_type)
        if self.use_ctc:
            from icefall.ctc_loss import ctc_loss as ctc

            ctc_loss = ctc(self.ctc_output(encoder_out), encoder_out_lens, y, blank_id=self.blank_id)
        return simple_loss, pruned_loss, ctc_loss


def stack_states(state_list: List[List[Tensor]]) -> List[Tensor]:
    """Per-utterance streaming states (each for batch size 1 or more) -> one batch state."""
    num_layers = (len(state_list[0]) - 2) // 6
    # Batch dim of each layer state: key, nonlin_attn, val1, val2 -> 1; conv1, conv2 -> 0.
    dims = [1, 1, 1, 1, 0, 0] * num_layers + [0, 0]
    return [torch.cat([s[i] for s in state_list], dim=d) for i, d in enumerate(dims)]


def unstack_states(batch_states: List[Tensor]) -> List[List[Tensor]]:
    """Inverse of stack_states: one state list per utterance."""
    num_layers = (len(batch_states) - 2) // 6
    dims = [1, 1, 1, 1, 0, 0] * num_layers + [0, 0]
    batch_size = batch_states[-1].shape[0]
    pieces = [s.chunk(batch_size, dim=d) for s, d in zip(batch_states, dims)]
    return [[p[n] for p in pieces] for n in range(batch_size)]


def frames_after_subsampling(num_frames: int) -> int:
    """Encoder output frames for `num_frames` fbank frames: ((T - 7) // 2 + 1) // 2."""
    return ((num_frames - 7) // 2 + 1) // 2


def _int_list(value: str) -> List[int]:
    try:
        return [int(v) for v in str(value).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {value!r}")


def _int_list_flag(value: str) -> str:
    """argparse type: validates "a,b,c" but keeps the string, as icefall's flags are strings."""
    _int_list(value)
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Zipformer2's architecture flags, with icefall's names and defaults (its
    LibriSpeech model).  Files written by the recipe carry their config, which
    wins over these flags."""
    from icefall.utils import str2bool

    group = parser.add_argument_group("Zipformer model")
    for key, (default, help_text) in LIST_FLAGS.items():
        group.add_argument(f"--{key.replace('_', '-')}", type=_int_list_flag, default=default,
                           help=f"{help_text} (default: %(default)s)")
    for key, (default, help_text) in INT_FLAGS.items():
        group.add_argument(f"--{key.replace('_', '-')}", type=int, default=default,
                           help=f"{help_text} (default: %(default)s)")
    for key, (default, help_text) in BOOL_FLAGS.items():
        group.add_argument(f"--{key.replace('_', '-')}", type=str2bool, default=default,
                           help=f"{help_text} (default: %(default)s)")


def config_from_args(args: argparse.Namespace, vocab_size: int, blank_id: int = 0) -> Dict:
    """The JSON-able model config that the flags of add_model_arguments describe.

    Raises ValueError (naming the flags) if neither head is chosen.
    """
    config = {"feature_dim": FEATURE_DIM}
    config.update({key: _int_list(getattr(args, key)) for key in LIST_FLAGS})
    config.update({key: int(getattr(args, key)) for key in INT_FLAGS})
    config.update({key: bool(getattr(args, key)) for key in BOOL_FLAGS})
    config.update(vocab_size=int(vocab_size), blank_id=int(blank_id))
    config["rnnt_type"] = getattr(args, "rnnt_type", "regular")  # a training flag
    if not (config["use_transducer"] or config["use_ctc"]):
        raise ValueError("--use-transducer and --use-ctc are both false: enable at least one")
    return config


def default_config(vocab_size: int = 500, blank_id: int = 0) -> Dict:
    """icefall's default LibriSpeech Zipformer (BPE 500): transducer only, non-causal."""
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return config_from_args(parser.parse_args([]), vocab_size=vocab_size, blank_id=blank_id)


def build_model(config: Dict) -> AsrModel:
    """Build an AsrModel from a config (see config_from_args), as icefall's train.py
    get_model() does.  Raises ValueError naming missing or unknown keys."""
    config = {**LATER_KEYS, **config}
    missing = [k for k in CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if missing or unknown:
        raise ValueError(f"zipformer model config: missing keys {missing}, unknown keys "
                         f"{unknown}; expected {list(CONFIG_KEYS)}")
    c = config
    if not (c["use_transducer"] or c["use_ctc"]):
        raise ValueError("zipformer model config: use_transducer and use_ctc are both false")
    if c["rnnt_type"] not in ("regular", "modified"):
        raise ValueError(f"zipformer model config: rnnt_type must be 'regular' or 'modified', "
                         f"got {c['rnnt_type']!r}")
    encoder_dim = max(c["encoder_dim"])
    if len(c["embed_channels"]) != 4 or min(c["embed_channels"]) < 1:
        raise ValueError(f"zipformer model config: embed_channels needs 4 positive numbers, "
                         f"got {c['embed_channels']}")
    layer1, layer2, layer3, hidden = c["embed_channels"]
    encoder_embed = Conv2dSubsampling(in_channels=c["feature_dim"],
                                      out_channels=c["encoder_dim"][0],
                                      layer1_channels=layer1, layer2_channels=layer2,
                                      layer3_channels=layer3, convnext_hidden_channels=hidden,
                                      dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)))
    encoder = Zipformer2(
        output_downsampling_factor=2, downsampling_factor=tuple(c["downsampling_factor"]),
        num_encoder_layers=tuple(c["num_encoder_layers"]), encoder_dim=tuple(c["encoder_dim"]),
        encoder_unmasked_dim=tuple(c["encoder_unmasked_dim"]),
        query_head_dim=tuple(c["query_head_dim"]), pos_head_dim=tuple(c["pos_head_dim"]),
        value_head_dim=tuple(c["value_head_dim"]), pos_dim=c["pos_dim"],
        num_heads=tuple(c["num_heads"]), feedforward_dim=tuple(c["feedforward_dim"]),
        cnn_module_kernel=tuple(c["cnn_module_kernel"]),
        dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)), warmup_batches=4000.0,
        causal=c["causal"], chunk_size=tuple(c["chunk_size"]),
        left_context_frames=tuple(c["left_context_frames"]))
    decoder = joiner = None
    if c["use_transducer"]:
        decoder = Decoder(vocab_size=c["vocab_size"], decoder_dim=c["decoder_dim"],
                          blank_id=c["blank_id"], context_size=c["context_size"])
        joiner = Joiner(encoder_dim=encoder_dim, decoder_dim=c["decoder_dim"],
                        joiner_dim=c["joiner_dim"], vocab_size=c["vocab_size"])
    model = AsrModel(encoder_embed, encoder, decoder, joiner, encoder_dim=encoder_dim,
                     decoder_dim=c["decoder_dim"], vocab_size=c["vocab_size"],
                     use_transducer=c["use_transducer"], use_ctc=c["use_ctc"],
                     blank_id=c["blank_id"])
    model.config = dict(config)  # a plain attribute: saved beside, not inside, the state_dict
    return model

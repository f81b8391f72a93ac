#!/usr/bin/env python3
"""Export a causal (--causal 1) Zipformer for streaming in sherpa-onnx, fp32 and int8.

Usage, from egs/<dataset>/ASR:

  ./zipformer/export-onnx-streaming.py --exp-dir zipformer/exp \\
      --tokens data/lang_bpe_500/tokens.txt --epoch 30 --avg 9 \\
      --chunk-size 16 --left-context-frames 128

(or --checkpoint zipformer/exp/pretrained.pt) writes into --output-dir
(default: --exp-dir) encoder-chunk-16-left-128.onnx, decoder-...onnx,
joiner-...onnx, their *.int8.onnx versions and tokens.txt.  The layout is
icefall's export-onnx-streaming.py, which sherpa-onnx's online zipformer2
transducer reads:

  encoder: x [N, T, 80] (T = 2 * chunk + 13 fbank frames), then per layer
           cached_key_i, cached_nonlin_attn_i, cached_val1_i, cached_val2_i,
           cached_conv1_i, cached_conv2_i, then embed_states and
           processed_lens (int64) -> encoder_out [N, chunk // 2, joiner_dim]
           (encoder_proj applied) and new_<name> for every state;
           metadata model_type "zipformer2", decode_chunk_len, T,
           num_encoder_layers, encoder_dims, cnn_module_kernels,
           left_context_len (per stack), query_head_dims, value_head_dims,
           num_heads.
  decoder: y [N, context_size] int64 -> decoder_out [N, joiner_dim]
  joiner:  encoder_out, decoder_out [N, joiner_dim] -> logit [N, vocab]

Everything is written into a temporary folder inside --output-dir and moved
into place at the end, so a failed or killed export leaves the previous
files as they were, and every file carries the same random ``export_id`` in
its metadata (icefall/onnx_export.py).  Each graph is checked against
PyTorch with onnxruntime.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

RECIPE = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPE))
sys.path.insert(0, str(RECIPE.parents[3]))  # the repository root, for `icefall`

from icefall.threads import apply_num_threads, set_thread_env  # noqa: E402

set_thread_env()

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from icefall.checkpoint import CheckpointError, add_checkpoint_arguments  # noqa: E402
from icefall.onnx_export import (OPSET, add_metadata, check_close,  # noqa: E402
                                 export_decoder_and_joiner, export_graph, new_export_id,
                                 add_int8_versions, log_written, run_onnx, write_export)
from icefall.tokens import TokenFileError  # noqa: E402
from icefall.utils import str2bool  # noqa: E402
from icefall.onnx_decode import subsampling_metadata  # noqa: E402
from model import add_model_arguments, frames_after_subsampling  # noqa: E402
from scaling import SwooshL  # noqa: E402
from streaming_decode import import_export_onnx, load_streaming_model  # noqa: E402

PAD_FRAMES = 7 + 2 * 3  # look-ahead of the subsampling (Conv2d + ConvNeXt)
STATE_NAMES = ("cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2",
               "cached_conv1", "cached_conv2")
BATCH_DIM = (1, 1, 1, 1, 0, 0)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", type=Path, default=Path("zipformer/exp"),
                        help="where the checkpoints are (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where to write (default: --exp-dir)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a file with a 'model' state_dict; if given, --epoch/--iter/--avg "
                        "are not used (default: %(default)s)")
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="tokens.txt (default: %(default)s)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--opset", type=int, default=OPSET,
                        help="ONNX opset version (default: %(default)s)")
    parser.add_argument("--int8", type=str2bool, default=True,
                        help="also write *.int8.onnx (default: %(default)s)")
    parser.add_argument("--verbose", type=str2bool, default=False,
                        help="show onnxruntime's quantizer output (default: %(default)s)")
    add_model_arguments(parser)
    parser.epilog = ("--chunk-size and --left-context-frames take one value each here "
                     "(frames at 50 Hz, e.g. 16 and 128): the exported model's chunk and "
                     "left context.")
    return parser


class StreamingOnnxEncoder(nn.Module):
    """AsrModel.streaming_forward + the joiner's encoder_proj, states as separate tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.T = 2 * model.encoder.chunk_size[0] + PAD_FRAMES

    def forward(self, x: Tensor, *states: Tensor):
        # Every frame of a chunk is valid (as icefall's export): sherpa-onnx
        # pads the end of an utterance itself.
        x_lens = torch.ones_like(x[:, 0, 0], dtype=torch.int64) * self.T
        encoder_out, _, new_states = self.model.streaming_forward(x, x_lens, list(states))
        return (self.model.joiner.encoder_proj(encoder_out), *new_states)


def init_states(model: nn.Module, batch_size: int = 1) -> List[Tensor]:
    """The model's initial streaming states, processed_lens as int64 (sherpa-onnx's type)."""
    states = model.get_init_states(batch_size)
    return states[:-1] + [states[-1].to(torch.int64)]


def state_names(num_layers: int) -> List[str]:
    return [f"{n}_{i}" for i in range(num_layers) for n in STATE_NAMES] + \
        ["embed_states", "processed_lens"]


def encoder_metadata(model: nn.Module) -> Dict[str, object]:
    enc = model.encoder
    join = lambda xs: ",".join(str(int(v)) for v in xs)  # noqa: E731
    chunk, left = enc.chunk_size[0], enc.left_context_frames[0]
    return {
        "model_type": "zipformer2", "version": "1", "model_author": "icefall-pure-python",
        "comment": "streaming zipformer2",
        "decode_chunk_len": 2 * chunk, "T": 2 * chunk + PAD_FRAMES,
        "num_encoder_layers": join(enc.num_encoder_layers),
        "encoder_dims": join(enc.encoder_dim),
        "cnn_module_kernels": join(enc.cnn_module_kernel),
        "left_context_len": join(left // ds for ds in enc.downsampling_factor),
        "query_head_dims": join(enc.query_head_dim),
        "value_head_dims": join(enc.value_head_dim),
        "num_heads": join(enc.num_heads),
        # what icefall.onnx_decode checks in every encoder (the offline model's lengths)
        "feature_dim": 80, **subsampling_metadata(frames_after_subsampling),
    }


def for_onnx(model: nn.Module) -> nn.Module:
    """A copy of the model with Swoosh in ONNX-exportable form."""
    import copy

    OnnxSwoosh = import_export_onnx().OnnxSwoosh
    model = copy.deepcopy(model).eval()
    for name, m in list(model.named_modules()):
        if isinstance(m, SwooshL):  # SwooshR is a subclass
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, OnnxSwoosh(m.kind))
    return model


def export_encoder(model: nn.Module, path: Path, opset: int = OPSET,
                   metadata: Optional[Dict[str, object]] = None) -> None:
    """encoder.onnx of a causal model set to one chunk size and left context,
    with `metadata` added to icefall's; checked over 3 chunks of a batch of 2
    against PyTorch."""
    plain = for_onnx(model)
    num_layers = sum(model.encoder.num_encoder_layers)
    names = state_names(num_layers)
    dims = list(BATCH_DIM) * num_layers + [0, 0]
    axes = {"x": {0: "N"}, "encoder_out": {0: "N"}}
    for name, d in zip(names, dims):
        axes[name] = axes[f"new_{name}"] = {d: "N"}
    wrapper = StreamingOnnxEncoder(plain).eval()
    T = wrapper.T
    x = torch.randn(1, T, 80, generator=torch.Generator().manual_seed(0))
    export_graph(wrapper, (x, *init_states(model)), path, ["x"] + names,
                 ["encoder_out"] + [f"new_{n}" for n in names], axes, opset)
    add_metadata(path, {**encoder_metadata(model), **(metadata or {})})

    reference = StreamingOnnxEncoder(model).eval()
    g = torch.Generator().manual_seed(1)
    states_pt = states_ort = init_states(model, 2)
    with torch.no_grad():
        for c in range(3):
            x = torch.randn(2, T, 80, generator=g)
            want = reference(x, *states_pt)
            got = run_onnx(path, {"x": x, **dict(zip(names, states_ort))})
            check_close(got, list(want), f"{path} at chunk {c}")
            states_pt, states_ort = list(want[1:]), got[1:]


WORK_PREFIX = ".export-onnx-streaming-"


def export_streaming_onnx(model: nn.Module, out_dir: Path, opset: int = OPSET, int8: bool = True,
                          tokens: Optional[Path] = None, verbose: bool = False) -> Dict[str, Path]:
    """Write the encoder/decoder/joiner (and int8, tokens.txt) of a causal model
    into out_dir through a temporary folder (icefall.onnx_export.write_export).
    Returns {"encoder": path, ...}."""
    model = model.to("cpu").eval()
    enc = model.encoder
    if not enc.causal:
        raise ValueError("the model is not causal (--causal 1): it cannot stream")
    if model.encoder_embed.layer3_channels != 128:
        raise ValueError(f"sherpa-onnx's streaming recognizer needs 128 as the third value of "
                         f"--embed-channels (its embed_states are [N, 128, 3, 19]); this model "
                         f"has {model.encoder_embed.layer3_channels}")
    if len(enc.chunk_size) != 1 or len(enc.left_context_frames) != 1 or \
            enc.chunk_size[0] <= 0 or enc.left_context_frames[0] <= 0:
        raise ValueError(f"--chunk-size and --left-context-frames need one positive value each, "
                         f"got {enc.chunk_size} and {enc.left_context_frames}")
    suffix = f"chunk-{enc.chunk_size[0]}-left-{enc.left_context_frames[0]}"

    def write(work: Path) -> Dict[str, Path]:
        paths = {n: work / f"{n}-{suffix}.onnx" for n in ("encoder", "decoder", "joiner")}
        same = {"export_id": new_export_id()}  # in every file of this export
        export_encoder(model, paths["encoder"], opset, metadata=same)
        export_decoder_and_joiner(for_onnx(model), paths["decoder"], paths["joiner"], opset,
                                  reference=model, metadata=same)
        if int8:
            add_int8_versions(paths, verbose)
        return paths

    return write_export(out_dir, write, tokens=tokens, work_prefix=WORK_PREFIX)


def main(argv: Optional[list] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    apply_num_threads()
    try:
        model = load_streaming_model(args)[0]
        out_dir = args.output_dir or args.exp_dir
        paths = export_streaming_onnx(model, out_dir, opset=args.opset, int8=args.int8,
                                      tokens=args.tokens, verbose=args.verbose)
    except (CheckpointError, TokenFileError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log_written(paths.values())
    return 0


if __name__ == "__main__":
    sys.exit(main())

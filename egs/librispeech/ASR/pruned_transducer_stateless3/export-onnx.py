#!/usr/bin/env python3
"""Export the transducer to ONNX: encoder, decoder and joiner, fp32 and int8.

Usage, from egs/<dataset>/ASR, from checkpoints (the flags of export.py):

  ./pruned_transducer_stateless3/export-onnx.py \\
      --exp-dir pruned_transducer_stateless3/exp \\
      --tokens data/lang_bpe_500/tokens.txt \\
      --epoch 30 --avg 9

or from an exported pretrained.pt:

  ./pruned_transducer_stateless3/export-onnx.py \\
      --checkpoint pruned_transducer_stateless3/exp/pretrained.pt \\
      --tokens data/lang_bpe_500/tokens.txt \\
      --output-dir pruned_transducer_stateless3/exp

writes into --output-dir (default: --exp-dir) encoder.onnx, decoder.onnx,
joiner.onnx, their dynamically quantized encoder.int8.onnx, decoder.int8.onnx,
joiner.int8.onnx, and a copy of tokens.txt. The layout and metadata are those
of sherpa-onnx's offline transducer (as icefall's export-onnx.py writes them):

  encoder: x [N, T, 80], x_lens [N] -> encoder_out [N, T', joiner_dim]
           (encoder_proj applied), encoder_out_lens [N]
  decoder: y [N, context_size] int64 -> decoder_out [N, joiner_dim]
           (decoder_proj applied)
  joiner:  encoder_out [N, joiner_dim], decoder_out [N, joiner_dim] -> logit [N, vocab]

Decode with ./pruned_transducer_stateless3/onnx_pretrained.py or sherpa-onnx.
"""

import argparse
import copy
import logging
import sys
from pathlib import Path
from typing import Dict, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.threads import apply_num_threads, set_thread_env  # noqa: E402

set_thread_env()  # before torch is imported

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from icefall.checkpoint import add_checkpoint_arguments  # noqa: E402
from icefall.cli import check_inputs_exist, make_parser, run_main  # noqa: E402
from icefall.onnx_decode import subsampling_metadata  # noqa: E402
from icefall.onnx_export import (OPSET, add_metadata, check_close, example_features,  # noqa: E402
                                 export_decoder_and_joiner, export_graph, new_export_id,
                                 add_int8_versions, log_written, run_onnx, write_export)
from icefall.tokens import read_tokens  # noqa: E402
from icefall.utils import str2bool  # noqa: E402
from jit import TraceableEncoder, convert_scaled_to_plain  # noqa: E402
from model import add_model_arguments, load_model  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument("--exp-dir", type=Path, default=Path("pruned_transducer_stateless3/exp"),
                        help="where the checkpoints are (and the output, without --output-dir)")
    parser.add_argument("--output-dir", type=Path, default=None, help="where to write (None: --exp-dir)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an exported pretrained.pt; if given, --epoch/--iter/--avg are not used")
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="tokens.txt of the model (copied beside the ONNX files)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset version")
    parser.add_argument("--int8", type=str2bool, default=True, help="also write *.int8.onnx (true/false)")
    parser.add_argument("--verbose", type=str2bool, default=False,
                        help="show onnxruntime's quantizer output (true/false)")
    add_model_arguments(parser)
    return parser


class OnnxEncoder(nn.Module):
    """Conformer + the joiner's encoder_proj: (x, x_lens) -> (encoder_out [N, T', J], lens)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = TraceableEncoder(model.encoder)
        self.encoder_proj = model.joiner.encoder_proj

    def forward(self, x: Tensor, x_lens: Tensor):
        encoder_out, encoder_out_lens = self.encoder(x, x_lens)
        return self.encoder_proj(encoder_out), encoder_out_lens


def export_onnx(model: nn.Module, out_dir: Path, opset: int = OPSET, int8: bool = True,
                tokens: Optional[Path] = None, verbose: bool = False) -> Dict[str, Path]:
    """Write encoder/decoder/joiner .onnx (and .int8.onnx) of `model`, and a
    copy of `tokens`, into `out_dir`.

    Everything is written into a temporary folder inside `out_dir` and moved
    into place at the end (icefall.onnx_export.write_export): a failure or a
    kill before that leaves the previous export as it was, and the shared
    ``export_id`` in the metadata lets readers refuse a set mixed by a kill
    during the renames. Each graph is checked with onnx.checker, and run with
    onnxruntime against the PyTorch modules (rtol 1e-4) at lengths other
    than the traced one. `verbose` shows onnxruntime's quantizer output.
    Returns {"encoder": path, ..., "encoder.int8": path, ..., "tokens": path}.
    """
    return write_export(out_dir, lambda work: _write_onnx_files(model, work, opset, int8, verbose),
                        tokens=tokens)


def _write_onnx_files(model: nn.Module, out_dir: Path, opset: int, int8: bool,
                      verbose: bool) -> Dict[str, Path]:
    model = model.to("cpu").eval()
    # eval() on the wrapper too: torch.onnx.export restores the top module's
    # train/eval mode recursively, which would switch dropout on.
    plain = convert_scaled_to_plain(copy.deepcopy(model))
    encoder = OnnxEncoder(plain).eval()
    paths = {name: out_dir / f"{name}.onnx" for name in ("encoder", "decoder", "joiner")}
    export_id = new_export_id()  # shared by the files of this export

    x, x_lens = example_features(model.encoder.num_features, [100, 73])
    export_graph(encoder, (x, x_lens), paths["encoder"], ["x", "x_lens"],
                 ["encoder_out", "encoder_out_lens"],
                 {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "encoder_out": {0: "N", 1: "T"},
                  "encoder_out_lens": {0: "N"}}, opset)
    add_metadata(paths["encoder"], {
        "model_type": "conformer", "version": "1", "model_author": "icefall-pure-python",
        "comment": "pruned_transducer_stateless3", "feature_dim": model.encoder.num_features,
        **subsampling_metadata(model.frames_after_subsampling), "export_id": export_id,
    })
    # also checks both against the PyTorch model
    export_decoder_and_joiner(plain, paths["decoder"], paths["joiner"], opset, reference=model,
                              metadata={"export_id": export_id})
    check_onnx_against_torch(paths, model)

    if int8:
        add_int8_versions(paths, verbose)
    return paths


@torch.no_grad()
def check_onnx_against_torch(paths: Dict[str, Path], model: nn.Module, rtol: float = 1e-4) -> None:
    """Raise RuntimeError if onnxruntime's encoder outputs differ from the PyTorch model's."""
    for lens in ([37], [250, 111, 7]):
        x, x_lens = example_features(model.encoder.num_features, lens)
        encoder_out, encoder_out_lens = model.encoder(x, x_lens)
        check_close(tuple(run_onnx(paths["encoder"], {"x": x, "x_lens": x_lens})),
                    (model.joiner.encoder_proj(encoder_out), encoder_out_lens),
                    f"{paths['encoder']} at lengths {lens}", rtol)


def run(argv: Optional[list] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    apply_num_threads()
    inputs = {"--tokens": args.tokens}
    inputs.update({"--checkpoint": args.checkpoint} if args.checkpoint else {"--exp-dir": args.exp_dir})
    check_inputs_exist(__file__, inputs)
    tokens = read_tokens(args.tokens)
    model = load_model(args, tokens, args.tokens)
    out_dir = args.output_dir or args.exp_dir
    same_tokens = (out_dir / "tokens.txt").resolve() == args.tokens.resolve()
    paths = export_onnx(model, out_dir, opset=args.opset, int8=args.int8,
                        tokens=None if same_tokens else args.tokens, verbose=args.verbose)
    log_written(paths.values())
    return 0


def main(argv: Optional[list] = None) -> int:
    """The exit code: 0, or 2 after a one-line error (a bad file or flag)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

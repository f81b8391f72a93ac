#!/usr/bin/env python3
"""Export a non-streaming Zipformer to ONNX for sherpa-onnx, fp32 and int8.

Usage, from egs/<dataset>/ASR, from checkpoints:

  ./zipformer/export-onnx.py --exp-dir zipformer/exp \\
      --tokens data/lang_bpe_500/tokens.txt --epoch 30 --avg 9

or from a file with a "model" state_dict (and, for our files, its "config"):

  ./zipformer/export-onnx.py --checkpoint zipformer/exp/pretrained.pt \\
      --tokens data/lang_bpe_500/tokens.txt --output-dir zipformer/exp

writes into --output-dir (default: --exp-dir), with their *.int8.onnx versions
(MatMul weights quantised) and a copy of tokens.txt:

- a transducer head (--use-transducer): encoder.onnx, decoder.onnx and
  joiner.onnx, the layout of sherpa-onnx's offline transducer as icefall's
  zipformer/export-onnx.py writes it (encoder metadata model_type
  "zipformer2"):
    encoder: x [N, T, 80], x_lens [N] -> encoder_out [N, T', joiner_dim]
             (encoder_proj applied), encoder_out_lens [N]
    decoder: y [N, context_size] int64 -> decoder_out [N, joiner_dim]
    joiner:  encoder_out [N, joiner_dim], decoder_out [N, joiner_dim] -> logit [N, vocab]
- a CTC head (--use-ctc): ctc.onnx, as icefall's export-onnx-ctc.py
  (model_type "zipformer2_ctc"): x, x_lens -> log_probs [N, T', vocab],
  log_probs_len [N].

Every file carries the same random ``export_id`` in its metadata, and the
files are written into a temporary folder inside --output-dir and moved into
place at the end, so a failed or killed export leaves the previous one as it
was (icefall/onnx_export.py). Each graph is checked against PyTorch with
onnxruntime.

Decode with ./zipformer/onnx_pretrained.py (transducer),
./zipformer/onnx_pretrained_ctc.py (CTC), or sherpa-onnx.
"""

import argparse
import copy
import logging
import math
import sys
from pathlib import Path
from typing import Dict, Optional

RECIPE = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPE))
sys.path.insert(0, str(RECIPE.parents[3]))  # the repository root, for `icefall`

from icefall.threads import apply_num_threads, set_thread_env  # noqa: E402

set_thread_env()

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import model as recipe_model  # noqa: E402
from icefall.checkpoint import add_checkpoint_arguments  # noqa: E402
from icefall.cli import check_inputs_exist, make_parser, run_main  # noqa: E402
from icefall.model_loading import load_model as load_recipe_model  # noqa: E402
from icefall.onnx_decode import subsampling_metadata  # noqa: E402
from icefall.onnx_export import (OPSET, add_metadata, check_close, example_features,  # noqa: E402
                                 export_decoder_and_joiner, export_graph, new_export_id,
                                 add_int8_versions, log_written, run_onnx, write_export)
from icefall.tokens import read_tokens  # noqa: E402
from icefall.utils import str2bool  # noqa: E402
from model import add_model_arguments, frames_after_subsampling  # noqa: E402
from scaling import SWOOSH, SwooshL  # noqa: E402
from zipformer import (CompactRelPositionalEncoding, RelPositionMultiheadAttentionWeights,  # noqa: E402
                       SimpleDownsample)


def get_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument("--exp-dir", type=Path, default=Path("zipformer/exp"),
                        help="where the checkpoints are (and the output, without --output-dir)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where to write (None: --exp-dir)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a file with a 'model' state_dict (export.py's pretrained.pt, "
                        "icefall's); if given, --epoch/--iter/--avg are not used")
    parser.add_argument("--tokens", type=Path, default=Path("data/lang_bpe_500/tokens.txt"),
                        help="tokens.txt of the model (copied beside the ONNX files)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset version")
    parser.add_argument("--int8", type=str2bool, default=True,
                        help="also write *.int8.onnx (true/false)")
    parser.add_argument("--verbose", type=str2bool, default=False,
                        help="show onnxruntime's quantizer output (true/false)")
    add_model_arguments(parser)
    return parser


class OnnxSwoosh(nn.Module):
    """SwooshL/SwooshR with softplus as max(z, 0) + log1p(exp(-|z|)) (ONNX has no logaddexp)."""

    def __init__(self, kind: str):
        super().__init__()
        self.shift, self.offset = SWOOSH[kind]

    def forward(self, x: Tensor) -> Tensor:
        z = x - self.shift
        return z.clamp(min=0) + torch.log1p(torch.exp(-z.abs())) - 0.08 * x - self.offset


class OnnxPositionalEncoding(nn.Module):
    """CompactRelPositionalEncoding computed in the graph for the input's T
    (the eager module caches a table, which tracing would freeze)."""

    def __init__(self, m: CompactRelPositionalEncoding):
        super().__init__()
        self.embed_dim, self.length_factor = m.embed_dim, m.length_factor

    def forward(self, x: Tensor, left_context_len: int = 0) -> Tensor:
        T = x.size(0)
        pos = torch.arange(-(T - 1), T, device=x.device).to(torch.float32).unsqueeze(1)
        freqs = 1 + torch.arange(self.embed_dim // 2, device=x.device)
        c = self.embed_dim**0.5
        compressed = c * pos.sign() * ((pos.abs() + c).log() - math.log(c))
        angle = (compressed / (self.length_factor * self.embed_dim / (2.0 * math.pi))).atan()
        pe = torch.stack([(angle * freqs).cos(), (angle * freqs).sin()], dim=-1)
        pe = pe.reshape(-1, self.embed_dim)
        pe = torch.cat([pe[:, :-1], torch.ones_like(pe[:, :1])], dim=1)  # last channel: 1
        return pe.to(x.dtype).unsqueeze(0)


class OnnxDownsample(nn.Module):
    """SimpleDownsample with the padding (repeat the last frame) as a gather."""

    def __init__(self, m: SimpleDownsample):
        super().__init__()
        self.bias, self.downsample = m.bias, m.downsample

    def forward(self, src: Tensor) -> Tensor:
        seq_len, batch_size, channels = src.shape
        ds = self.downsample
        d_seq_len = (seq_len + ds - 1) // ds
        index = torch.arange(d_seq_len * ds, device=src.device).clamp(max=seq_len - 1)
        src = src.index_select(0, index).reshape(d_seq_len, ds, batch_size, channels)
        return (src * self.bias.softmax(dim=0).reshape(ds, 1, 1)).sum(dim=1)


class OnnxAttentionWeights(nn.Module):
    """RelPositionMultiheadAttentionWeights in eval, with the relative-to-absolute
    shift as a gather (as_strided strides would be frozen by tracing)."""

    def __init__(self, m: RelPositionMultiheadAttentionWeights):
        super().__init__()
        self.in_proj, self.linear_pos = m.in_proj, m.linear_pos
        self.num_heads, self.query_head_dim, self.pos_head_dim = \
            m.num_heads, m.query_head_dim, m.pos_head_dim

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        x = self.in_proj(x)
        seq_len, batch_size, _ = x.shape
        H, dq, dp = self.num_heads, self.query_head_dim, self.pos_head_dim
        q = x[..., : H * dq].reshape(seq_len, batch_size, H, dq).permute(2, 1, 0, 3)
        k = x[..., H * dq: 2 * H * dq].reshape(seq_len, batch_size, H, dq).permute(2, 1, 3, 0)
        p = x[..., 2 * H * dq:].reshape(seq_len, batch_size, H, dp).permute(2, 1, 0, 3)
        pos = self.linear_pos(pos_emb).reshape(-1, 2 * seq_len - 1, H, dp).permute(2, 0, 3, 1)
        pos_scores = p @ pos  # [H, N, T, 2T-1]; out[..., i, j] = pos_scores[..., i, T-1-i+j]
        t = torch.arange(seq_len, device=x.device)
        index = (seq_len - 1 - t).unsqueeze(1) + t.unsqueeze(0)  # [T, T]
        pos_scores = pos_scores.gather(3, index.expand(H, batch_size, seq_len, seq_len))
        attn_scores = q @ k + pos_scores
        if attn_mask is not None:
            attn_scores = attn_scores.masked_fill(attn_mask, -1000)
        if key_padding_mask is not None:
            attn_scores = attn_scores.masked_fill(key_padding_mask.unsqueeze(1), -1000)
        return attn_scores.softmax(dim=-1)


def convert_for_onnx(model: nn.Module) -> nn.Module:
    """A copy of the (eval-mode) model with the modules above swapped in."""
    model = copy.deepcopy(model).eval()
    swaps = {CompactRelPositionalEncoding: OnnxPositionalEncoding, SimpleDownsample: OnnxDownsample,
             RelPositionMultiheadAttentionWeights: OnnxAttentionWeights}
    for name, m in list(model.named_modules()):
        if isinstance(m, SwooshL):  # SwooshR is a subclass
            new = OnnxSwoosh(m.kind)
        elif type(m) in swaps:
            new = swaps[type(m)](m)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model.eval()


class OnnxEncoder(nn.Module):
    """forward_encoder + the joiner's encoder_proj: (x, x_lens) -> ([N, T', J], lens)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, x_lens: Tensor):
        encoder_out, encoder_out_lens = self.model.forward_encoder(x, x_lens)
        return self.model.joiner.encoder_proj(encoder_out), encoder_out_lens


class OnnxCtc(nn.Module):
    """forward_encoder + the CTC head: (x, x_lens) -> (log_probs [N, T', V], lens)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, x_lens: Tensor):
        encoder_out, encoder_out_lens = self.model.forward_encoder(x, x_lens)
        return self.model.ctc_output(encoder_out), encoder_out_lens


def _export_encoder_like(module: nn.Module, reference: nn.Module, path: Path, outputs,
                         meta: Dict[str, object], opset: int) -> None:
    """Export (x, x_lens) -> outputs, add metadata, check at lengths other than the traced one."""
    x, x_lens = example_features(80, [100, 73])
    axes = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, outputs[0]: {0: "N", 1: "T"},
            outputs[1]: {0: "N"}}
    export_graph(module, (x, x_lens), path, ["x", "x_lens"], list(outputs), axes, opset)
    add_metadata(path, meta)
    with torch.no_grad():
        for lens in ([37], [250, 111, 45]):
            x, x_lens = example_features(80, lens)
            check_close(run_onnx(path, {"x": x, "x_lens": x_lens}), reference(x, x_lens),
                        f"{path} at lengths {lens}")


def export_onnx(model: nn.Module, out_dir: Path, opset: int = OPSET, int8: bool = True,
                tokens: Optional[Path] = None, verbose: bool = False) -> Dict[str, Path]:
    """Write the .onnx files of `model`'s heads (see the module docstring) and a
    copy of `tokens` into `out_dir`, through a temporary folder
    (icefall.onnx_export.write_export); each is checked against the PyTorch
    model with onnxruntime.  `verbose` shows onnxruntime's quantizer output.
    Returns {"encoder": path, ..., "ctc": path, "encoder.int8": path, ..., "tokens": path}."""
    return write_export(out_dir, lambda work: _write_onnx_files(model, work, opset, int8, verbose),
                        tokens=tokens)


def _write_onnx_files(model: nn.Module, out_dir: Path, opset: int, int8: bool,
                      verbose: bool) -> Dict[str, Path]:
    model = model.to("cpu").eval()
    plain = convert_for_onnx(model)
    paths = {}
    export_id = new_export_id()  # shared by the files of this export
    common = {"version": "1", "model_author": "icefall-pure-python", "export_id": export_id,
              "feature_dim": 80, **subsampling_metadata(frames_after_subsampling)}
    if model.use_transducer:
        paths["encoder"] = out_dir / "encoder.onnx"
        _export_encoder_like(OnnxEncoder(plain), OnnxEncoder(model), paths["encoder"],
                             ("encoder_out", "encoder_out_lens"),
                             {"model_type": "zipformer2", **common,
                              "comment": "non-streaming zipformer2"}, opset)
        paths["decoder"], paths["joiner"] = out_dir / "decoder.onnx", out_dir / "joiner.onnx"
        export_decoder_and_joiner(plain, paths["decoder"], paths["joiner"], opset,
                                  reference=model, metadata={"export_id": export_id})
    if model.use_ctc:
        paths["ctc"] = out_dir / "ctc.onnx"
        _export_encoder_like(OnnxCtc(plain), OnnxCtc(model), paths["ctc"],
                             ("log_probs", "log_probs_len"),
                             {"model_type": "zipformer2_ctc", **common,
                              "comment": "non-streaming zipformer2 CTC"}, opset)
    if int8:
        add_int8_versions(paths, verbose)
    return paths


def load_model(args, tokens) -> nn.Module:
    """The model --checkpoint or --exp-dir --epoch/--iter/--avg select, in eval
    mode (icefall.model_loading: its config from the file, else from the size
    flags; shapes checked before allocating)."""
    return load_recipe_model(recipe_model, args, tokens, args.tokens)


def run(argv: Optional[list] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    apply_num_threads()
    inputs = {"--tokens": args.tokens}
    inputs.update({"--checkpoint": args.checkpoint} if args.checkpoint else {"--exp-dir": args.exp_dir})
    check_inputs_exist(__file__, inputs)
    tokens = read_tokens(args.tokens)
    model = load_model(args, tokens)
    paths = export_onnx(model, args.output_dir or args.exp_dir, opset=args.opset,
                        int8=args.int8, tokens=args.tokens, verbose=args.verbose)
    log_written(paths.values())
    return 0


def main(argv: Optional[list] = None) -> int:
    """The exit code: 0, or 2 after a one-line error (a bad file or flag)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

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
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.checkpoint import add_checkpoint_arguments  # noqa: E402
from icefall.cli import check_inputs_exist, make_parser, run_main  # noqa: E402
from icefall.tokens import read_tokens  # noqa: E402
from icefall.utils import str2bool  # noqa: E402
from jit import TraceableEncoder, check_close, convert_scaled_to_plain, example_features  # noqa: E402
from icefall.onnx_decode import subsampling_metadata  # noqa: E402
from model import add_model_arguments, frames_after_subsampling, load_model  # noqa: E402

OPSET = 17


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


class OnnxDecoder(nn.Module):
    """Decoder + the joiner's decoder_proj: y [N, context_size] -> [N, J]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = model.decoder
        self.decoder_proj = model.joiner.decoder_proj

    def forward(self, y: Tensor) -> Tensor:
        return self.decoder_proj(self.decoder(y, need_pad=False).squeeze(1))


class OnnxJoiner(nn.Module):
    """(encoder_out [N, J], decoder_out [N, J]) -> logit [N, vocab], inputs already projected."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.output_linear = model.joiner.output_linear

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


def add_metadata(path: Path, meta: Dict[str, str]) -> None:
    """Store key/value strings in the model's metadata_props (in place)."""
    import onnx

    model = onnx.load(str(path))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def _export(module: nn.Module, args, path: Path, input_names, output_names,
            dynamic_axes, opset: int) -> None:
    with warnings.catch_warnings():
        # tracer warnings about asserts and Python ints that do not shape the graph
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes)


def export_onnx(model: nn.Module, out_dir: Path, opset: int = OPSET, int8: bool = True,
                tokens: Optional[Path] = None, verbose: bool = False) -> Dict[str, Path]:
    """Write encoder/decoder/joiner .onnx (and .int8.onnx) of `model`, and a
    copy of `tokens`, into `out_dir`.

    Everything is written into a temporary folder inside `out_dir` and moved
    into place at the end, each file by an atomic rename: a failure or a
    kill before that leaves the previous export as it was, and the shared
    ``export_id`` in the metadata lets readers refuse a set mixed by a kill
    during the renames. Each graph is checked with onnx.checker, and run with
    onnxruntime against the PyTorch modules (rtol 1e-4) at lengths other
    than the traced one. `verbose` shows onnxruntime's quantizer output.
    Returns {"encoder": path, ..., "encoder.int8": path, ..., "tokens": path}.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_work_dirs(out_dir)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{WORK_PREFIX}{os.getpid()}-"))
    try:
        paths = _write_onnx_files(model, work, opset, int8, verbose)
        if tokens is not None:
            paths["tokens"] = work / "tokens.txt"
            shutil.copyfile(tokens, paths["tokens"])
        final = {}
        for name, path in paths.items():
            final[name] = out_dir / path.name
            os.replace(path, final[name])
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


WORK_PREFIX = ".export-onnx-"


def remove_abandoned_work_dirs(out_dir: Path) -> None:
    """Delete the temporary folders of killed export-onnx.py runs (their pid is gone)."""
    for d in out_dir.glob(f"{WORK_PREFIX}*"):
        pid = d.name[len(WORK_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _quiet(verbose: bool):
    """Silence onnxruntime's quantizer (its log lines and prints) unless verbose."""
    if verbose:
        yield
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as null, redirect_stdout(null), redirect_stderr(null):
            yield
    finally:
        root.setLevel(level)


def _write_onnx_files(model: nn.Module, out_dir: Path, opset: int, int8: bool,
                      verbose: bool) -> Dict[str, Path]:
    import onnx

    model = model.to("cpu").eval()
    # eval() on the wrappers too: torch.onnx.export restores the top module's
    # train/eval mode recursively, which would switch dropout on.
    plain = convert_scaled_to_plain(copy.deepcopy(model))
    encoder, decoder, joiner = (m(plain).eval() for m in (OnnxEncoder, OnnxDecoder, OnnxJoiner))
    c = model.decoder.context_size
    joiner_dim = model.joiner.output_linear.in_features
    paths = {name: out_dir / f"{name}.onnx" for name in ("encoder", "decoder", "joiner")}

    x, x_lens = example_features(model.encoder.num_features, [100, 73])
    _export(encoder, (x, x_lens), paths["encoder"], ["x", "x_lens"],
            ["encoder_out", "encoder_out_lens"],
            {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "encoder_out": {0: "N", 1: "T"},
             "encoder_out_lens": {0: "N"}}, opset)
    y = torch.tensor([[-1] * (c - 1) + [model.decoder.blank_id], [1] * c], dtype=torch.int64)
    _export(decoder, (y,), paths["decoder"], ["y"], ["decoder_out"],
            {"y": {0: "N"}, "decoder_out": {0: "N"}}, opset)
    e, d = torch.randn(11, joiner_dim), torch.randn(11, joiner_dim)
    _export(joiner, (e, d), paths["joiner"], ["encoder_out", "decoder_out"], ["logit"],
            {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}}, opset)

    export_id = uuid.uuid4().hex  # shared by the three files of this export
    add_metadata(paths["encoder"], {
        "model_type": "conformer", "version": "1", "model_author": "icefall-pure-python",
        "comment": "pruned_transducer_stateless3", "feature_dim": model.encoder.num_features,
        **subsampling_metadata(frames_after_subsampling), "export_id": export_id,
    })
    add_metadata(paths["decoder"], {
        "context_size": c, "vocab_size": model.decoder.vocab_size,
        "blank_id": model.decoder.blank_id, "export_id": export_id,
    })
    add_metadata(paths["joiner"], {"joiner_dim": joiner_dim, "export_id": export_id})

    for name, path in paths.items():
        onnx.checker.check_model(onnx.load(str(path)))
    check_onnx_against_torch(paths, model)

    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for name in ("encoder", "decoder", "joiner"):
            q = out_dir / f"{name}.int8.onnx"
            # Linear layers (MatMul) only, as icefall does. Unsigned weights:
            # with int8 weights (U8S8), x86 CPUs without VNNI (e.g. AVX2 only)
            # saturate intermediate sums; on this test model that made the
            # joiner's logits 18% off instead of 0.5%.
            with _quiet(verbose):
                quantize_dynamic(model_input=str(paths[name]), model_output=str(q),
                                 op_types_to_quantize=["MatMul"], weight_type=QuantType.QUInt8)
            onnx.checker.check_model(onnx.load(str(q)))
            paths[f"{name}.int8"] = q
    return paths


@torch.no_grad()
def check_onnx_against_torch(paths: Dict[str, Path], model: nn.Module, rtol: float = 1e-4) -> None:
    """Raise RuntimeError if onnxruntime's outputs differ from the PyTorch model's."""
    import onnxruntime as ort

    def run(name, feeds):
        sess = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(a) for a in sess.run(None, {k: v.numpy() for k, v in feeds.items()})]

    joiner = model.joiner
    for lens in ([37], [250, 111, 7]):
        x, x_lens = example_features(model.encoder.num_features, lens)
        encoder_out, encoder_out_lens = model.encoder(x, x_lens)
        check_close(tuple(run("encoder", {"x": x, "x_lens": x_lens})),
                    (joiner.encoder_proj(encoder_out), encoder_out_lens),
                    f"{paths['encoder']} at lengths {lens}", rtol)
    c, v = model.decoder.context_size, model.decoder.vocab_size
    y = torch.randint(-1, v, (7, c), generator=torch.Generator().manual_seed(0))
    check_close(run("decoder", {"y": y})[0],
                joiner.decoder_proj(model.decoder(y, need_pad=False)).squeeze(1),
                str(paths["decoder"]), rtol)
    j = joiner.output_linear.in_features
    e, d = torch.randn(5, j), torch.randn(5, j)
    check_close(run("joiner", {"encoder_out": e, "decoder_out": d})[0],
                joiner(e, d, project_input=False), str(paths["joiner"]), rtol)


def run(argv: Optional[list] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    inputs = {"--tokens": args.tokens}
    inputs.update({"--checkpoint": args.checkpoint} if args.checkpoint else {"--exp-dir": args.exp_dir})
    check_inputs_exist(__file__, inputs)
    tokens = read_tokens(args.tokens)
    model = load_model(args, tokens, args.tokens)
    out_dir = args.output_dir or args.exp_dir
    same_tokens = (out_dir / "tokens.txt").resolve() == args.tokens.resolve()
    paths = export_onnx(model, out_dir, opset=args.opset, int8=args.int8,
                        tokens=None if same_tokens else args.tokens, verbose=args.verbose)
    for path in paths.values():
        logging.info(f"wrote {path}: {path.stat().st_size / 2**20:.1f} MB")
    return 0


def main(argv: Optional[list] = None) -> int:
    """The exit code: 0, or 2 after a one-line error (a bad file or flag)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

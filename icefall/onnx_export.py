"""What every recipe's export-onnx.py does the same way: export a module by
tracing, store sherpa-onnx's metadata, check the graph against PyTorch,
write the int8 version, and put the set of files in place at once.

    def write(work: Path) -> Dict[str, Path]:      # called with a temporary folder
        export_id = new_export_id()                 # the same in every file of the set
        export_graph(module, (x, x_lens), work / "encoder.onnx", ["x", "x_lens"],
                     ["encoder_out", "encoder_out_lens"], {"x": {0: "N", 1: "T"}, ...})
        add_metadata(work / "encoder.onnx", {"model_type": "zipformer2", "export_id": export_id})
        check_close(run_onnx(work / "encoder.onnx", {"x": x, "x_lens": x_lens}), want, "encoder")
        quantize_int8(work / "encoder.onnx", work / "encoder.int8.onnx")
        return {"encoder": work / "encoder.onnx", ...}

    paths = write_export(out_dir, write, tokens=Path("data/lang_bpe_500/tokens.txt"))

:func:`write_export` writes everything into a temporary folder inside
``out_dir`` and moves the files into place only at the end (each by an atomic
rename), so a failure, a full disk or a kill leaves the previous export as it
was; the ``export_id`` in every file's metadata lets readers
(:mod:`icefall.onnx_decode`) refuse a set mixed by a kill during the renames.
"""

import logging
import math
import os
import shutil
import tempfile
import uuid
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from icefall.fsutil import megabytes, pid_alive

PathLike = Union[str, Path]
OPSET = 17


def export_graph(module: nn.Module, args: Tuple[Tensor, ...], path: PathLike,
                 input_names: List[str], output_names: List[str],
                 dynamic_axes: Dict[str, Dict[int, str]], opset: int = OPSET) -> None:
    """torch.onnx.export by tracing `module` (put in eval mode) on `args`;
    the result passes onnx.checker."""
    import onnx

    module.eval()
    with warnings.catch_warnings():
        # tracer warnings about asserts and Python ints that do not shape the graph
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes)
    onnx.checker.check_model(onnx.load(str(path)))


def add_metadata(path: PathLike, meta: Dict[str, object]) -> None:
    """Store key/value strings in the model's metadata_props (in place)."""
    import onnx

    model = onnx.load(str(path))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The metadata_props of an .onnx file as a dict."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def run_onnx(path: PathLike, feeds: Dict[str, Tensor]) -> List[Tensor]:
    """All outputs of the graph at `path` for the given named inputs (CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()})
    return [torch.from_numpy(a) for a in outs]


@torch.no_grad()
def check_close(got, want, what: str, rtol: float = 1e-4) -> None:
    """Raise RuntimeError if tensors (or tuples/lists of them) differ in shape,
    dtype, or by more than rtol relative to the largest |want|."""
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    for g, w in zip(got, want):
        if g.shape != w.shape or g.dtype != w.dtype:
            raise RuntimeError(f"{what}: shape/dtype {g.shape} {g.dtype} != {w.shape} {w.dtype}")
        if g.is_floating_point():
            tol = rtol * max(float(w.abs().max()), 1e-6)
            if not torch.allclose(g, w, rtol=rtol, atol=tol):
                raise RuntimeError(f"{what}: max abs diff {float((g - w).abs().max())} > {tol}")
        elif not torch.equal(g, w):
            raise RuntimeError(f"{what}: {g} != {w}")


@contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Silence log records below ERROR and all stdout/stderr output inside the
    block unless `verbose` (onnxruntime's quantizer prints about 44 lines)."""
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


def quantize_int8(src: PathLike, dst: PathLike, verbose: bool = False) -> None:
    """Dynamic int8 quantisation of the MatMul weights (as icefall does),
    keeping the metadata; the quantizer's output is shown only if `verbose`.
    Unsigned weights: with int8 weights (U8S8), x86 CPUs without VNNI (AVX2
    only) saturate intermediate sums, which made a test model's logits 18%
    off instead of 0.5%."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet(verbose):
        quantize_dynamic(model_input=str(src), model_output=str(dst),
                         op_types_to_quantize=["MatMul"], weight_type=QuantType.QUInt8)
    onnx.checker.check_model(onnx.load(str(dst)))


def add_int8_versions(paths: Dict[str, Path], verbose: bool = False) -> None:
    """For each ``name: <dir>/<stem>.onnx`` in `paths` (in order), write
    ``<dir>/<stem>.int8.onnx`` with :func:`quantize_int8` and add it to
    `paths` as ``name.int8``."""
    for name in list(paths):
        src = paths[name]
        paths[f"{name}.int8"] = src.with_name(f"{src.stem}.int8.onnx")
        quantize_int8(src, paths[f"{name}.int8"], verbose)


def log_written(paths: Iterable[Path]) -> None:
    """Log ``wrote <path>: <size> MB`` for each file of an export."""
    for path in paths:
        logging.info(f"wrote {path}: {megabytes(path):.1f} MB")


def new_export_id() -> str:
    """A random id (32 hex digits) for the metadata of every file of one export."""
    return uuid.uuid4().hex


WORK_PREFIX = ".export-onnx-"


def write_export(out_dir: PathLike, write: Callable[[Path], Dict[str, Path]],
                 tokens: Optional[PathLike] = None,
                 work_prefix: str = WORK_PREFIX) -> Dict[str, Path]:
    """Run ``write(work_dir)``, which writes the files of one export into the
    empty temporary folder ``work_dir`` and returns ``{name: path}``; copy
    `tokens` there as ``tokens.txt``; then move every file into `out_dir` by
    an atomic rename. On any error (or a kill) before the renames, `out_dir`
    keeps its previous files, and no temporary file is left behind (those of
    killed runs are removed by the next run).

    Returns:
      ``{name: out_dir / file name}`` (``"tokens"`` for the tokens copy).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_work_dirs(out_dir, work_prefix)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{work_prefix}{os.getpid()}-"))
    try:
        paths = dict(write(work))
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


def remove_abandoned_work_dirs(out_dir: Path, work_prefix: str = WORK_PREFIX) -> None:
    """Delete the temporary folders ``<work_prefix><pid>-*`` of killed runs
    (their process is gone)."""
    for d in out_dir.glob(f"{work_prefix}*"):
        pid = d.name[len(work_prefix):].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def example_features(num_features: int, lens: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """Random features [N, max(lens), F] padded with log(1e-10), as pretrained.py
    pads, and lens [N] int64 (seeded by sum(lens))."""
    g = torch.Generator().manual_seed(sum(lens))
    x = torch.full((len(lens), max(lens), num_features), math.log(1e-10))
    for i, n in enumerate(lens):
        x[i, :n] = torch.randn(n, num_features, generator=g)
    return x, torch.tensor(lens, dtype=torch.int64)


class OnnxDecoder(nn.Module):
    """A transducer's decoder + the joiner's decoder_proj: y [N, context_size] -> [N, J]."""

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


def export_decoder_and_joiner(model: nn.Module, decoder_path: PathLike, joiner_path: PathLike,
                              opset: int = OPSET, reference: Optional[nn.Module] = None,
                              rtol: float = 1e-4,
                              metadata: Optional[Dict[str, object]] = None) -> None:
    """decoder.onnx (y [N, context_size] int64 -> decoder_out [N, J]) and
    joiner.onnx (encoder_out, decoder_out [N, J] -> logit [N, vocab]) of a
    transducer (interfaces.md: model.decoder, model.joiner), with sherpa-onnx's
    metadata (context_size, vocab_size, blank_id; joiner_dim) and `metadata`
    (e.g. the export_id) in both, checked with onnxruntime against `reference`
    (default: `model`; e.g. the model before its modules were swapped for
    exportable ones)."""
    decoder, joiner = OnnxDecoder(model).eval(), OnnxJoiner(model).eval()
    c, vocab_size = model.decoder.context_size, model.decoder.vocab_size
    joiner_dim = model.joiner.output_linear.in_features
    y = torch.tensor([[-1] * (c - 1) + [model.decoder.blank_id], [1] * c], dtype=torch.int64)
    export_graph(decoder, (y,), decoder_path, ["y"], ["decoder_out"],
                 {"y": {0: "N"}, "decoder_out": {0: "N"}}, opset)
    e, d = torch.randn(11, joiner_dim), torch.randn(11, joiner_dim)
    export_graph(joiner, (e, d), joiner_path, ["encoder_out", "decoder_out"], ["logit"],
                 {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}}, opset)
    add_metadata(decoder_path, {"context_size": c, "vocab_size": vocab_size,
                                "blank_id": model.decoder.blank_id, **(metadata or {})})
    add_metadata(joiner_path, {"joiner_dim": joiner_dim, **(metadata or {})})

    reference = (reference or model).eval()
    with torch.no_grad():
        y = torch.randint(-1, vocab_size, (7, c), generator=torch.Generator().manual_seed(0))
        check_close(run_onnx(decoder_path, {"y": y}), OnnxDecoder(reference)(y),
                    str(decoder_path), rtol)
        e, d = torch.randn(5, joiner_dim), torch.randn(5, joiner_dim)
        check_close(run_onnx(joiner_path, {"encoder_out": e, "decoder_out": d}),
                    reference.joiner(e, d, project_input=False), str(joiner_path), rtol)

"""What every recipe's export-onnx.py does the same way: export a module by
tracing, store sherpa-onnx's metadata, check the graph against PyTorch, and
write the int8 version.

    export_graph(module, (x, x_lens), "encoder.onnx", ["x", "x_lens"],
                 ["encoder_out", "encoder_out_lens"], {"x": {0: "N", 1: "T"}, ...})
    add_metadata("encoder.onnx", {"model_type": "zipformer2", ...})
    check_close(run_onnx("encoder.onnx", {"x": x, "x_lens": x_lens}), want, "encoder.onnx")
    quantize_int8("encoder.onnx", "encoder.int8.onnx")
"""

import warnings
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

PathLike = Union[str, Path]
OPSET = 17


def export_graph(module: nn.Module, args: Tuple[Tensor, ...], path: PathLike,
                 input_names: List[str], output_names: List[str],
                 dynamic_axes: Dict[str, Dict[int, str]], opset: int = OPSET) -> None:
    """torch.onnx.export by tracing `module` (put in eval mode) on `args`."""
    module.eval()
    with warnings.catch_warnings():
        # tracer warnings about asserts and Python ints that do not shape the graph
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes)


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


def check_close(got: Sequence[Tensor], want: Sequence[Tensor], what: str,
                rtol: float = 1e-4) -> None:
    """Raise RuntimeError unless each pair has the same shape and
    max|got - want| <= rtol * max(1, max|want|)."""
    if isinstance(got, Tensor):
        got, want = [got], [want]
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = g.detach().cpu(), w.detach().cpu()
        if g.shape != w.shape:
            raise RuntimeError(f"{what}: output {i} has shape {tuple(g.shape)}, "
                               f"PyTorch gives {tuple(w.shape)}")
        if not g.is_floating_point():
            if not torch.equal(g.to(w.dtype), w):
                raise RuntimeError(f"{what}: output {i} differs from PyTorch's")
            continue
        err = (g.float() - w.float()).abs().max().item() if g.numel() else 0.0
        if err > rtol * max(1.0, w.abs().max().item() if w.numel() else 0.0):
            raise RuntimeError(f"{what}: output {i} differs from PyTorch's by {err:.3g}")


def quantize_int8(src: PathLike, dst: PathLike) -> None:
    """Dynamic int8 quantisation of the MatMul weights (as icefall does),
    keeping the metadata.  Unsigned weights: with int8 weights (U8S8), x86
    CPUs without VNNI (AVX2 only) saturate intermediate sums, which made a
    test model's logits 18% off instead of 0.5%."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model_input=str(src), model_output=str(dst),
                     op_types_to_quantize=["MatMul"], weight_type=QuantType.QUInt8)
    onnx.checker.check_model(onnx.load(str(dst)))


def example_features(num_features: int, lens: Sequence[int], seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Random fbank-like input [N, max(lens), F] padded with log(1e-10), and lens [N]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lens), max(lens), num_features, generator=gen)
    for i, n in enumerate(lens):
        x[i, n:] = -23.025850929940457
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
                              opset: int = OPSET, rtol: float = 1e-4) -> None:
    """decoder.onnx (y [N, context_size] int64 -> decoder_out [N, J]) and
    joiner.onnx (encoder_out, decoder_out [N, J] -> logit [N, vocab]) of a
    transducer (interfaces.md: model.decoder, model.joiner), with sherpa-onnx's
    metadata (context_size, vocab_size, blank_id; joiner_dim), checked
    against PyTorch."""
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
                                "blank_id": model.decoder.blank_id})
    add_metadata(joiner_path, {"joiner_dim": joiner_dim})

    with torch.no_grad():
        y = torch.randint(-1, vocab_size, (7, c), generator=torch.Generator().manual_seed(0))
        check_close(run_onnx(decoder_path, {"y": y}), [decoder(y)], str(decoder_path), rtol)
        e, d = torch.randn(5, joiner_dim), torch.randn(5, joiner_dim)
        check_close(run_onnx(joiner_path, {"encoder_out": e, "decoder_out": d}),
                    [model.joiner(e, d, project_input=False)], str(joiner_path), rtol)

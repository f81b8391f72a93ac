"""TorchScript export of the transducer: cpu_jit.pt, decodable without the Python model.

    export_jit(model, "exp/cpu_jit.pt")
    model = load_jit("exp/cpu_jit.pt")       # a ScriptModule
    encoder_out, encoder_out_lens = model.encoder(x, x_lens)
    hyps = decode_batch(model, encoder_out, encoder_out_lens, "greedy_search")

The file holds one scripted container with the attributes that
``icefall.beam_search`` uses: ``encoder(x, x_lens)``,
``decoder(y, need_pad=False)`` with ``decoder.blank_id`` and
``decoder.context_size``, and ``joiner(enc, dec, project_input=...)`` with
``joiner.encoder_proj`` and ``joiner.decoder_proj``.

The Conformer is traced, not scripted (its balancers and autograd Functions do
not script). Three parts of its eager forward depend on the input length in
ways that tracing would freeze to the length seen while tracing, so
:class:`TraceableEncoder` computes them with tensor ops instead:

- the padding mask: ``make_pad_mask`` turns ``lengths.max()`` into a Python int;
- the relative positional encodings: a table cached up to 5000 frames and
  sliced around its centre; here they are computed from ``arange(T)``;
- the relative shift of the attention scores: ``as_strided`` with strides
  computed from the input; here it is a ``gather``.

The same traceable encoder is what ``export-onnx.py`` exports.
"""

import copy
import logging
import math
import warnings
from pathlib import Path
from typing import Tuple, Union

import torch
from torch import Tensor, nn

from icefall.onnx_export import check_close, example_features  # noqa: F401  (moved there)

PathLike = Union[str, Path]


def rel_pos_emb(T: Tensor, d_model: int, like: Tensor) -> Tensor:
    """Relative positional encodings for positions T-1, ..., -(T-1).

    The same values as ``conformer.RelPositionalEncoding`` (channel 2k holds
    sin(p * w_k), channel 2k+1 cos(p * w_k), w_k = 10000**(-2k/d_model)), computed
    from ``T`` so that a traced graph follows the input length.

    Args:
      T: number of frames (a 0-dim tensor or an int traced from a size).
      d_model: channels C (even).
      like: a tensor whose dtype and device the result takes.
    Returns:
      [1, 2T-1, C].
    """
    positions = torch.arange(T - 1, -T, -1, dtype=torch.float32, device=like.device)
    freqs = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=like.device)
                      * -(math.log(10000.0) / d_model))
    angles = positions.unsqueeze(1) * freqs                       # [2T-1, C/2]
    # interleave: [sin w_0, cos w_0, sin w_1, ...]
    pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1)
    return pe.reshape(1, -1, d_model).to(like.dtype)


def rel_shift_gather(x: Tensor) -> Tensor:
    """[B, H, T, 2T-1] indexed by relative position -> [B, H, T, T].

    out[..., i, j] = x[..., i, T-1-i+j], as
    ``RelPositionMultiheadAttention._rel_shift``, but with a gather whose index
    follows T in a traced graph (the eager version uses ``as_strided``, whose
    strides tracing would freeze).
    """
    B, H, T, N = x.shape
    rows = torch.arange(T, device=x.device)
    index = rows.unsqueeze(0) - rows.unsqueeze(1) + (T - 1)     # [T, T]
    return torch.gather(x, 3, index.expand(B, H, T, T))


def convert_scaled_to_plain(module: nn.Module) -> nn.Module:
    """Replace the Scaled* layers of `module` (in place) by plain ones with the
    effective weights ``weight * weight_scale.exp()``.

    The outputs are the same (the product is what the Scaled layers compute on
    every call); the exported graphs then hold the weights as constants, which
    int8 quantization needs, and skip the per-call products. Returns `module`.
    """
    from scaling import ScaledConv1d, ScaledConv2d, ScaledEmbedding, ScaledLinear

    for name, child in list(module.named_children()):
        if isinstance(child, (ScaledLinear, ScaledConv1d, ScaledConv2d)):
            if isinstance(child, ScaledLinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            else:
                cls = nn.Conv1d if isinstance(child, ScaledConv1d) else nn.Conv2d
                plain = cls(child.in_channels, child.out_channels, child.kernel_size,
                            stride=child.stride, padding=child.padding, dilation=child.dilation,
                            groups=child.groups, bias=child.bias is not None)
            with torch.no_grad():
                plain.weight.copy_(child.get_weight())
                if child.bias is not None:
                    plain.bias.copy_(child.get_bias())
        elif isinstance(child, ScaledEmbedding):
            plain = nn.Embedding(child.num_embeddings, child.embedding_dim)
            with torch.no_grad():
                plain.weight.copy_(child.weight * child.scale.exp())
        else:
            convert_scaled_to_plain(child)
            continue
        setattr(module, name, plain.to(child.weight.device))
    return module


class TraceableEncoder(nn.Module):
    """The Conformer's inference forward with length-following ops.

    Uses the Conformer's own submodules (so its weights), in eval mode only.
    forward(x [B, T, F] float, x_lens [B] int64) ->
    (encoder_out [B, T', C], encoder_out_lens [B] int64),
    T' = output_frames(T, subsampling_factor), equal to the eager ``Conformer.forward``.
    """

    def __init__(self, conformer: nn.Module):
        super().__init__()
        conformer = convert_scaled_to_plain(copy.deepcopy(conformer)).eval()
        for layer in conformer.encoder.layers:
            # An instance attribute shadows the class's static method.
            layer.self_attn._rel_shift = rel_shift_gather
        self.encoder_embed = conformer.encoder_embed
        self.layers = conformer.encoder.layers
        self.d_model = conformer.d_model
        self.subsampling_factor = conformer.subsampling_factor
        self.eval()

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        x = self.encoder_embed(x)                                # [B, T', C]
        T = x.size(1)
        pos_emb = rel_pos_emb(T, self.d_model, x)
        from conformer import output_frames

        lengths = output_frames(x_lens, self.subsampling_factor)
        padding_mask = torch.arange(T, device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)
        x = x.permute(1, 0, 2)
        for layer in self.layers:
            x = layer(x, pos_emb, src_key_padding_mask=padding_mask)
        return x.permute(1, 0, 2), lengths


def trace_encoder(conformer: nn.Module, num_features: int = 80) -> torch.jit.ScriptModule:
    """Trace :class:`TraceableEncoder` and check it on lengths it was not traced with.

    Raises RuntimeError if the traced encoder differs from the eager one.
    """
    encoder = TraceableEncoder(conformer)
    x, x_lens = example_features(num_features, [100, 73])
    with torch.no_grad():
        traced = torch.jit.trace(encoder, (x, x_lens), check_trace=False)
    for lens in ([37], [150, 61, 7], [19, 19]):
        x, x_lens = example_features(num_features, lens)
        check_close(traced(x, x_lens), conformer(x, x_lens), f"encoder, lengths {lens}")
    return traced


class JitDecoder(nn.Module):
    """decoder(y [N, context_size] int64, need_pad=False) -> [N, 1, decoder_dim].

    Only the decoding form (``need_pad=False``) is supported.
    """

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.blank_id: int = int(decoder.blank_id)
        self.context_size: int = int(decoder.context_size)
        self.vocab_size: int = int(decoder.vocab_size)
        y = torch.tensor([[-1] * (self.context_size - 1) + [self.blank_id], [1] * self.context_size])
        with torch.no_grad():
            self.decoder = torch.jit.trace(_DecoderStep(decoder), (y,), check_trace=False)

    def forward(self, y: Tensor, need_pad: bool = False) -> Tensor:
        if need_pad:
            raise RuntimeError("cpu_jit.pt: the decoder supports need_pad=False only")
        return self.decoder(y)


class _DecoderStep(nn.Module):
    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, y: Tensor) -> Tensor:
        return self.decoder(y, need_pad=False)


class JitJoiner(nn.Module):
    """joiner(enc, dec, project_input=True) -> output_linear(tanh(enc + dec)) [..., vocab]."""

    def __init__(self, joiner: nn.Module):
        super().__init__()
        joiner_dim = joiner.output_linear.in_features
        with torch.no_grad():
            self.encoder_proj = torch.jit.trace(
                joiner.encoder_proj, torch.randn(3, joiner.encoder_proj.in_features))
            self.decoder_proj = torch.jit.trace(
                joiner.decoder_proj, torch.randn(3, joiner.decoder_proj.in_features))
            self.output_linear = torch.jit.trace(joiner.output_linear, torch.randn(3, joiner_dim))

    def forward(self, encoder_out: Tensor, decoder_out: Tensor,
                project_input: bool = True) -> Tensor:
        if project_input:
            logit = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            logit = encoder_out + decoder_out
        return self.output_linear(torch.tanh(logit))


class JitTransducer(nn.Module):
    """The scripted container: encoder, decoder and joiner (no training heads)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = trace_encoder(model.encoder, model.encoder.num_features)
        self.decoder = JitDecoder(model.decoder)
        self.joiner = JitJoiner(model.joiner)

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """Same as ``encoder``: (encoder_out [B, T', C], encoder_out_lens [B])."""
        return self.encoder(x, x_lens)

    @torch.jit.export
    def forward_encoder(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """As the eager model's: (encoder_out [B, T', C], encoder_out_lens [B])."""
        return self.encoder(x, x_lens)


def export_jit(model: nn.Module, path: PathLike) -> None:
    """Write a TorchScript file of `model` (a Transducer, on any device) to `path`.

    The file is for CPU; it is checked after writing: the loaded module's
    encoder, decoder and joiner must match the eager model.
    """
    model = copy.deepcopy(model).to("cpu").eval()
    plain = convert_scaled_to_plain(copy.deepcopy(model))
    with warnings.catch_warnings():
        # tracer warnings about asserts and Python ints that do not shape the graph
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(JitTransducer(plain))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        scripted.save(str(tmp))
        drop_debug_info(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    check_against_eager(load_jit(path), model)
    logging.info(f"export_jit: wrote {path}")


def drop_debug_info(path: PathLike) -> None:
    """Remove the ``*.debug_pkl`` members of a TorchScript archive (in place).

    They map the graph back to source lines, naming each source file by its
    absolute path (the repository's, the virtualenv's), which a shared model
    should not carry; the model loads and runs the same without them (only
    TorchScript error messages lose their source lines).
    """
    import zipfile

    path = Path(path)
    stripped = path.with_name(path.name + ".nodebug")
    try:
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(stripped, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                if not info.filename.endswith(".debug_pkl"):
                    zout.writestr(info, zin.read(info.filename))
        stripped.replace(path)
    finally:
        stripped.unlink(missing_ok=True)


def load_jit(path: PathLike, device: Union[str, torch.device] = "cpu") -> torch.jit.ScriptModule:
    """Load cpu_jit.pt; the result works with ``icefall.beam_search.decode_batch``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
        model = torch.jit.load(str(path), map_location=device)
    model.eval()
    return model


@torch.no_grad()
def check_against_eager(jit_model, model: nn.Module) -> None:
    """Raise RuntimeError if `jit_model`'s parts differ from the eager `model`'s."""
    x, x_lens = example_features(model.encoder.num_features, [57, 90, 31])
    check_close(jit_model.encoder(x, x_lens), model.encoder(x, x_lens), "cpu_jit.pt encoder")
    c = model.decoder.context_size
    y = torch.tensor([[-1] * (c - 1) + [model.decoder.blank_id], [1] * c,
                      [model.decoder.vocab_size - 1] * c])
    check_close(jit_model.decoder(y, need_pad=False), model.decoder(y, need_pad=False),
                "cpu_jit.pt decoder")
    enc = torch.randn(3, 1, 1, model.joiner.encoder_proj.out_features)
    dec = torch.randn(3, 1, 1, model.joiner.encoder_proj.out_features)
    check_close(jit_model.joiner(enc, dec, project_input=False),
                model.joiner(enc, dec, project_input=False), "cpu_jit.pt joiner")

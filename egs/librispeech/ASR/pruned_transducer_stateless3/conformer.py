"""The Conformer encoder of icefall's pruned_transducer_stateless2/3 (non-streaming).

Layout (and state_dict names) as in icefall:
  encoder_embed  Conv2dSubsampling: [B, T, F] -> [B, ((T-1)//2-1)//2, C]
                 (icefall's factor 4; factor 6 gives ((T-1)//2)//3 frames)
  encoder_pos    RelPositionalEncoding (no parameters)
  encoder.layers N x ConformerEncoderLayer, each:
      feed_forward_macaron -> self_attn (relative position) -> conv_module
      -> feed_forward -> balancer -> norm_final (BasicNorm),
      with the whole layer bypassed towards its input during warmup/layer
      dropout (training only).
"""

import copy
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from icefall.utils import make_pad_mask
from scaling import (
    ActivationBalancer,
    BasicNorm,
    DoubleSwish,
    ScaledConv1d,
    ScaledConv2d,
    ScaledLinear,
)

# Frame-rate reductions the front end supports (see output_frames).
SUBSAMPLING_FACTORS = (4, 6)


def output_frames(num_frames, subsampling_factor: int = 4):
    """Encoder frames for ``num_frames`` fbank frames (an int or an integer
    tensor): a 3x3 convolution with stride 2, then one with stride
    ``subsampling_factor // 2`` in time, both unpadded: ((T-1)//2 - 1)//2 for
    4, ((T-1)//2)//3 for 6. Below 1 (fewer than 7 frames) the input is too
    short for the model."""
    if subsampling_factor not in SUBSAMPLING_FACTORS:
        raise ValueError(f"subsampling_factor must be 4 or 6, got {subsampling_factor}")
    half = (num_frames - 1) >> 1  # shifts, as icefall's (they export to ONNX as such)
    return ((half - 1) >> 1) if subsampling_factor == 4 else half // 3


class Conformer(nn.Module):
    """Conformer encoder.

    Args:
      num_features: input feature dim F (e.g. 80 fbank bins).
      subsampling_factor: 4 (icefall's: one output frame per 40 ms of 10 ms
        fbank frames) or 6 (60 ms: a third fewer frames for the layers and
        the losses; the last convolution strides 3 in time instead of 2).
      d_model: attention/output dim C.
      nhead, dim_feedforward, num_encoder_layers: the usual.
      dropout: dropout rate inside layers and on positional encodings.
      layer_dropout: probability, in training, that a layer is mostly bypassed.
      cnn_module_kernel: depthwise conv kernel size (odd).
      subsampling_channels: channels of the three convolutions of
        Conv2dSubsampling (icefall: 8, 32, 128).
    """

    def __init__(self, num_features: int, subsampling_factor: int = 4,
                 d_model: int = 256, nhead: int = 4, dim_feedforward: int = 2048,
                 num_encoder_layers: int = 12, dropout: float = 0.1,
                 layer_dropout: float = 0.075, cnn_module_kernel: int = 31,
                 subsampling_channels: Sequence[int] = (8, 32, 128)):
        super().__init__()
        if subsampling_factor not in SUBSAMPLING_FACTORS:
            raise ValueError(f"subsampling_factor must be 4 or 6, got {subsampling_factor}")
        self.num_features = num_features
        self.subsampling_factor = subsampling_factor
        self.d_model = d_model
        self.encoder_embed = Conv2dSubsampling(num_features, d_model, *subsampling_channels,
                                               time_stride=subsampling_factor // 2)
        self.encoder_pos = RelPositionalEncoding(d_model, dropout)
        layer = ConformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                      layer_dropout, cnn_module_kernel)
        self.encoder = ConformerEncoder(layer, num_encoder_layers)

    def forward(self, x: Tensor, x_lens: Tensor,
                warmup: float = 1.0) -> Tuple[Tensor, Tensor]:
        """
        Args:
          x: features [B, T, F].
          x_lens: [B] int64, valid frames of each row of `x`.
          warmup: training progress; < 1 bypasses layers more (training only).
        Returns:
          (encoder_out [B, T', C], encoder_out_lens [B]) with
          T' = output_frames(T, subsampling_factor).
        """
        x = self.encoder_embed(x)
        x, pos_emb = self.encoder_pos(x)
        lengths = output_frames(x_lens, self.subsampling_factor)
        assert x.size(1) == int(lengths.max()), (x.shape, lengths)
        padding_mask = make_pad_mask(lengths, x.size(1))
        x = x.permute(1, 0, 2)  # layers work on [T, B, C]
        x = self.encoder(x, pos_emb, src_key_padding_mask=padding_mask, warmup=warmup)
        return x.permute(1, 0, 2), lengths


class ConformerEncoderLayer(nn.Module):
    """One Conformer block; src [T, B, C], pos_emb [1, 2T-1, C] -> [T, B, C]."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, layer_dropout: float = 0.075,
                 cnn_module_kernel: int = 31):
        super().__init__()
        self.layer_dropout = layer_dropout
        self.d_model = d_model
        self.self_attn = RelPositionMultiheadAttention(d_model, nhead, dropout=0.0)
        self.feed_forward = _feed_forward(d_model, dim_feedforward, dropout)
        self.feed_forward_macaron = _feed_forward(d_model, dim_feedforward, dropout)
        self.conv_module = ConvolutionModule(d_model, cnn_module_kernel)
        self.norm_final = BasicNorm(d_model)
        # keeps the layer output near zero-median and bounded
        self.balancer = ActivationBalancer(channel_dim=-1, min_positive=0.45,
                                           max_positive=0.55, max_abs=6.0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos_emb: Tensor,
                src_key_padding_mask: Optional[Tensor] = None,
                src_mask: Optional[Tensor] = None, warmup: float = 1.0) -> Tensor:
        """src_key_padding_mask: [B, T] True at padding; src_mask: [T, T] bool."""
        src_orig = src
        # alpha = 1 uses the layer fully, alpha -> 0 bypasses it.  Early in
        # training (warmup < 0.9) every layer is partly bypassed, and with
        # probability layer_dropout a layer is 90% bypassed.
        alpha = 1.0
        if self.training:
            if torch.rand(()).item() <= 1.0 - self.layer_dropout:
                alpha = min(0.1 + warmup, 1.0)
            else:
                alpha = 0.1

        src = src + self.dropout(self.feed_forward_macaron(src))
        att = self.self_attn(src, pos_emb, key_padding_mask=src_key_padding_mask,
                             attn_mask=src_mask)
        src = src + self.dropout(att)
        src = src + self.dropout(self.conv_module(src, src_key_padding_mask))
        src = src + self.dropout(self.feed_forward(src))
        src = self.norm_final(self.balancer(src))

        if alpha != 1.0:
            src = alpha * src + (1.0 - alpha) * src_orig
        return src


def _feed_forward(d_model: int, dim_feedforward: int, dropout: float) -> nn.Sequential:
    # Indices 0 and 4 are the linear layers: their names are in checkpoints.
    return nn.Sequential(
        ScaledLinear(d_model, dim_feedforward),
        ActivationBalancer(channel_dim=-1),
        DoubleSwish(),
        nn.Dropout(dropout),
        ScaledLinear(dim_feedforward, d_model, initial_scale=0.25),
    )


class ConformerEncoder(nn.Module):
    """A stack of `num_layers` copies of `encoder_layer`; [T, B, C] -> [T, B, C]."""

    def __init__(self, encoder_layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers

    def forward(self, src: Tensor, pos_emb: Tensor,
                src_key_padding_mask: Optional[Tensor] = None,
                mask: Optional[Tensor] = None, warmup: float = 1.0) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos_emb, src_key_padding_mask=src_key_padding_mask,
                        src_mask=mask, warmup=warmup)
        return src


class RelPositionalEncoding(nn.Module):
    """Sinusoidal encodings of relative positions T-1, T-2, ..., -(T-1).

    forward(x [B, T, C]) -> (dropout(x), dropout(pos_emb [1, 2T-1, C])).
    Row i of pos_emb encodes position T-1-i: channel 2k holds sin(p * w_k),
    channel 2k+1 cos(p * w_k), w_k = 10000**(-2k/C).  Nothing is stored in
    the state_dict; the table is cached and grown as needed.
    """

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000):
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout_rate)
        self.max_len = 0
        self.pe = torch.empty(0)  # [1, 2 * max_len - 1, C], centre = position 0
        self._extend(max_len, torch.empty(0))

    def _extend(self, length: int, like: Tensor) -> None:
        if length > self.max_len:
            positions = torch.arange(length - 1, -length, -1, dtype=torch.float32)
            freqs = torch.exp(torch.arange(0, self.d_model, 2, dtype=torch.float32)
                              * -(math.log(10000.0) / self.d_model))
            angles = positions.unsqueeze(1) * freqs
            pe = torch.zeros(2 * length - 1, self.d_model)
            pe[:, 0::2] = torch.sin(angles)
            pe[:, 1::2] = torch.cos(angles)
            self.pe = pe.unsqueeze(0)
            self.max_len = length
        if self.pe.dtype != like.dtype or self.pe.device != like.device:
            self.pe = self.pe.to(dtype=like.dtype, device=like.device)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        T = x.size(1)
        self._extend(T, x)
        centre = self.max_len - 1
        pos_emb = self.pe[:, centre - (T - 1): centre + T]
        return self.dropout(x), self.dropout(pos_emb)


class RelPositionMultiheadAttention(nn.Module):
    """Self-attention with Transformer-XL relative positions.

    score(i, j) = (q_i + u) . k_j + (q_i + v) . p_{i-j}, where q is already
    scaled by head_dim**-0.5, u = pos_bias_u * exp(pos_bias_u_scale) (same for
    v), and p = linear_pos(pos_emb).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        assert embed_dim % num_heads == 0, (embed_dim, num_heads)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj = ScaledLinear(embed_dim, 3 * embed_dim, bias=True)
        self.out_proj = ScaledLinear(embed_dim, embed_dim, bias=True, initial_scale=0.25)
        self.linear_pos = ScaledLinear(embed_dim, embed_dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.randn(num_heads, self.head_dim) * 0.01)
        self.pos_bias_v = nn.Parameter(torch.randn(num_heads, self.head_dim) * 0.01)
        self.pos_bias_u_scale = nn.Parameter(torch.zeros(()))
        self.pos_bias_v_scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, pos_emb: Tensor,
                key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
          x: [T, B, C]; pos_emb: [1, 2T-1, C] from RelPositionalEncoding.
          key_padding_mask: [B, T] bool, True = ignore that key.
          attn_mask: [T, T] bool, True = query i may not see key j.
        Returns: [T, B, C].
        """
        T, B, C = x.shape
        H, D = self.num_heads, self.head_dim
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q = (q * D**-0.5).reshape(T, B, H, D).transpose(0, 1)   # [B, T, H, D]
        k = k.reshape(T, B, H, D).permute(1, 2, 3, 0)            # [B, H, D, T]
        v = v.reshape(T, B * H, D).transpose(0, 1)               # [B*H, T, D]
        p = self.linear_pos(pos_emb).reshape(1, -1, H, D).permute(0, 2, 3, 1)

        u = self.pos_bias_u * self.pos_bias_u_scale.exp()
        w = self.pos_bias_v * self.pos_bias_v_scale.exp()
        content = torch.matmul((q + u).transpose(1, 2), k)        # [B, H, T, T]
        position = torch.matmul((q + w).transpose(1, 2), p)      # [B, H, T, 2T-1]
        scores = content + self._rel_shift(position)

        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, float("-inf"))
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores.reshape(B * H, T, T), dim=-1)
        weights = nn.functional.dropout(weights, p=self.dropout, training=self.training)
        out = torch.bmm(weights, v)                               # [B*H, T, D]
        out = out.transpose(0, 1).reshape(T, B, C)
        return self.out_proj(out)

    @staticmethod
    def _rel_shift(x: Tensor) -> Tensor:
        """[B, H, T, 2T-1] indexed by relative position -> [B, H, T, T].

        Column c of x holds position T-1-c, so out[i, j] = x[i, T-1-i+j].
        A strided view does this without copying: each row starts one
        element earlier than the last.
        """
        B, H, T, N = x.shape
        assert N == 2 * T - 1, x.shape
        x = x.contiguous()
        sb, sh, st, sn = x.stride()
        return x.as_strided((B, H, T, T), (sb, sh, st - sn, sn),
                            storage_offset=x.storage_offset() + sn * (T - 1))


class ConvolutionModule(nn.Module):
    """pointwise conv + GLU -> depthwise conv -> DoubleSwish -> pointwise conv.

    x: [T, B, C] -> [T, B, C].  Padded frames are zeroed before the
    depthwise conv so they do not leak into valid frames.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        assert kernel_size % 2 == 1, kernel_size
        self.pointwise_conv1 = ScaledConv1d(channels, 2 * channels, kernel_size=1,
                                            bias=bias)
        self.deriv_balancer1 = ActivationBalancer(channel_dim=1, max_abs=10.0,
                                                  min_positive=0.05, max_positive=1.0)
        self.depthwise_conv = ScaledConv1d(channels, channels, kernel_size,
                                           padding=(kernel_size - 1) // 2,
                                           groups=channels, bias=bias)
        self.deriv_balancer2 = ActivationBalancer(channel_dim=1, min_positive=0.05,
                                                  max_positive=1.0)
        self.activation = DoubleSwish()
        self.pointwise_conv2 = ScaledConv1d(channels, channels, kernel_size=1,
                                            bias=bias, initial_scale=0.25)

    def forward(self, x: Tensor, src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """src_key_padding_mask: [B, T] bool, True at padding."""
        x = x.permute(1, 2, 0)  # [B, C, T]
        x = self.deriv_balancer1(self.pointwise_conv1(x))
        x = nn.functional.glu(x, dim=1)
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        x = self.depthwise_conv(x)
        x = self.activation(self.deriv_balancer2(x))
        x = self.pointwise_conv2(x)
        return x.permute(2, 0, 1)


class Conv2dSubsampling(nn.Module):
    """Three 3x3 convs (the last two with stride 2; the last one's time
    stride is `time_stride`), then a linear layer.

    x: [B, T, F] -> [B, output_frames(T, 2 * time_stride), out_channels].
    Needs T, F >= 7. `conv` indices 0, 3, 6 are the conv layers (checkpoint
    names); the weights' shapes do not depend on `time_stride`.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 layer1_channels: int = 8, layer2_channels: int = 32,
                 layer3_channels: int = 128, time_stride: int = 2):
        super().__init__()
        assert in_channels >= 7, in_channels
        self.conv = nn.Sequential(
            ScaledConv2d(1, layer1_channels, kernel_size=3, padding=1),
            ActivationBalancer(channel_dim=1),
            DoubleSwish(),
            ScaledConv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2),
            ActivationBalancer(channel_dim=1),
            DoubleSwish(),
            ScaledConv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(time_stride, 2)),
            ActivationBalancer(channel_dim=1),
            DoubleSwish(),
        )
        freq_out = ((in_channels - 1) // 2 - 1) // 2
        self.out = ScaledLinear(layer3_channels * freq_out, out_channels)
        self.out_norm = BasicNorm(out_channels, learn_eps=False)
        self.out_balancer = ActivationBalancer(channel_dim=-1, min_positive=0.45,
                                               max_positive=0.55)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.unsqueeze(1))              # [B, C', T', F']
        b, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(b, t, c * f)  # channel-major per frame
        return self.out_balancer(self.out_norm(self.out(x)))

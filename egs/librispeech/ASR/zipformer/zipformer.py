"""Zipformer2, icefall's encoder (egs/librispeech/ASR/zipformer/zipformer.py), in plain PyTorch.

Layout (tensors are time-major [T, N, C] inside the encoder):

    Zipformer2: stacks at 50 Hz / downsampling_factor[i], each with its own dim
      Zipformer2Encoder (ds 1) or DownsampledZipformer2Encoder
        (SimpleDownsample -> Zipformer2Encoder -> SimpleUpsample -> out_combiner)
          CompactRelPositionalEncoding, Zipformer2EncoderLayer x num_layers
      _get_full_dim_output -> downsample_output (x2): [T', N, max(encoder_dim)]

A layer: feed_forward1, nonlin_attention, self_attn1, conv_module1,
feed_forward2, bypass_mid, self_attn2, conv_module2, feed_forward3, norm,
bypass; one set of attention weights (self_attn_weights) feeds all three
attention modules.  Training adds layer skipping, sequence dropout of whole
modules, feature masks, and gradient shaping (scaling_grad.py); none of it
runs in eval mode.  Causal models take chunk-wise attention masks and
chunk-causal convolutions (simulated streaming), or run chunk by chunk with
caches (streaming_forward / get_init_states).
Module and parameter names are icefall's, so its checkpoints load with strict=True.
"""

import copy
import math
import random
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from scaling import (ActivationDropoutAndLinear, BiasNorm, ChunkCausalDepthwiseConv1d,
                     Dropout2, FloatLike, ScaledLinear, ScheduledFloat, convert_num_channels)
from scaling_grad import Balancer, Whiten, limit_param_value, penalize_abs_values_gt


def _to_tuple(x: Union[int, Tuple[int, ...]], n: int) -> Tuple[int, ...]:
    """An int or 1-tuple repeated n times; an n-tuple as is."""
    x = (x,) if isinstance(x, int) else tuple(x)
    if len(x) == 1:
        return x * n
    assert len(x) == n, (x, n)
    return x


class Zipformer2(nn.Module):
    """The encoder: [T, N, encoder_dim[0]] at 50 Hz -> [(T+1)//2, N, max(encoder_dim)].

    Args (per-stack values take an int or a tuple with one entry per stack):
      output_downsampling_factor: must be 2.
      downsampling_factor: each stack's rate divisor, e.g. (1, 2, 4, 8, 4, 2).
      encoder_dim, num_encoder_layers, encoder_unmasked_dim (dims kept by the
        training-time feature masks), query_head_dim, pos_head_dim,
        value_head_dim, num_heads, feedforward_dim, cnn_module_kernel.
      pos_dim: dimension of the relative positional encoding.
      dropout: dropout rate or schedule (default 0.3 -> 0.1 over 20k batches).
      warmup_batches: layer-skip warm-up, spread over the stacks.
      causal: chunk-causal convolutions; enables chunk_size/left_context_frames.
      chunk_size, left_context_frames: candidates drawn per forward() when
        causal (-1: no chunking / unlimited left context).  To decode, set
        both to one value each, e.g. ``encoder.chunk_size = (16,)`` and
        ``encoder.left_context_frames = (64,)`` (streaming_forward uses [0]).
        With chunk_size -1 a causal model sees the whole utterance.
    """

    def __init__(self, output_downsampling_factor: int = 2,
                 downsampling_factor: Tuple[int, ...] = (2, 4),
                 encoder_dim: Union[int, Tuple[int, ...]] = 384,
                 num_encoder_layers: Union[int, Tuple[int, ...]] = 4,
                 encoder_unmasked_dim: Union[int, Tuple[int, ...]] = 256,
                 query_head_dim: Union[int, Tuple[int, ...]] = 24,
                 pos_head_dim: Union[int, Tuple[int, ...]] = 4,
                 value_head_dim: Union[int, Tuple[int, ...]] = 12,
                 num_heads: Union[int, Tuple[int, ...]] = 8,
                 feedforward_dim: Union[int, Tuple[int, ...]] = 1536,
                 cnn_module_kernel: Union[int, Tuple[int, ...]] = 31,
                 pos_dim: int = 192, dropout: Optional[FloatLike] = None,
                 warmup_batches: float = 4000.0, causal: bool = False,
                 chunk_size: Tuple[int, ...] = (-1,),
                 left_context_frames: Tuple[int, ...] = (-1,)):
        super().__init__()
        if dropout is None:
            dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1))
        n = len(downsampling_factor)
        self.output_downsampling_factor = output_downsampling_factor
        self.downsampling_factor = tuple(downsampling_factor)
        self.encoder_dim = encoder_dim = _to_tuple(encoder_dim, n)
        self.encoder_unmasked_dim = _to_tuple(encoder_unmasked_dim, n)
        self.num_encoder_layers = num_encoder_layers = _to_tuple(num_encoder_layers, n)
        self.query_head_dim = query_head_dim = _to_tuple(query_head_dim, n)
        self.value_head_dim = value_head_dim = _to_tuple(value_head_dim, n)
        pos_head_dim = _to_tuple(pos_head_dim, n)
        self.num_heads = num_heads = _to_tuple(num_heads, n)
        feedforward_dim = _to_tuple(feedforward_dim, n)
        self.cnn_module_kernel = cnn_module_kernel = _to_tuple(cnn_module_kernel, n)
        self.causal = causal
        self.chunk_size = tuple(chunk_size)
        self.left_context_frames = tuple(left_context_frames)
        assert all(u <= d for u, d in zip(self.encoder_unmasked_dim, encoder_dim))

        encoders = []
        for i, ds in enumerate(downsampling_factor):
            layer = Zipformer2EncoderLayer(
                embed_dim=encoder_dim[i], pos_dim=pos_dim, num_heads=num_heads[i],
                query_head_dim=query_head_dim[i], pos_head_dim=pos_head_dim[i],
                value_head_dim=value_head_dim[i], feedforward_dim=feedforward_dim[i],
                dropout=dropout, cnn_module_kernel=cnn_module_kernel[i], causal=causal)
            # Stack i's layers warm up (stop being skipped often) after the embed
            # and the earlier stacks have had their turn.
            encoder = Zipformer2Encoder(
                layer, num_encoder_layers[i], pos_dim=pos_dim, dropout=dropout,
                warmup_begin=warmup_batches * (i + 1) / (n + 1),
                warmup_end=warmup_batches * (i + 2) / (n + 1),
                final_layerdrop_rate=0.035 * (ds**0.5))
            if ds != 1:
                encoder = DownsampledZipformer2Encoder(
                    encoder, dim=encoder_dim[i], downsample=ds, dropout=dropout, causal=causal)
            encoders.append(encoder)
        self.encoders = nn.ModuleList(encoders)
        self.downsample_output = SimpleDownsample(
            max(encoder_dim), downsample=output_downsampling_factor, dropout=dropout,
            causal=causal)

    def get_feature_masks(self, x: Tensor) -> Union[List[float], List[Tensor]]:
        """Per-stack masks [1, N, C_i]: in training, on ~12.5% of sequences the
        channels above encoder_unmasked_dim are zeroed (half of them on another
        ~12.5%), consistently over all stacks; 1.0 in eval."""
        n = len(self.encoder_dim)
        if not self.training:
            return [1.0] * n
        _, batch_size, channels0 = x.shape
        assert channels0 == self.encoder_dim[0], (channels0, self.encoder_dim)
        p = 0.125
        mask1 = (torch.rand(1, batch_size, 1, device=x.device) > p).to(x.dtype)
        mask2 = torch.logical_and(
            mask1, (torch.rand(1, batch_size, 1, device=x.device) > p).to(x.dtype))
        masks = []
        for channels, u1 in zip(self.encoder_dim, self.encoder_unmasked_dim):
            mask = torch.ones(1, batch_size, channels, dtype=x.dtype, device=x.device)
            u2 = u1 + (channels - u1) // 2
            mask[:, :, u1:u2] *= mask1
            mask[:, :, u2:] *= mask2
            masks.append(mask)
        return masks

    def get_chunk_info(self) -> Tuple[int, int]:
        """(chunk_size, left_context_chunks) for this forward: drawn from the
        candidates if causal, (-1, -1) otherwise."""
        if not self.causal:
            return -1, -1
        chunk_size = random.choice(self.chunk_size)
        if chunk_size == -1:
            return -1, -1
        left_context_frames = random.choice(self.left_context_frames)
        if left_context_frames < 0:
            return chunk_size, -1  # unlimited left context
        return chunk_size, max(left_context_frames // chunk_size, 1)

    def forward(self, x: Tensor, x_lens: Tensor,
                src_key_padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """
        Args:
          x: [T, N, encoder_dim[0]], the embed's output (50 Hz).
          x_lens: [N] valid frames.
          src_key_padding_mask: [N, T], True at padding; may be None.
        Returns:
          ([(T+1)//2, N, max(encoder_dim)], lengths [N] = (x_lens + 1) // 2).
        """
        feature_masks = self.get_feature_masks(x)
        chunk_size, left_context_chunks = self.get_chunk_info()
        attn_mask = self._get_attn_mask(x, chunk_size, left_context_chunks)
        outputs = []
        for i, module in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            x = module(x, chunk_size=chunk_size, feature_mask=feature_masks[i],
                       src_key_padding_mask=(None if src_key_padding_mask is None
                                             else src_key_padding_mask[..., ::ds]),
                       attn_mask=attn_mask)
            outputs.append(x)
        x = self.downsample_output(self._get_full_dim_output(outputs))
        assert self.output_downsampling_factor == 2, self.output_downsampling_factor
        return x, (x_lens + 1) // 2

    def streaming_forward(self, x: Tensor, x_lens: Tensor, states: List[Tensor],
                          src_key_padding_mask: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """One chunk of a causal model (eval mode), carrying caches between chunks.

        Args:
          x: [T, N, encoder_dim[0]], the chunk at 50 Hz (T = chunk size).
          x_lens: [N] valid frames of the chunk.
          states: from get_init_states() or the previous call (6 per layer).
          src_key_padding_mask: [N, left_context_frames[0] + T], True at cache
            slots not yet filled and at padding.
        Returns:
          ([(T+1)//2, N, max(encoder_dim)], lengths (x_lens + 1) // 2, new states).
        """
        outputs, new_states, offset = [], [], 0
        for i, module in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            num = 6 * self.num_encoder_layers[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            x, layer_states = module.streaming_forward(
                x, states=states[offset: offset + num],
                left_context_len=self.left_context_frames[0] // ds,
                src_key_padding_mask=src_key_padding_mask[..., ::ds])
            offset += num
            outputs.append(x)
            new_states += layer_states
        x = self.downsample_output(self._get_full_dim_output(outputs))
        return x, (x_lens + 1) // 2, new_states

    def get_init_states(self, batch_size: int = 1,
                        device: torch.device = torch.device("cpu")) -> List[Tensor]:
        """Zero caches for streaming_forward, 6 per layer (icefall's layout):
        cached_key [left, N, heads * query_head_dim], cached_nonlin_attn
        [1, N, left, 3 * dim // 4], cached_val1 and cached_val2
        [left, N, heads * value_head_dim], cached_conv1 and cached_conv2
        [N, dim, kernel // 2]; left = left_context_frames[0] // ds of the stack."""
        states = []
        for i, ds in enumerate(self.downsampling_factor):
            dim, heads = self.encoder_dim[i], self.num_heads[i]
            left = self.left_context_frames[0] // ds
            for _ in range(self.num_encoder_layers[i]):
                states += [
                    torch.zeros(left, batch_size, self.query_head_dim[i] * heads, device=device),
                    torch.zeros(1, batch_size, left, 3 * dim // 4, device=device),
                    torch.zeros(left, batch_size, self.value_head_dim[i] * heads, device=device),
                    torch.zeros(left, batch_size, self.value_head_dim[i] * heads, device=device),
                    torch.zeros(batch_size, dim, self.cnn_module_kernel[i] // 2, device=device),
                    torch.zeros(batch_size, dim, self.cnn_module_kernel[i] // 2, device=device),
                ]
        return states

    def _get_attn_mask(self, x: Tensor, chunk_size: int,
                       left_context_chunks: int) -> Optional[Tensor]:
        """[T, T] bool (target, source), True where masked: sources in later
        chunks, or more than left_context_chunks chunks back. None if chunk_size <= 0."""
        if chunk_size <= 0:
            return None
        assert all(chunk_size % d == 0 for d in self.downsampling_factor), chunk_size
        if left_context_chunks >= 0:
            assert all(chunk_size * left_context_chunks >= (k // 2) * d for k, d in
                       zip(self.cnn_module_kernel, self.downsampling_factor)), \
                (chunk_size, left_context_chunks)
        else:
            left_context_chunks = 1000000
        c = torch.arange(x.shape[0], device=x.device) // chunk_size
        src_c, tgt_c = c, c.unsqueeze(-1)
        return (src_c > tgt_c) | (src_c < tgt_c - left_context_chunks)

    def _get_full_dim_output(self, outputs: List[Tensor]) -> Tensor:
        """[T, N, max(encoder_dim)]: each channel from the last stack that has it."""
        pieces = [outputs[-1]]
        cur_dim = self.encoder_dim[-1]
        for i in range(len(outputs) - 2, -1, -1):
            d = self.encoder_dim[i]
            if d > cur_dim:
                pieces.append(outputs[i][..., cur_dim:d])
                cur_dim = d
        assert cur_dim == max(self.encoder_dim)
        return torch.cat(pieces, dim=-1)


def _whitening_schedule(x: float, ratio: float = 2.0) -> ScheduledFloat:
    return ScheduledFloat((0.0, x), (20000.0, ratio * x), default=x)


class Zipformer2EncoderLayer(nn.Module):
    """One Zipformer2 block on [T, N, embed_dim] (see the module docstring)."""

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int,
                 pos_head_dim: int, value_head_dim: int, feedforward_dim: int,
                 dropout: FloatLike = 0.1, cnn_module_kernel: int = 31, causal: bool = False):
        super().__init__()
        self.embed_dim = embed_dim
        # Zipformer2Encoder replaces bypass.skip_rate with a per-layer schedule.
        self.bypass = BypassModule(embed_dim, skip_rate=ScheduledFloat(
            (0.0, 0.5), (4000.0, 0.02), default=0))
        self.bypass_mid = BypassModule(embed_dim)
        # Probabilities of dropping whole modules per sequence (training only).
        self.attention_skip_rate = ScheduledFloat(
            (0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        self.conv_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        self.ff2_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.ff3_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        # Probability of making the nonlin-attention weights uniform over the unmasked frames.
        self.const_attention_rate = ScheduledFloat((0.0, 0.25), (4000.0, 0.025), default=0)

        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim, pos_dim=pos_dim, num_heads=num_heads, query_head_dim=query_head_dim,
            pos_head_dim=pos_head_dim, dropout=0.0)
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Unused, but part of icefall's state_dict.
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.norm = BiasNorm(embed_dim)

        def balancer(min_positive, max_positive, min_abs, max_abs, prob=None):
            return Balancer(embed_dim, channel_dim=-1, min_positive=min_positive,
                            max_positive=max_positive, min_abs=min_abs, max_abs=max_abs,
                            prob=prob)

        self.balancer1 = balancer(0.45, 0.55, 0.2, 4.0)
        self.balancer_na = balancer(0.3, 0.7, ScheduledFloat((0.0, 0.004), (4000.0, 0.02)),
                                    100.0, prob=0.05)
        self.balancer_ff2 = balancer(0.3, 0.7, ScheduledFloat((0.0, 0.0), (4000.0, 0.1)),
                                     2.0, prob=0.05)
        self.balancer_ff3 = balancer(0.3, 0.7, ScheduledFloat((0.0, 0.0), (4000.0, 0.2)),
                                     4.0, prob=0.05)
        self.whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(4.0, ratio=3.0),
                             prob=(0.025, 0.25), grad_scale=0.01)
        self.balancer2 = balancer(0.45, 0.55, 0.1, 4.0)

    def _rate(self, rate: FloatLike) -> float:
        return float(rate) if self.training else 0.0

    def get_sequence_dropout_mask(self, x: Tensor, dropout_rate: float) -> Optional[Tensor]:
        """[N, 1] mask keeping each sequence with probability 1 - dropout_rate (training only)."""
        if dropout_rate == 0.0 or not self.training:
            return None
        return (torch.rand(x.shape[1], 1, device=x.device) > dropout_rate).to(x.dtype)

    def sequence_dropout(self, x: Tensor, dropout_rate: float) -> Tensor:
        mask = self.get_sequence_dropout_mask(x, dropout_rate)
        return x if mask is None else x * mask

    def forward(self, src: Tensor, pos_emb: Tensor, chunk_size: int = -1,
                attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
          src: [T, N, C].
          pos_emb: [1, 2T-1, pos_dim].
          chunk_size: frames per chunk for the causal convolutions; -1: none.
          attn_mask: [T, T] bool, True where a target frame may not see a source.
          src_key_padding_mask: [N, T] bool, True at padding.
        Returns: [T, N, C].
        """
        src_orig = src
        attn_weights = self.self_attn_weights(src, pos_emb=pos_emb, attn_mask=attn_mask,
                                              key_padding_mask=src_key_padding_mask)
        src = src + self.feed_forward1(src)

        attn_dropout_mask = self.get_sequence_dropout_mask(
            src, self._rate(self.attention_skip_rate))

        def attn_dropout(x: Tensor) -> Tensor:
            return x if attn_dropout_mask is None else x * attn_dropout_mask

        selected_attn_weights = attn_weights[0:1]
        if self.training and random.random() < float(self.const_attention_rate):
            # uniform weights over the frames each frame may attend to
            selected_attn_weights = (selected_attn_weights > 0.0).to(selected_attn_weights.dtype)
            selected_attn_weights = selected_attn_weights * (
                1.0 / selected_attn_weights.sum(dim=-1, keepdim=True))
        na = self.balancer_na(self.nonlin_attention(src, selected_attn_weights))
        src = src + attn_dropout(na)
        src = src + attn_dropout(self.self_attn1(src, attn_weights))
        src = src + self.sequence_dropout(
            self.conv_module1(src, chunk_size=chunk_size,
                              src_key_padding_mask=src_key_padding_mask),
            self._rate(self.conv_skip_rate))
        src = src + self.sequence_dropout(self.balancer_ff2(self.feed_forward2(src)),
                                          self._rate(self.ff2_skip_rate))
        src = self.bypass_mid(src_orig, src)

        src = src + attn_dropout(self.self_attn2(src, attn_weights))
        src = src + self.sequence_dropout(
            self.conv_module2(src, chunk_size=chunk_size,
                              src_key_padding_mask=src_key_padding_mask),
            self._rate(self.conv_skip_rate))
        src = src + self.sequence_dropout(self.balancer_ff3(self.feed_forward3(src)),
                                          self._rate(self.ff3_skip_rate))
        src = self.norm(self.balancer1(src))
        src = self.bypass(src_orig, src)
        return self.whiten(self.balancer2(src))

    def streaming_forward(self, src: Tensor, pos_emb: Tensor, cached_key: Tensor,
                          cached_nonlin_attn: Tensor, cached_val1: Tensor, cached_val2: Tensor,
                          cached_conv1: Tensor, cached_conv2: Tensor, left_context_len: int,
                          src_key_padding_mask: Tensor) -> Tuple[Tensor, ...]:
        """One chunk of a causal model, in eval mode.

        Args:
          src: [T, N, C], the chunk.
          pos_emb: [1, left_context_len + 2T - 1, pos_dim].
          cached_*: this layer's caches (see Zipformer2.get_init_states).
          src_key_padding_mask: [N, left_context_len + T], True at invalid frames.
        Returns:
          (output [T, N, C], then the six updated caches in the same order).
        """
        src_orig = src
        chunk_mask = src_key_padding_mask[:, left_context_len:]
        attn_weights, cached_key = self.self_attn_weights.streaming_forward(
            src, pos_emb=pos_emb, cached_key=cached_key, left_context_len=left_context_len,
            key_padding_mask=src_key_padding_mask)
        src = src + self.feed_forward1(src)
        na, cached_nonlin_attn = self.nonlin_attention.streaming_forward(
            src, attn_weights[0:1], cached_x=cached_nonlin_attn, left_context_len=left_context_len)
        src = src + na
        self_attn, cached_val1 = self.self_attn1.streaming_forward(
            src, attn_weights=attn_weights, cached_val=cached_val1,
            left_context_len=left_context_len)
        src = src + self_attn
        conv, cached_conv1 = self.conv_module1.streaming_forward(src, cache=cached_conv1,
                                                                 src_key_padding_mask=chunk_mask)
        src = src + conv
        src = src + self.feed_forward2(src)
        src = self.bypass_mid(src_orig, src)

        self_attn, cached_val2 = self.self_attn2.streaming_forward(
            src, attn_weights=attn_weights, cached_val=cached_val2,
            left_context_len=left_context_len)
        src = src + self_attn
        conv, cached_conv2 = self.conv_module2.streaming_forward(src, cache=cached_conv2,
                                                                 src_key_padding_mask=chunk_mask)
        src = src + conv
        src = src + self.feed_forward3(src)
        src = self.bypass(src_orig, self.norm(src))
        return (src, cached_key, cached_nonlin_attn, cached_val1, cached_val2, cached_conv1,
                cached_conv2)


class Zipformer2Encoder(nn.Module):
    """num_layers copies of `encoder_layer` sharing one positional encoding.

    Layer i is skipped in training with a probability falling from
    initial_layerdrop_rate to final_layerdrop_rate over its share of
    [warmup_begin, warmup_end] (batches).
    """

    def __init__(self, encoder_layer: nn.Module, num_layers: int, pos_dim: int,
                 dropout: FloatLike, warmup_begin: float, warmup_end: float,
                 initial_layerdrop_rate: float = 0.5, final_layerdrop_rate: float = 0.05):
        super().__init__()
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.15,
                                                        length_factor=1.0)
        # As icefall: the layers start as identical copies.
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        assert 0 <= warmup_begin <= warmup_end, (warmup_begin, warmup_end)
        delta = (warmup_end - warmup_begin) / num_layers
        for i, layer in enumerate(self.layers):
            begin = warmup_begin + i * delta
            layer.bypass.skip_rate = ScheduledFloat(
                (begin, initial_layerdrop_rate), (begin + delta, final_layerdrop_rate),
                default=0.0)

    def forward(self, src: Tensor, chunk_size: int = -1,
                feature_mask: Union[Tensor, float] = 1.0, attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """src: [T, N, C]; feature_mask broadcasts with src; masks as in the layer."""
        pos_emb = self.encoder_pos(src)
        output = src * feature_mask
        for layer in self.layers:
            output = layer(output, pos_emb, chunk_size=chunk_size, attn_mask=attn_mask,
                           src_key_padding_mask=src_key_padding_mask)
            output = output * feature_mask
        return output

    def streaming_forward(self, src: Tensor, states: List[Tensor], left_context_len: int,
                          src_key_padding_mask: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """One chunk: src [T, N, C]; states: 6 per layer; src_key_padding_mask
        [N, left_context_len + T]. Returns ([T, N, C], the updated states)."""
        pos_emb = self.encoder_pos(src, left_context_len)
        output = src
        new_states = []
        for i, layer in enumerate(self.layers):
            output, *layer_states = layer.streaming_forward(
                output, pos_emb, *states[6 * i: 6 * (i + 1)], left_context_len=left_context_len,
                src_key_padding_mask=src_key_padding_mask)
            new_states += layer_states
        return output, new_states


class BypassModule(nn.Module):
    """src_orig + (src - src_orig) * bypass_scale, with a learnt per-channel scale.

    In training the scale's gradient keeps it within [scale_min, scale_max]
    (scale_min falls from 0.9 to 0.2 over 20k batches) and whole sequences
    skip the module (scale 0) with probability skip_rate.
    """

    def __init__(self, embed_dim: int, skip_rate: FloatLike = 0.0,
                 straight_through_rate: FloatLike = 0.0,
                 scale_min: Optional[FloatLike] = None, scale_max: FloatLike = 1.0):
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = copy.deepcopy(skip_rate)
        self.straight_through_rate = copy.deepcopy(straight_through_rate)
        self.scale_min = (ScheduledFloat((0.0, 0.9), (20000.0, 0.2), default=0)
                          if scale_min is None else copy.deepcopy(scale_min))
        self.scale_max = copy.deepcopy(scale_max)

    def _get_bypass_scale(self, batch_size: int) -> Tensor:
        """[C] in eval; [C] or [N, C] in training."""
        if not self.training:
            return self.bypass_scale
        ans = limit_param_value(self.bypass_scale, min=float(self.scale_min),
                                max=float(self.scale_max))
        skip_rate = float(self.skip_rate)
        if skip_rate != 0.0:
            ans = ans * (torch.rand((batch_size, 1), device=ans.device) > skip_rate)
        straight_through_rate = float(self.straight_through_rate)
        if straight_through_rate != 0.0:
            mask = torch.rand((batch_size, 1), device=ans.device) < straight_through_rate
            ans = torch.maximum(ans, mask.to(ans.dtype))
        return ans

    def forward(self, src_orig: Tensor, src: Tensor) -> Tensor:
        """src_orig, src: [T, N, C] -> [T, N, C]."""
        return src_orig + (src - src_orig) * self._get_bypass_scale(src.shape[1])


class DownsampledZipformer2Encoder(nn.Module):
    """Runs `encoder` at 1/downsample of the frame rate; the upsampled output
    is mixed with the input by out_combiner (a BypassModule)."""

    def __init__(self, encoder: nn.Module, dim: int, downsample: int, dropout: FloatLike,
                 causal: bool):
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(dim, downsample, dropout, causal)
        self.num_layers = encoder.num_layers
        self.encoder = encoder
        self.upsample = SimpleUpsample(dim, downsample)
        self.out_combiner = BypassModule(dim, straight_through_rate=0)

    def forward(self, src: Tensor, chunk_size: int = -1,
                feature_mask: Union[Tensor, float] = 1.0, attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """src: [T, N, C] -> [T, N, C]; src_key_padding_mask is already at the lower rate."""
        src_orig = src
        ds = self.downsample_factor
        if attn_mask is not None:
            attn_mask = attn_mask[::ds, ::ds]
        src = self.encoder(self.downsample(src), chunk_size=chunk_size // ds,
                           feature_mask=feature_mask, attn_mask=attn_mask,
                           src_key_padding_mask=src_key_padding_mask)
        src = self.upsample(src)[: src_orig.shape[0]]
        return self.out_combiner(src_orig, src)

    def streaming_forward(self, src: Tensor, states: List[Tensor], left_context_len: int,
                          src_key_padding_mask: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """One chunk, as Zipformer2Encoder.streaming_forward but at the lower rate
        (left_context_len and the mask are at that rate already)."""
        src_orig = src
        src, new_states = self.encoder.streaming_forward(
            self.downsample(src), states=states, left_context_len=left_context_len,
            src_key_padding_mask=src_key_padding_mask)
        src = self.upsample(src)[: src_orig.shape[0]]
        return self.out_combiner(src_orig, src), new_states


class SimpleDownsample(nn.Module):
    """[T, N, C] -> [ceil(T/ds), N, C]: a softmax(bias)-weighted sum of each
    group of ds frames (the last group padded by repeating the last frame)."""

    def __init__(self, channels: int, downsample: int, dropout: FloatLike, causal: bool):
        super().__init__()
        self.causal = causal
        self.bias = nn.Parameter(torch.zeros(downsample))
        self.name = None
        self.dropout = copy.deepcopy(dropout)  # unused, as in icefall
        self.downsample = downsample

    def forward(self, src: Tensor) -> Tensor:
        seq_len, batch_size, channels = src.shape
        ds = self.downsample
        d_seq_len = (seq_len + ds - 1) // ds
        pad = d_seq_len * ds - seq_len
        if pad > 0:
            src = torch.cat((src, src[-1:].expand(pad, batch_size, channels)), dim=0)
        src = src.reshape(d_seq_len, ds, batch_size, channels)
        weights = self.bias.softmax(dim=0).reshape(ds, 1, 1)
        return (src * weights).sum(dim=1)


class SimpleUpsample(nn.Module):
    """[T, N, C] -> [T * upsample, N, C], repeating each frame."""

    def __init__(self, num_channels: int, upsample: int):
        super().__init__()
        self.upsample = upsample

    def forward(self, src: Tensor) -> Tensor:
        seq_len, batch_size, channels = src.shape
        src = src.unsqueeze(1).expand(seq_len, self.upsample, batch_size, channels)
        return src.reshape(seq_len * self.upsample, batch_size, channels)


class CompactRelPositionalEncoding(nn.Module):
    """Relative positional encoding: offsets are compressed logarithmically,
    mapped through atan to a finite interval, then Fourier-encoded
    (cos/sin of 1..embed_dim/2 multiples; the last channel is a constant 1).

    forward(x [T, ...]) -> [1, 2T-1, embed_dim] for offsets -(T-1)..T-1
    (Dropout2 in training).  The table is a plain attribute, not a buffer.
    """

    def __init__(self, embed_dim: int, dropout_rate: FloatLike, max_len: int = 2000,
                 length_factor: float = 1.0):
        super().__init__()
        assert embed_dim % 2 == 0, embed_dim
        assert length_factor >= 1.0, length_factor
        self.embed_dim = embed_dim
        self.dropout = Dropout2(dropout_rate)
        self.length_factor = length_factor
        self.pe: Optional[Tensor] = None
        self.extend_pe(torch.tensor(0.0).expand(max_len))

    def extend_pe(self, x: Tensor, left_context_len: int = 0) -> None:
        """Make the table cover offsets up to +-(x.size(0) + left_context_len - 1)."""
        T = x.size(0) + left_context_len
        if self.pe is not None and self.pe.size(0) >= 2 * T - 1:
            self.pe = self.pe.to(dtype=x.dtype, device=x.device)
            return
        pos = torch.arange(-(T - 1), T, device=x.device).to(torch.float32).unsqueeze(1)
        freqs = 1 + torch.arange(self.embed_dim // 2, device=x.device)
        # d(compressed)/d(pos) = 1 at 0; large offsets grow only logarithmically.
        compression_length = self.embed_dim**0.5
        compressed = compression_length * pos.sign() * (
            (pos.abs() + compression_length).log() - math.log(compression_length))
        length_scale = self.length_factor * self.embed_dim / (2.0 * math.pi)
        angle = (compressed / length_scale).atan()  # in (-pi/2, pi/2)
        pe = torch.zeros(pos.shape[0], self.embed_dim, device=x.device)
        pe[:, 0::2] = (angle * freqs).cos()
        pe[:, 1::2] = (angle * freqs).sin()
        pe[:, -1] = 1.0  # for a bias
        self.pe = pe.to(dtype=x.dtype)

    def forward(self, x: Tensor, left_context_len: int = 0) -> Tensor:
        self.extend_pe(x, left_context_len)
        center = self.pe.size(0) // 2
        start = center - (x.size(0) + left_context_len) + 1
        return self.dropout(self.pe[start: center + x.size(0)].unsqueeze(0))


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Attention weights [num_heads, N, T, T] from content (query . key) plus
    relative-position scores (a per-head position query . projected pos_emb).

    in_proj gives [queries | keys | position queries]; linear_pos projects
    the positional encoding.  Masked scores are set to -1000 before the softmax.
    """

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int,
                 pos_head_dim: int, dropout: float = 0.0,
                 pos_emb_skip_rate: Optional[FloatLike] = None):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.dropout = dropout
        self.pos_emb_skip_rate = (ScheduledFloat((0.0, 0.5), (4000.0, 0.0))
                                  if pos_emb_skip_rate is None else pos_emb_skip_rate)
        self.name = None
        in_proj_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        # initial_scale takes over the usual head_dim**-0.5, split between query and key.
        self.in_proj = ScaledLinear(embed_dim, in_proj_dim, bias=True,
                                    initial_scale=query_head_dim**-0.25)
        self.whiten_keys = Whiten(num_groups=num_heads, whitening_limit=_whitening_schedule(3.0),
                                  prob=(0.025, 0.25), grad_scale=0.025)
        # Keys' mean is invisible to the softmax; keep it near zero anyway.
        self.balance_keys = Balancer(query_head_dim * num_heads, channel_dim=-1,
                                     min_positive=0.4, max_positive=0.6, min_abs=0.0,
                                     max_abs=100.0, prob=0.025)
        self.linear_pos = ScaledLinear(pos_dim, num_heads * pos_head_dim, bias=False,
                                       initial_scale=0.05)

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
          x: [T, N, embed_dim].
          pos_emb: [1, 2T-1, pos_dim].
          key_padding_mask: [N, T] bool, True at sources to ignore.
          attn_mask: [T, T] or [N, T, T] bool (target, source), True where masked.
        Returns:
          [num_heads, N, T, T] weights over sources (last dim sums to 1).
        """
        seq_len, batch_size, _ = x.shape
        q, k, p = self._split(self.in_proj(x))
        k = self.whiten_keys(self.balance_keys(k))
        use_pos = not self.training or random.random() >= float(self.pos_emb_skip_rate)
        attn_scores = self._scores(q, k, p, pos_emb if use_pos else None)

        if self.training and random.random() < 0.1:
            # A failsafe against implausibly large scores.
            attn_scores = penalize_abs_values_gt(attn_scores, limit=25.0, penalty=1.0e-04,
                                                 name=self.name)
        # -1000, not -inf: a fully masked row stays finite, and exp(-1000) is exactly 0.
        if attn_mask is not None:
            attn_scores = attn_scores.masked_fill(attn_mask, -1000)
        if key_padding_mask is not None:
            assert key_padding_mask.shape == (batch_size, seq_len), key_padding_mask.shape
            attn_scores = attn_scores.masked_fill(key_padding_mask.unsqueeze(1), -1000)
        attn_weights = attn_scores.softmax(dim=-1)
        return nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)

    def streaming_forward(self, x: Tensor, pos_emb: Tensor, cached_key: Tensor,
                          left_context_len: int,
                          key_padding_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """One chunk (eval only).

        Args:
          x: [T, N, embed_dim], the chunk.
          pos_emb: [1, left_context_len + 2T - 1, pos_dim].
          cached_key: [left_context_len, N, num_heads * query_head_dim], earlier keys.
          key_padding_mask: [N, left_context_len + T], True at invalid sources.
        Returns:
          (weights [num_heads, N, T, left_context_len + T], the new key cache).
        """
        q, k, p = self._split(self.in_proj(x))
        assert cached_key.shape[0] == left_context_len, (cached_key.shape, left_context_len)
        k = torch.cat([cached_key, k], dim=0)
        attn_scores = self._scores(q, k, p, pos_emb)
        attn_scores = attn_scores.masked_fill(key_padding_mask.unsqueeze(1), -1000)
        return attn_scores.softmax(dim=-1), k[-left_context_len:]

    def _split(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """in_proj output -> queries, keys, position queries."""
        qk_dim = self.num_heads * self.query_head_dim
        return x[..., :qk_dim], x[..., qk_dim: 2 * qk_dim], x[..., 2 * qk_dim:]

    def _scores(self, q: Tensor, k: Tensor, p: Tensor, pos_emb: Optional[Tensor]) -> Tensor:
        """q [T, N, H*dq], k [S, N, H*dq], p [T, N, H*dp], pos_emb [1, S+T-1, pos_dim]
        (or None: content only) -> scores [H, N, T, S]."""
        (T, N, _), S = q.shape, k.shape[0]
        H, dq, dp = self.num_heads, self.query_head_dim, self.pos_head_dim
        q = q.reshape(T, N, H, dq).permute(2, 1, 0, 3)  # [H, N, T, dq]
        k = k.reshape(S, N, H, dq).permute(2, 1, 3, 0)  # [H, N, dq, S]
        scores = q @ k
        if pos_emb is not None:
            p = p.reshape(T, N, H, dp).permute(2, 1, 0, 3)  # [H, N, T, dp]
            pos = self.linear_pos(pos_emb)
            pos = pos.reshape(-1, pos_emb.shape[1], H, dp).permute(2, 0, 3, 1)  # [H, 1, dp, S+T-1]
            scores = scores + _rel_to_abs((p @ pos).contiguous(), S)
        return scores


def _rel_to_abs(pos_scores: Tensor, num_src: int) -> Tensor:
    """[H, N, T, num_src+T-1] scores by relative offset -> [H, N, T, num_src] by source.

    Index r of the last input dim holds offset r - (num_src - 1) (source minus
    target, sources counted from the first cached frame), so
    out[..., i, j] = pos_scores[..., i, (T - 1) - i + j].
    """
    H, N, T, _ = pos_scores.shape
    if torch.jit.is_tracing():  # exportable: a gather instead of a strided view
        index = (torch.arange(T - 1, -1, -1).unsqueeze(-1) + torch.arange(num_src))
        return pos_scores.gather(3, index.to(pos_scores.device).expand(H, N, T, num_src))
    s = pos_scores.stride()
    return pos_scores.as_strided((H, N, T, num_src), (s[0], s[1], s[2] - s[3], s[3]),
                                 storage_offset=pos_scores.storage_offset() + s[3] * (T - 1))


def _attend(attn_weights: Tensor, v: Tensor) -> Tensor:
    """attn_weights [H, N, T, S] applied to values v [S, N, H * d] -> [T, N, H * d]."""
    H, N, T, S = attn_weights.shape
    v = v.reshape(S, N, H, -1).permute(2, 1, 0, 3)
    return (attn_weights @ v).permute(2, 1, 0, 3).reshape(T, N, -1)


class SelfAttention(nn.Module):
    """Applies precomputed attention weights to projected values: [T, N, C] -> [T, N, C]."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim, bias=True)
        self.out_proj = ScaledLinear(num_heads * value_head_dim, embed_dim, bias=True,
                                     initial_scale=0.05)
        self.whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(7.5, ratio=3.0),
                             prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        """x: [T, N, C]; attn_weights: [H, N, T, T]."""
        return self.whiten(self.out_proj(_attend(attn_weights, self.in_proj(x))))

    def streaming_forward(self, x: Tensor, attn_weights: Tensor, cached_val: Tensor,
                          left_context_len: int) -> Tuple[Tensor, Tensor]:
        """One chunk: x [T, N, C], attn_weights [H, N, T, left + T], cached_val
        [left, N, H * value_head_dim] -> ([T, N, C], the new value cache)."""
        assert cached_val.shape[0] == left_context_len, (cached_val.shape, left_context_len)
        v = torch.cat([cached_val, self.in_proj(x)], dim=0)
        return self.out_proj(_attend(attn_weights, v)), v[-left_context_len:]


class FeedforwardModule(nn.Module):
    """in_proj, SwooshL, dropout (mask shared over time), out_proj."""

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.hidden_balancer = Balancer(feedforward_dim, channel_dim=-1, min_positive=0.3,
                                        max_positive=1.0, min_abs=0.75, max_abs=5.0)
        self.out_proj = ActivationDropoutAndLinear(
            feedforward_dim, embed_dim, activation="SwooshL", dropout_p=dropout,
            dropout_shared_dim=0, bias=True, initial_scale=0.1)
        self.out_whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(7.5),
                                 prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """[T, N, C] -> [T, N, C]."""
        return self.out_whiten(self.out_proj(self.hidden_balancer(self.in_proj(x))))


class NonlinAttention(nn.Module):
    """Like the convolution module with attention in place of the convolution:
    in_proj -> (s, x, y); out_proj((attn @ (x * tanh(s))) * y)."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, hidden_channels * 3, bias=True)
        self.balancer = Balancer(
            hidden_channels, channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.25), (20000.0, 0.05)),
            max_positive=ScheduledFloat((0.0, 0.75), (20000.0, 0.95)),
            min_abs=0.5, max_abs=5.0)
        self.tanh = nn.Tanh()
        self.out_proj = ScaledLinear(hidden_channels, channels, bias=True, initial_scale=0.05)
        self.whiten1 = Whiten(num_groups=1, whitening_limit=_whitening_schedule(5.0),
                              prob=(0.025, 0.25), grad_scale=0.01)
        self.whiten2 = Whiten(num_groups=1, whitening_limit=_whitening_schedule(5.0, ratio=3.0),
                              prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        """x: [T, N, C]; attn_weights: [H, N, T, T] (H is 1 in Zipformer2). Returns [T, N, C]."""
        seq_len, batch_size, _ = x.shape
        s, x, y = self.in_proj(x).chunk(3, dim=2)
        s = self.tanh(self.balancer(s))
        x = self.whiten1(x) * s
        num_heads = attn_weights.shape[0]
        assert attn_weights.shape == (num_heads, batch_size, seq_len, seq_len)
        x = x.reshape(seq_len, batch_size, num_heads, -1).permute(2, 1, 0, 3)
        x = (attn_weights @ x).permute(2, 1, 0, 3).reshape(seq_len, batch_size, -1)
        return self.whiten2(self.out_proj(x * y))

    def streaming_forward(self, x: Tensor, attn_weights: Tensor, cached_x: Tensor,
                          left_context_len: int) -> Tuple[Tensor, Tensor]:
        """One chunk: x [T, N, C], attn_weights [H, N, T, left + T], cached_x
        [H, N, left, hidden_channels // H] -> ([T, N, C], the new cache)."""
        seq_len, batch_size, _ = x.shape
        s, x, y = self.in_proj(x).chunk(3, dim=2)
        x = x * self.tanh(s)
        num_heads = attn_weights.shape[0]
        x = x.reshape(seq_len, batch_size, num_heads, -1).permute(2, 1, 0, 3)
        assert cached_x.shape[2] == left_context_len, (cached_x.shape, left_context_len)
        x = torch.cat([cached_x, x], dim=2)
        out = (attn_weights @ x).permute(2, 1, 0, 3).reshape(seq_len, batch_size, -1)
        return self.out_proj(out * y), x[:, :, -left_context_len:]


class ConvolutionModule(nn.Module):
    """in_proj -> GLU-like gate (x * sigmoid(s)) -> depthwise conv -> SwooshR -> out_proj.

    The depthwise conv is a Conv1d ("same" padding), or a
    ChunkCausalDepthwiseConv1d if causal.  Padded frames are zeroed before it.
    """

    def __init__(self, channels: int, kernel_size: int, causal: bool):
        super().__init__()
        assert kernel_size % 2 == 1, kernel_size
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        self.balancer1 = Balancer(
            channels, channel_dim=-1, min_positive=ScheduledFloat((0.0, 0.05), (8000.0, 0.025)),
            max_positive=1.0, min_abs=1.5,
            max_abs=ScheduledFloat((0.0, 5.0), (8000.0, 10.0), default=1.0))
        self.sigmoid = nn.Sigmoid()
        if causal:
            self.depthwise_conv = ChunkCausalDepthwiseConv1d(channels, kernel_size)
        else:
            self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels,
                                            padding=kernel_size // 2)
        self.balancer2 = Balancer(
            channels, channel_dim=1, min_positive=ScheduledFloat((0.0, 0.1), (8000.0, 0.05)),
            max_positive=1.0, min_abs=ScheduledFloat((0.0, 0.2), (20000.0, 0.5)), max_abs=10.0)
        self.whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(7.5),
                             prob=(0.025, 0.25), grad_scale=0.01)
        self.out_proj = ActivationDropoutAndLinear(channels, channels, activation="SwooshR",
                                                   dropout_p=0.0, initial_scale=0.05)

    def forward(self, x: Tensor, src_key_padding_mask: Optional[Tensor] = None,
                chunk_size: int = -1) -> Tensor:
        """x: [T, N, C]; src_key_padding_mask: [N, T], True at padding;
        chunk_size >= 0 only for causal models. Returns [T, N, C]."""
        x, s = self.in_proj(x).chunk(2, dim=2)
        x = x * self.sigmoid(self.balancer1(s))
        x = x.permute(1, 2, 0)  # [N, C, T]
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        if chunk_size >= 0:
            assert self.causal, "chunk_size needs a model built with causal=True"
            x = self.depthwise_conv(x, chunk_size=chunk_size)
        else:
            x = self.depthwise_conv(x)
        x = self.balancer2(x).permute(2, 0, 1)  # [T, N, C]
        return self.out_proj(self.whiten(x))

    def streaming_forward(self, x: Tensor, cache: Tensor,
                          src_key_padding_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """One chunk (causal models): x [T, N, C], cache [N, C, kernel_size // 2],
        src_key_padding_mask [N, T] -> ([T, N, C], the new cache)."""
        x, s = self.in_proj(x).chunk(2, dim=2)
        x = (x * self.sigmoid(s)).permute(1, 2, 0)  # [N, C, T]
        x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        x, cache = self.depthwise_conv.streaming_forward(x, cache=cache)
        return self.out_proj(x.permute(2, 0, 1)), cache

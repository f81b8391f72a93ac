"""Zipformer2's building blocks, in plain PyTorch (icefall's scaling.py, forward side).

- BiasNorm: LayerNorm's replacement, x / rms(x - bias) * exp(log_scale).
- SwooshL / SwooshR activations: log(1 + exp(x - s)) - 0.08 x - c.
- ActivationDropoutAndLinear: Swoosh, dropout, linear in one memory-light op.
- ChunkCausalDepthwiseConv1d: the causal model's depthwise convolution.
- Dropout2 / Dropout3, ScaledLinear / ScaledConv2d initialisers,
  convert_num_channels.

ScheduledFloat (scheduled rates) is in scaling_schedule.py; the
gradient-shaping modules (Balancer, Whiten, ScaleGrad, ...) are in
scaling_grad.py: identities in the forward pass, active only in training.
Module and parameter names follow icefall so that its checkpoints load.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from scaling_grad import limit_param_value
from scaling_schedule import FloatLike, ScheduledFloat, set_batch_count  # noqa: F401


def ScaledLinear(*args, initial_scale: float = 1.0, **kwargs) -> nn.Linear:
    """nn.Linear with its weight scaled by `initial_scale` and bias ~ U(+-0.1 initial_scale)."""
    ans = nn.Linear(*args, **kwargs)
    _scale_init(ans, initial_scale)
    return ans


def ScaledConv2d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv2d:
    """nn.Conv2d initialised like ScaledLinear."""
    ans = nn.Conv2d(*args, **kwargs)
    _scale_init(ans, initial_scale)
    return ans


def _scale_init(module: nn.Module, initial_scale: float) -> None:
    with torch.no_grad():
        module.weight.mul_(initial_scale)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -0.1 * initial_scale, 0.1 * initial_scale)


class BiasNorm(nn.Module):
    """x * exp(log_scale) / rms(x - bias) over `channel_dim`: LayerNorm without
    the mean subtraction, with a learnt bias used only in the rms and one
    learnt scalar scale.

    In training, log_scale's gradient is pushed back into
    [log_scale_min, log_scale_max] (limit_param_value); the value itself is
    never clamped.
    """

    def __init__(self, num_channels: int, channel_dim: int = -1, log_scale: float = 1.0,
                 log_scale_min: float = -1.5, log_scale_max: float = 1.5):
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.log_scale = nn.Parameter(torch.tensor(log_scale))
        self.bias = nn.Parameter(torch.empty(num_channels).normal_(mean=0, std=1e-4))
        self.log_scale_min = log_scale_min
        self.log_scale_max = log_scale_max

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[self.channel_dim] == self.num_channels, (x.shape, self.num_channels)
        channel_dim = self.channel_dim % x.ndim
        bias = self.bias.reshape([-1] + [1] * (x.ndim - 1 - channel_dim))
        log_scale = self.log_scale
        if self.training:
            log_scale = limit_param_value(log_scale, float(self.log_scale_min),
                                          float(self.log_scale_max))
        scales = ((x - bias) ** 2).mean(dim=channel_dim, keepdim=True) ** -0.5
        return x * (scales * log_scale.exp())


# Swoosh activations: swoosh(x) = log(1 + exp(x - shift)) - 0.08 x - offset,
# with derivative sigmoid(x - shift) - 0.08, in (-0.08, 0.92).
SWOOSH = {"SwooshL": (4.0, 0.035), "SwooshR": (1.0, 0.313261687)}


def swoosh_forward(x: Tensor, kind: str) -> Tensor:
    """SwooshL or SwooshR of x (any shape), computed in float32 and returned in x's dtype.

    log(1 + exp(x - s)) overflows to inf for x - s > 88; it equals x - s there.
    """
    shift, offset = SWOOSH[kind]
    x32 = x.float()
    x_offset = x32 - shift
    log_sum = (1.0 + x_offset.exp()).log()
    log_sum = torch.where(log_sum == float("inf"), x_offset, log_sum)
    return (log_sum - 0.08 * x32 - offset).to(x.dtype)


def swoosh_derivative(x: Tensor, kind: str) -> Tensor:
    """d swoosh / dx = 0.92 - 1 / (1 + exp(x - shift)), in float32."""
    shift, _ = SWOOSH[kind]
    return 0.92 - 1.0 / (1.0 + (x.float() - shift).exp())


class SwooshFunction(torch.autograd.Function):
    """Swoosh that keeps its derivative as one byte per element for backprop.

    The derivative in [-0.08, 0.925] is stored as uint8 with random dither,
    so the stored value is unbiased (error below 0.004), as icefall and k2 do.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kind: str) -> Tensor:
        floor, ceil = -0.08, 0.925
        deriv = swoosh_derivative(x, kind)
        scaled = (deriv - floor) * (255.0 / (ceil - floor)) + torch.rand_like(deriv)
        ctx.save_for_backward(scaled.to(torch.uint8))
        return swoosh_forward(x, kind)

    @staticmethod
    def backward(ctx, y_grad: Tensor):
        (d,) = ctx.saved_tensors
        floor, ceil = -0.08, 0.925
        return y_grad * (d * ((ceil - floor) / 255.0) + floor).to(y_grad.dtype), None


# When gradients are needed, Swoosh either keeps its derivative as one byte per
# element (SwooshFunction: a quarter of the memory, several extra passes over
# the tensor) or lets autograd keep the float input (softplus: a small
# model's training step about 1.4x faster on a CPU).  None: bytes on GPUs, where memory is
# the limit, and autograd on CPUs, where time is.
BYTE_DERIVATIVE: Optional[bool] = None


def set_swoosh_byte_derivative(enabled: Optional[bool]) -> None:
    """True: always store Swoosh's derivative as bytes (icefall's way);
    False: never; None: only for tensors on a GPU (the default)."""
    global BYTE_DERIVATIVE
    BYTE_DERIVATIVE = enabled


class SwooshL(nn.Module):
    """log(1 + exp(x - 4)) - 0.08 x - 0.035."""

    kind = "SwooshL"

    def forward(self, x: Tensor) -> Tensor:
        shift, offset = SWOOSH[self.kind]
        if torch.jit.is_tracing():
            return torch.logaddexp(torch.zeros_like(x), x - shift) - 0.08 * x - offset
        if not x.requires_grad:
            return swoosh_forward(x, self.kind)
        use_bytes = x.is_cuda if BYTE_DERIVATIVE is None else BYTE_DERIVATIVE
        if use_bytes:
            return SwooshFunction.apply(x, self.kind)
        x32 = x.float()
        return (nn.functional.softplus(x32 - shift) - 0.08 * x32 - offset).to(x.dtype)


class SwooshR(SwooshL):
    """log(1 + exp(x - 1)) - 0.08 x - 0.313261687."""

    kind = "SwooshR"


class ActivationDropoutAndLinearFunction(torch.autograd.Function):
    """linear(dropout(swoosh(x))), saving only x (and the dropout mask) for backprop.

    The backward runs under the forward's CUDA autocast state, as icefall's does.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str,
                dropout_p: float, dropout_shared_dim: Optional[int]) -> Tensor:
        mask = None
        if dropout_p != 0.0:
            shape = list(x.shape)
            if dropout_shared_dim is not None:
                shape[dropout_shared_dim] = 1
            mask = (torch.rand(*shape, device=x.device, dtype=x.dtype) > dropout_p) \
                * (1.0 / (1.0 - dropout_p))
        ctx.save_for_backward(x, weight, bias, mask)
        ctx.activation = activation
        y = swoosh_forward(x, activation)
        if mask is not None:
            y = y * mask
        return nn.functional.linear(y, weight, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, ans_grad: Tensor):
        x, weight, bias, mask = ctx.saved_tensors
        y = swoosh_forward(x, ctx.activation)
        x_deriv = swoosh_derivative(x, ctx.activation).to(x.dtype)
        if mask is not None:
            y = y * mask
            x_deriv = x_deriv * mask
        out_channels, in_channels = weight.shape
        g = ans_grad.reshape(-1, out_channels)
        weight_grad = g.t() @ y.reshape(-1, in_channels)
        bias_grad = None if bias is None else g.sum(dim=0)
        x_grad = (ans_grad @ weight) * x_deriv
        return x_grad, weight_grad, bias_grad, None, None, None


class ActivationDropoutAndLinear(nn.Module):
    """Swoosh activation, dropout (scheduled, mask shared over `dropout_shared_dim`), linear.

    Parameters are ``weight`` [out, in] and ``bias`` [out], as icefall's.
    Equivalent to Sequential(SwooshL(), Dropout3(p, shared_dim), ScaledLinear(...))
    but the backward uses the exact Swoosh derivative and stores only the input.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True,
                 activation: str = "SwooshL", dropout_p: FloatLike = 0.0,
                 dropout_shared_dim: Optional[int] = -1, initial_scale: float = 1.0):
        super().__init__()
        assert activation in SWOOSH, activation
        linear = ScaledLinear(in_channels, out_channels, bias=bias, initial_scale=initial_scale)
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.activation = activation
        self.dropout_p = dropout_p
        self.dropout_shared_dim = dropout_shared_dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or torch.jit.is_tracing():
            return nn.functional.linear(swoosh_forward(x, self.activation), self.weight, self.bias)
        return ActivationDropoutAndLinearFunction.apply(
            x, self.weight, self.bias, self.activation, float(self.dropout_p),
            self.dropout_shared_dim)


class Dropout2(nn.Module):
    """Dropout whose rate may be a ScheduledFloat."""

    def __init__(self, p: FloatLike):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(x, p=float(self.p), training=self.training)


class Dropout3(nn.Module):
    """Dropout (scheduled rate) with one mask shared along `shared_dim`."""

    def __init__(self, p: FloatLike, shared_dim: int):
        super().__init__()
        self.p = p
        self.shared_dim = shared_dim

    def forward(self, x: Tensor) -> Tensor:
        p = float(self.p)
        if not self.training or p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        mask = torch.rand(*shape, device=x.device) > p
        return x * mask * (1.0 / (1.0 - p))


class ChunkCausalDepthwiseConv1d(nn.Module):
    """A depthwise conv1d that sees no frame beyond the end of the current chunk.

    Output = causal_conv (kernel (k+1)//2 over the past and the current frame)
           + chunkwise_conv (kernel k, run within each chunk with zero padding),
             scaled by 1 + (learnt corrections near the chunk's left and right edges).
    Parameters (icefall's names): causal_conv.{weight [C,1,(k+1)//2], bias},
    chunkwise_conv.{weight [C,1,k], bias}, chunkwise_conv_scale [2, C, k].
    """

    def __init__(self, channels: int, kernel_size: int, initial_scale: float = 1.0,
                 bias: bool = True):
        super().__init__()
        assert kernel_size % 2 == 1, kernel_size
        self.causal_conv = nn.Conv1d(channels, channels, (kernel_size + 1) // 2,
                                     groups=channels, padding=0, bias=True)
        self.chunkwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels,
                                        padding=kernel_size // 2, bias=bias)
        self.chunkwise_conv_scale = nn.Parameter(torch.zeros(2, channels, kernel_size))
        self.kernel_size = kernel_size
        with torch.no_grad():
            self.causal_conv.weight.mul_(initial_scale)
            self.chunkwise_conv.weight.mul_(initial_scale)
            if bias:
                nn.init.uniform_(self.causal_conv.bias, -0.1 * initial_scale, 0.1 * initial_scale)

    def forward(self, x: Tensor, chunk_size: int = -1) -> Tensor:
        """x: [N, C, T]; chunk_size in frames (-1 or >= T: one chunk). Returns [N, C, T]."""
        batch_size, channels, seq_len = x.shape
        left_pad = self.kernel_size // 2
        if chunk_size < 0 or chunk_size > seq_len:
            chunk_size = seq_len
        right_pad = -seq_len % chunk_size
        x = nn.functional.pad(x, (left_pad, right_pad))
        x_causal = self.causal_conv(x[..., : left_pad + seq_len])

        num_chunks = (seq_len + right_pad) // chunk_size
        x_chunk = x[..., left_pad:].reshape(batch_size, channels, num_chunks, chunk_size)
        x_chunk = x_chunk.permute(0, 2, 1, 3).reshape(-1, channels, chunk_size)
        x_chunk = self.chunkwise_conv(x_chunk) * self._get_chunk_scale(chunk_size)
        x_chunk = x_chunk.reshape(batch_size, num_chunks, channels, chunk_size)
        x_chunk = x_chunk.permute(0, 2, 1, 3).reshape(batch_size, channels, -1)
        return x_chunk[..., :seq_len] + x_causal

    def streaming_forward(self, x: Tensor, cache: Tensor) -> Tuple[Tensor, Tensor]:
        """One chunk: x [N, C, T] (the whole chunk), cache [N, C, kernel_size // 2]
        (the previous frames) -> ([N, C, T], the new cache)."""
        left_pad = self.kernel_size // 2
        assert cache.shape[-1] == left_pad, (cache.shape, left_pad)
        x = torch.cat([cache, x], dim=2)
        x_causal = self.causal_conv(x)
        seq_len = x.shape[2] - left_pad
        x_chunk = self.chunkwise_conv(x[..., left_pad:]) * self._get_chunk_scale(seq_len)
        return x_chunk + x_causal, x[..., x.shape[2] - left_pad:]

    def _get_chunk_scale(self, chunk_size: int) -> Tensor:
        """[C, chunk_size]: 1 + left-edge corrections (from the chunk start) + right-edge ones."""
        left_edge, right_edge = self.chunkwise_conv_scale[0], self.chunkwise_conv_scale[1]
        if chunk_size < self.kernel_size:
            left_edge = left_edge[:, :chunk_size]
            right_edge = right_edge[:, -chunk_size:]
        else:
            pad = left_edge.new_zeros(left_edge.shape[0], chunk_size - self.kernel_size)
            left_edge = torch.cat((left_edge, pad), dim=-1)
            right_edge = torch.cat((pad, right_edge), dim=-1)
        return 1.0 + (left_edge + right_edge)


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    """Truncate or zero-pad the last dim of x to `num_channels`."""
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    pad = x.new_zeros(*x.shape[:-1], num_channels - x.shape[-1])
    return torch.cat((x, pad), dim=-1)

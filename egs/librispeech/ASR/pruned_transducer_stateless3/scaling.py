"""Building blocks with learnable log-scales, as in icefall's pruned_transducer_stateless2/3.

Every "Scaled" layer stores its weight at a fixed, small magnitude (rms about
0.1) plus a scalar log-scale ``weight_scale`` (and ``bias_scale``); the weight
actually used is ``weight * weight_scale.exp()``.  With the Eve optimizer,
which keeps matrix rms near 0.1, the scalar is what learns the layer's
output magnitude.  Parameter names and shapes match icefall so its
checkpoints load with ``strict=True``.

Also here: BasicNorm (LayerNorm without weight/bias, with a learnable
log-epsilon), ActivationBalancer (identity forward, nudges gradients so
channels stay balanced) and DoubleSwish (x * sigmoid(x - 1)).
"""

import random
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _init_scaled(module: nn.Module, initial_scale: float, initial_speed: float) -> None:
    """Give a conv/linear `module` icefall's initialisation and log-scales.

    The stored weight is uniform with std 0.1 / initial_speed (a smaller
    stored weight learns faster relative to its size), and the log-scale
    makes the effective weight have std fan_in**-0.5 * initial_scale.
    """
    std = 0.1 / initial_speed
    log_scale = torch.tensor(initial_scale).log()
    fan_in = module.weight.shape[1] * module.weight[0][0].numel()
    with torch.no_grad():
        bound = (3**0.5) * std  # uniform(-b, b) has std b / sqrt(3)
        module.weight.uniform_(-bound, bound)
        module.weight_scale = nn.Parameter(
            log_scale + torch.tensor(fan_in**-0.5 / std).log()
        )
        if module.bias is not None:
            module.bias.zero_()
            module.bias_scale = nn.Parameter(log_scale.clone())
        else:
            module.register_parameter("bias_scale", None)


class _ScaledMixin:
    """The effective weight and bias of a layer with log-scales."""

    def get_weight(self) -> Tensor:
        return self.weight * self.weight_scale.exp()

    def get_bias(self) -> Optional[Tensor]:
        if self.bias is None:
            return None
        return self.bias * self.bias_scale.exp()


class ScaledLinear(_ScaledMixin, nn.Linear):
    """nn.Linear with `weight_scale`/`bias_scale`; input [..., in], output [..., out].

    Args: as nn.Linear, plus `initial_scale` (multiplies the initial output
    magnitude) and `initial_speed` (>1 trains faster at the start).
    """

    def __init__(self, *args, initial_scale: float = 1.0,
                 initial_speed: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        _init_scaled(self, initial_scale, initial_speed)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.get_weight(), self.get_bias())


class ScaledConv1d(_ScaledMixin, nn.Conv1d):
    """nn.Conv1d with log-scales (zero padding only); input [B, C_in, T]."""

    def __init__(self, *args, initial_scale: float = 1.0,
                 initial_speed: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        assert self.padding_mode == "zeros", self.padding_mode
        _init_scaled(self, initial_scale, initial_speed)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.get_weight(), self.get_bias(), self.stride,
                        self.padding, self.dilation, self.groups)


class ScaledConv2d(_ScaledMixin, nn.Conv2d):
    """nn.Conv2d with log-scales (zero padding only); input [B, C_in, H, W]."""

    def __init__(self, *args, initial_scale: float = 1.0,
                 initial_speed: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        assert self.padding_mode == "zeros", self.padding_mode
        _init_scaled(self, initial_scale, initial_speed)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.get_weight(), self.get_bias(), self.stride,
                        self.padding, self.dilation, self.groups)


class ScaledEmbedding(nn.Module):
    """Embedding table times a learnable scalar `scale.exp()`.

    Input: int64 ids of any shape [*]; output [*, embedding_dim].
    Parameters (icefall order): `scale` [], `weight` [num_embeddings, dim].
    """

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 initial_speed: float = 1.0):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        std = 0.1 / initial_speed
        self.scale = nn.Parameter(torch.tensor(1.0 / std).log())
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim) * std)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight) * self.scale.exp()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class BasicNorm(nn.Module):
    """x / sqrt(mean(x**2 over channels) + exp(eps)); no weight or bias.

    `eps` holds log(epsilon) (initially log 0.25).  It is a Parameter when
    `learn_eps`, else a buffer; either way it is in the state_dict.  The
    large learnable epsilon replaces the trick by which LayerNorm networks
    park a huge constant in one channel to escape the normalisation.
    """

    def __init__(self, num_channels: int, channel_dim: int = -1,
                 eps: float = 0.25, learn_eps: bool = True):
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        log_eps = torch.tensor(eps).log()
        if learn_eps:
            self.eps = nn.Parameter(log_eps)
        else:
            self.register_buffer("eps", log_eps)

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[self.channel_dim] == self.num_channels, x.shape
        mean_sq = torch.mean(x**2, dim=self.channel_dim, keepdim=True)
        return x * (mean_sq + self.eps.exp()) ** -0.5


class ActivationBalancerFunction(torch.autograd.Function):
    """Identity in forward; in backward, shrinks or grows each gradient element.

    Per channel (statistics over all other dims):
      - if the fraction of x > 0 is below `min_positive` (above
        `max_positive`) gradients are pushed to make x more (less) positive,
        by up to `max_factor` times |grad|;
      - if mean |x| is below `min_abs` (above `max_abs`) gradients are pushed
        to grow (shrink) |x|, by `max_factor` times |grad|.
    """

    @staticmethod
    def forward(ctx, x: Tensor, channel_dim: int, min_positive: float,
                max_positive: float, max_factor: float, min_abs: float,
                max_abs: float) -> Tensor:
        if not x.requires_grad:
            return x
        channel_dim = channel_dim % x.ndim
        other_dims = [d for d in range(x.ndim) if d != channel_dim]
        positive = x > 0
        frac_pos = positive.to(x.dtype).mean(dim=other_dims, keepdim=True)
        factor = torch.zeros_like(frac_pos)
        if min_positive != 0.0:
            factor = factor + (min_positive - frac_pos).relu() * (max_factor / min_positive)
        if max_positive != 1.0:
            # max_positive - 1 < 0: a negative factor, i.e. push x downwards.
            factor = factor + (frac_pos - max_positive).relu() * (
                max_factor / (max_positive - 1.0))
        mean_abs = x.abs().mean(dim=other_dims, keepdim=True)
        ctx.save_for_backward(factor, positive, mean_abs < min_abs, mean_abs > max_abs)
        ctx.max_factor = max_factor
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        factor, positive, too_small, too_big = ctx.saved_tensors
        dtype = grad.dtype
        # +1 to grow |x| (too small), -1 to shrink it; the sign of x tells
        # which direction of the gradient grows |x|.
        magnitude = (too_small.to(dtype) - too_big.to(dtype)) * (
            positive.to(dtype) - 0.5) * (2.0 * ctx.max_factor)
        new_grad = grad - grad.abs() * (factor + magnitude)
        return new_grad, None, None, None, None, None, None


class ActivationBalancer(nn.Module):
    """Applies ActivationBalancerFunction on a random `balance_prob` of calls.

    To keep the average push equal, `max_factor` is divided by
    `balance_prob` when it is applied.  The defaults are icefall's.
    Shape: any; `channel_dim` names the channel axis.
    """

    def __init__(self, channel_dim: int, min_positive: float = 0.05,
                 max_positive: float = 0.95, max_factor: float = 0.01,
                 min_abs: float = 0.2, max_abs: float = 100.0,
                 balance_prob: float = 0.25):
        super().__init__()
        assert 0 < balance_prob <= 1, balance_prob
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.max_factor = max_factor
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.balance_prob = balance_prob

    def forward(self, x: Tensor) -> Tensor:
        if not x.requires_grad or random.random() >= self.balance_prob:
            return x
        return ActivationBalancerFunction.apply(
            x, self.channel_dim, self.min_positive, self.max_positive,
            self.max_factor / self.balance_prob, self.min_abs, self.max_abs)


class DoubleSwishFunction(torch.autograd.Function):
    """y = x * sigmoid(x - 1), saving only s = sigmoid(x - 1) and y.

    dy/dx = s + x * s * (1 - s) = s + y * (1 - s), so x itself is not kept.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        s = torch.sigmoid(x.detach() - 1.0)
        y = x.detach() * s
        ctx.save_for_backward(s, y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        s, y = ctx.saved_tensors
        return grad * (y * (1.0 - s) + s)


class DoubleSwish(nn.Module):
    """x * sigmoid(x - 1), close to swish(swish(x)); any shape."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return x * torch.sigmoid(x - 1.0)
        return DoubleSwishFunction.apply(x)

"""Training-only gradient shaping for Zipformer2 (icefall's scaling.py, backward side).

Everything here returns its input unchanged in the forward pass and only
alters gradients, and only in training (a module in eval mode, or an input
that needs no gradient, passes straight through):

- Balancer: nudges each channel's mean/rms into a range.
- Whiten: nudges features towards a white (isotropic) covariance.
- ScaleGrad / scale_grad: multiplies the gradient by a constant.
- limit_param_value: flips gradient signs that would push a parameter
  further out of [min, max].
- penalize_abs_values_gt: adds the gradient of penalty * relu(|x| - limit).
"""

import math
import random
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from scaling_schedule import FloatLike, ScheduledFloat


class BalancerFunction(torch.autograd.Function):
    """Identity whose backward adds, per element, |grad| * (scaled gradient of a
    loss that is zero while each channel's mean/stddev and rms are in range)."""

    @staticmethod
    def forward(ctx, x: Tensor, min_mean: float, max_mean: float, min_rms: float,
                max_rms: float, grad_scale: float, channel_dim: int) -> Tensor:
        ctx.save_for_backward(x)
        ctx.config = (min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim % x.ndim)
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim = ctx.config
        with torch.enable_grad():
            x = x.detach().float().requires_grad_(True)
            dims = [i for i in range(x.ndim) if i != channel_dim]
            uncentered_var = (x**2).mean(dim=dims, keepdim=True)
            mean = x.mean(dim=dims, keepdim=True)
            stddev = (uncentered_var - mean * mean).clamp(min=1.0e-20).sqrt()
            rms = uncentered_var.clamp(min=1.0e-20).sqrt()
            m = mean / stddev
            m_loss = (m - m.clamp(min=min_mean, max=max_mean)).abs()
            r_loss = (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
            loss = m_loss + r_loss
            (loss_grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss))
        loss_grad_rms = (loss_grad**2).mean(dim=dims, keepdim=True).sqrt().clamp(min=1.0e-20)
        loss_grad = loss_grad * (grad_scale / loss_grad_rms)
        g = x_grad.float()
        return (g + g.abs() * loss_grad).to(x_grad.dtype), None, None, None, None, None, None


def _abs_to_rms(x: float) -> float:
    # For a Gaussian, rms = sqrt(pi / 2) * mean(|x|).
    return 1.25331413732 * x


def _proportion_positive_to_mean(p: float) -> float:
    """mean/stddev of a Gaussian that is positive with probability p (crude inverse erf)."""
    x = 2 * p - 1
    eps = 1.0e-10
    atanh = (math.log(1 + x + eps) - math.log(1 - x + eps)) / 2.0
    return 0.8139535143 * atanh


class Balancer(nn.Module):
    """Keeps each channel's proportion of positive values in [min_positive,
    max_positive] and its mean |x| in [min_abs, max_abs], by editing gradients
    (with probability `prob` per call; default: 0.5 falling to 0.125 by batch 8000).
    Forward: identity."""

    def __init__(self, num_channels: int, channel_dim: int, min_positive: FloatLike = 0.05,
                 max_positive: FloatLike = 0.95, min_abs: FloatLike = 0.2,
                 max_abs: FloatLike = 100.0, grad_scale: FloatLike = 0.04,
                 prob: Optional[FloatLike] = None):
        super().__init__()
        if prob is None:
            prob = ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)
        self.prob = prob
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.grad_scale = grad_scale

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not x.requires_grad or torch.jit.is_tracing():
            return x
        if random.random() >= float(self.prob):
            return x
        assert x.shape[self.channel_dim] == self.num_channels, (x.shape, self.num_channels)
        return BalancerFunction.apply(
            x, _proportion_positive_to_mean(float(self.min_positive)),
            _proportion_positive_to_mean(float(self.max_positive)),
            _abs_to_rms(float(self.min_abs)), _abs_to_rms(float(self.max_abs)),
            float(self.grad_scale), self.channel_dim)


def _whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """How far the centred covariance of x [..., C] is from a multiple of I, per
    channel group (all groups sharing one trace): 1.0 if white, larger otherwise."""
    x = x.reshape(-1, x.shape[-1])
    num_frames, num_channels = x.shape
    assert num_channels % num_groups == 0, (num_channels, num_groups)
    per_group = num_channels // num_groups
    x = x.reshape(num_frames, num_groups, per_group).transpose(0, 1)
    x = x - x.mean(dim=1, keepdim=True)
    covar = x.transpose(1, 2) @ x  # [groups, per_group, per_group]
    mean_diag = covar.diagonal(dim1=1, dim2=2).mean()
    # mean diagonal of covar @ covar, without the matrix product
    covarsq_mean_diag = (covar**2).sum() / (num_groups * per_group)
    return covarsq_mean_diag / (mean_diag**2 + 1.0e-20)


class WhiteningPenaltyFunction(torch.autograd.Function):
    """Identity whose backward adds the gradient of the whitening metric, scaled
    to grad_scale * |grad|, when the metric exceeds the module's limit."""

    @staticmethod
    def forward(ctx, x: Tensor, module: "Whiten") -> Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        w = ctx.module
        with torch.enable_grad():
            x = x.detach().float().requires_grad_(True)
            metric = _whitening_metric(x, w.num_groups)
            if metric < float(w.whitening_limit):
                w.prob = w.min_prob  # fine for now: check less often
                return x_grad, None
            w.prob = w.max_prob
            (penalty_grad,) = torch.autograd.grad(metric, x)
        scale = float(w.grad_scale) * x_grad.float().norm() / (penalty_grad.norm() + 1.0e-20)
        return x_grad + (penalty_grad * scale).to(x_grad.dtype), None


class Whiten(nn.Module):
    """Pushes the features' covariance (per group of channels) towards white
    when the whitening metric exceeds `whitening_limit`, with probability
    `prob` per call ((min_prob, max_prob): max after a violation). Forward: identity."""

    def __init__(self, num_groups: int, whitening_limit: FloatLike,
                 prob: Union[float, Tuple[float, float]], grad_scale: FloatLike):
        super().__init__()
        assert num_groups >= 1 and float(whitening_limit) >= 1 and float(grad_scale) >= 0
        self.num_groups = num_groups
        self.whitening_limit = whitening_limit
        self.grad_scale = grad_scale
        if isinstance(prob, (int, float)):
            prob = (prob, prob)
        self.min_prob, self.max_prob = prob
        assert 0 < self.min_prob <= self.max_prob <= 1, prob
        self.prob = self.max_prob
        self.name = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not x.requires_grad or torch.jit.is_tracing():
            return x
        if random.random() > self.prob or float(self.grad_scale) == 0:
            return x
        return WhiteningPenaltyFunction.apply(x, self)


class ScaleGradFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.alpha, None


def scale_grad(x: Tensor, alpha: float) -> Tensor:
    """x, with its gradient multiplied by alpha."""
    return ScaleGradFunction.apply(x, alpha)


class ScaleGrad(nn.Module):
    """Multiplies the gradient by `alpha` in training; identity otherwise."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or torch.jit.is_tracing():
            return x
        return scale_grad(x, self.alpha)


class LimitParamValue(torch.autograd.Function):
    """Identity; in backward, where x < min a positive gradient is negated (so
    the step increases x) and where x > max a negative one is."""

    @staticmethod
    def forward(ctx, x: Tensor, min: float, max: float) -> Tensor:
        assert max >= min, (min, max)
        ctx.save_for_backward(x)
        ctx.min, ctx.max = min, max
        return x.view_as(x)

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        x_grad = x_grad * torch.where((x_grad > 0) & (x < ctx.min), -1.0, 1.0)
        x_grad = x_grad * torch.where((x_grad < 0) & (x > ctx.max), -1.0, 1.0)
        return x_grad, None, None


def limit_param_value(x: Tensor, min: float, max: float, prob: float = 0.6,
                      training: bool = True) -> Tensor:
    """With probability `prob` in training, keep parameter x within [min, max]
    through its gradient (see LimitParamValue); the value is not clamped."""
    if training and random.random() < prob:
        return LimitParamValue.apply(x, min, max)
    return x


class WithLoss(torch.autograd.Function):
    """Returns x; the backward acts as if y.sum() had been added to the loss."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        ctx.y_shape = y.shape
        return x.view_as(x)

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        return ans_grad, torch.ones(ctx.y_shape, dtype=ans_grad.dtype, device=ans_grad.device)


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float,
                           name: Optional[str] = None) -> Tensor:
    """x, with the gradient of penalty * relu(|x| - limit) added in backprop."""
    over_limit = x.abs() > limit
    # Same derivative as penalty * relu(|x| - limit); only x needs keeping for backprop.
    aux_loss = penalty * ((x.sign() * over_limit).to(torch.int8) * x)
    return WithLoss.apply(x, aux_loss)

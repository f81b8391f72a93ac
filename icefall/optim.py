"""icefall's optimizers and learning-rate schedule: Eve (with Eden, for
pruned_transducer_stateless2/3) and ScaledAdam (with Eden's warmup and
get_parameter_groups_with_lrs, for the zipformer).

Typical use (icefall's LibriSpeech settings)::

    optimizer = Eve(model.parameters(), lr=0.003)
    scheduler = Eden(optimizer, lr_batches=5000, lr_epochs=6)
    # zipformer:
    optimizer = ScaledAdam(get_parameter_groups_with_lrs(model, lr=0.045, include_names=True),
                           lr=0.045, clipping_scale=2.0)
    scheduler = Eden(optimizer, 7500, 3.5, warmup_start=0.1)

    for epoch in range(1, num_epochs + 1):
        scheduler.step_epoch(epoch - 1)
        for batch in loader:
            ...; loss.backward(); optimizer.step(); optimizer.zero_grad()
            scheduler.step_batch()
"""

import logging
import math
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn
from torch.optim import Optimizer


class Eve(Optimizer):
    """Adam with a weight decay that only acts while a tensor's rms exceeds target_rms.

    Meant for networks built from the "Scaled" modules of scaling.py, whose
    output hardly depends on a weight matrix's overall size: decay holds
    each matrix near rms `target_rms`, and the scalar log-scales learn the
    size instead.  Scalar parameters get no decay and are clamped to
    [-10, 2] (they are log-scales; exp(2) is already a large gain).

    Args:
      params: parameters or parameter groups.
      lr: learning rate (Eden multiplies this by its factor).
      betas: Adam's moving-average coefficients.
      eps: added to the rms of the gradient.
      weight_decay: shrink factor per step, NOT multiplied by lr.
      target_rms: rms below which decay stops.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.98), eps: float = 1e-8,
                 weight_decay: float = 1e-3, target_rms: float = 0.1):
        if lr < 0.0:
            raise ValueError(f"Eve: invalid lr {lr}")
        if eps < 0.0:
            raise ValueError(f"Eve: invalid eps {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Eve: invalid betas {betas}")
        if not 0.0 <= weight_decay <= 0.1:
            raise ValueError(f"Eve: weight_decay must be in [0, 0.1], got {weight_decay}")
        if not 0.0 < target_rms <= 10.0:
            raise ValueError(f"Eve: target_rms must be in (0, 10], got {target_rms}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        target_rms=target_rms)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update; `closure` optionally recomputes and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Tensors that share device, dtype and step count are updated
            # together with torch._foreach_* ops (one call per operation
            # instead of one per tensor: the per-tensor loop was 8% of a
            # training step of run.sh's small model).
            buckets = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Eve does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                buckets.setdefault((p.device, p.dtype, state["step"]), []).append(p)
            for (_, _, step), params in buckets.items():
                self._update(params, step, group)
        return loss

    def _update(self, params: List[torch.Tensor], step: int, group: Dict) -> None:
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        exp_avg = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avg, beta1)
        torch._foreach_add_(exp_avg, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)

        # Bias-corrected rms of the gradient, and bias-corrected step size.
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_mul_(denom, (1 - beta2**step) ** -0.5)
        torch._foreach_add_(denom, group["eps"])
        step_size = group["lr"] / (1 - beta1**step)

        matrices = [p for p in params if p.numel() > 1]
        if matrices and group["weight_decay"] > 0:
            # rms(p) > target_rms  <=>  ||p|| > target_rms * sqrt(numel)
            norms = torch.stack(torch._foreach_norm(matrices)).float().cpu()
            limits = torch.tensor([group["target_rms"] * p.numel() ** 0.5 for p in matrices])
            factors = 1 - group["weight_decay"] * (norms > limits).double()
            torch._foreach_mul_(matrices, factors.tolist())
        torch._foreach_addcdiv_(params, exp_avg, denom, value=-step_size)
        for p in params:
            if p.numel() == 1:
                p.clamp_(min=-10.0, max=2.0)


class ScaledAdam(Optimizer):
    """icefall's ScaledAdam (zipformer/optim.py): Adam whose step on each
    tensor is scaled by the tensor's rms, plus a learned overall size.

    Each tensor's update is lr * rms(tensor) * Adam direction (momentum
    without bias correction), so every tensor changes by about the same
    relative amount; every `size_update_period` steps its size is moved
    along the gradient of its log-scale (lr * scalar_lr_scale), kept in
    [param_min_rms, param_max_rms].  Parameters with one element are
    "scalars": plain Adam at lr * scalar_lr_scale, clamped to +-scalar_max.
    Tensors of equal dtype and shape are stacked and updated together; their
    state lives in the state of the first of them.

    With `clipping_scale`, the gradient (each tensor's scaled by its rms,
    scalars' by scalar_lr_scale) is clipped to clipping_scale times the
    median norm of the last `clipping_update_period` steps (the threshold
    is re-estimated every period, and at steps 10, 20 and 40 with twice the
    threshold).

    Args:
      params: parameters, (name, parameter) pairs, or groups: dicts with
        "params" or "named_params" and optionally "lr" etc.  Names show
        up in the warning about the parameter that dominates a clipped norm.
      lr: learning rate (icefall's Eden multiplies it by its factor).
      clipping_scale: see above; None disables clipping.
      betas: momentum and the moving average of squared gradients.
      scalar_lr_scale: lr factor for scalars and for the size updates.
      eps: added to the rms of the gradient.
      param_min_rms, param_max_rms: limits on each tensor's rms for the
        size updates (the step scale is at least param_min_rms).
      scalar_max: bound on the absolute value of scalars.
      size_update_period: steps between size updates.
      clipping_update_period: steps between threshold estimates.
    """

    def __init__(self, params, lr: float = 3e-02, clipping_scale: Optional[float] = None,
                 betas: Tuple[float, float] = (0.9, 0.98), scalar_lr_scale: float = 0.1,
                 eps: float = 1.0e-08, param_min_rms: float = 1.0e-05,
                 param_max_rms: float = 3.0, scalar_max: float = 10.0,
                 size_update_period: int = 4, clipping_update_period: int = 100):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"ScaledAdam: invalid betas {betas}")
        defaults = dict(lr=lr, clipping_scale=clipping_scale, betas=betas,
                        scalar_lr_scale=scalar_lr_scale, eps=eps,
                        param_min_rms=param_min_rms, param_max_rms=param_max_rms,
                        scalar_max=scalar_max, size_update_period=size_update_period,
                        clipping_update_period=clipping_update_period)
        groups, names = _groups_and_names(params)
        super().__init__(groups, defaults)
        # One list of names (None: not given) per group, in "params" order.
        self.parameters_names = names

    @torch.no_grad()
    def step(self, closure=None):
        """One update; `closure` optionally recomputes and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, names in zip(self.param_groups, self.parameters_names):
            batches = self._stack(group["params"], names)
            if len(batches[0].state) == 0:
                clipping_scale = 1.0
            else:
                clipping_scale = self._clipping_scale(group, batches)
            for b in batches:
                if b.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                b.state.setdefault("step", 0)
                grad = b.grad if clipping_scale == 1.0 else b.grad.mul_(clipping_scale)
                b.p.add_(_momentum_delta(group, b.p, b.state, grad))
                if _is_scalar(b.p):
                    b.p.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
                b.state["step"] += 1
                for i, param in enumerate(b.params):
                    param.copy_(b.p[i])
        return loss

    def _stack(self, params: List[torch.Tensor], names: List[Optional[str]]) -> List["_Batch"]:
        """Parameters grouped by (dtype, *shape), in sorted key order, stacked."""
        by_key: Dict[tuple, List[int]] = {}
        for i, p in enumerate(params):
            by_key.setdefault((str(p.dtype), *p.shape), []).append(i)
        batches = []
        for key in sorted(by_key):
            members = [params[i] for i in by_key[key]]
            grad = torch.stack([torch.zeros_like(p) if p.grad is None else p.grad
                                for p in members])
            batches.append(_Batch(members, torch.stack(members), grad,
                                  self.state[members[0]], [names[i] for i in by_key[key]]))
        return batches

    def _clipping_scale(self, group: Dict, batches: List["_Batch"]) -> float:
        """The factor (<= 1) for this step's gradients; updates the norm history."""
        clipping_scale = group["clipping_scale"]
        first = batches[0].state
        step = first["step"]
        if clipping_scale is None or step == 0:
            return 1.0
        period = group["clipping_update_period"]
        tot_sumsq = torch.tensor(0.0, device=batches[0].p.device)
        for b in batches:
            if _is_scalar(b.p):
                tot_sumsq += (b.grad**2).sum() * (group["scalar_lr_scale"] ** 2)
            else:
                tot_sumsq += ((b.grad * b.state["param_rms"]) ** 2).sum()
        tot_norm = tot_sumsq.sqrt()
        if "model_norms" not in first:
            first["model_norms"] = torch.zeros(period, device=tot_norm.device)
        first["model_norms"][step % period] = tot_norm

        early_steps = [s for s in (10, 20, 40) if s < period]
        if step % period == 0 or step in early_steps:
            _set_clipping_threshold(first, clipping_scale, step, early=step in early_steps)
        if "model_norm_threshold" not in first:
            return 1.0
        ans = min(1.0, (first["model_norm_threshold"] / (tot_norm + 1.0e-20)).item())
        if ans != ans:  # nan
            ans = 0.0
        if ans < 1.0:
            first["num_clipped"] += 1
        if ans < 0.5:
            name, share = _dominant_parameter(batches, tot_sumsq, group["scalar_lr_scale"])
            logging.warning(f"ScaledAdam: scaling gradients by {ans:.3g} (threshold "
                            f"{first['model_norm_threshold']:.3e}); {name} has "
                            f"{100 * share:.1f}% of the squared norm")
        if ans == 0.0:
            for b in batches:
                b.grad.zero_()  # drop infinities
        return ans


class _Batch(NamedTuple):
    """Parameters of one dtype and shape, stacked on a new dim 0."""
    params: List[torch.Tensor]
    p: torch.Tensor  # [len(params), *shape]
    grad: torch.Tensor  # same shape, zeros for parameters without .grad
    state: Dict  # the optimizer state of params[0]
    names: List[Optional[str]]


def _is_scalar(p: torch.Tensor) -> bool:
    """Whether a stacked batch holds one-element parameters."""
    return p.numel() == p.shape[0]


def _groups_and_names(params) -> Tuple[List[Dict], List[List[Optional[str]]]]:
    """Parameter groups for Optimizer, and the parameter names of each group."""
    items = list(params)
    if len(items) == 0:
        raise ValueError("ScaledAdam: empty parameter list")
    if not isinstance(items[0], dict):
        items = [{"params": items}]
    groups, names = [], []
    for item in items:
        group = {k: v for k, v in item.items() if k not in ("params", "named_params")}
        entries = list(item["named_params"] if "named_params" in item else item["params"])
        pairs = [e if isinstance(e, tuple) else (None, e) for e in entries]
        group["params"] = [p for _, p in pairs]
        groups.append(group)
        names.append([n for n, _ in pairs])
    return groups, names


def _set_clipping_threshold(state: Dict, clipping_scale: float, step: int, early: bool) -> None:
    """Threshold = clipping_scale * the median of the stored norms (twice that
    on the early steps, which only look at the `step` norms there are)."""
    norms = state["model_norms"].sort()[0].to("cpu")
    if early:
        norms = norms[-step:]
    n = norms.numel()
    quartiles = [norms[min(n - 1, (n // 4) * i)].item() for i in range(5)]
    if not math.isfinite(quartiles[2]):
        raise RuntimeError("ScaledAdam: too many gradients were not finite")
    threshold = clipping_scale * quartiles[2]
    if early:
        threshold = threshold * 2.0
    state["model_norm_threshold"] = threshold
    clipped = state["num_clipped"] * 100.0 / n if "num_clipped" in state else 0.0
    state["num_clipped"] = 0
    logging.warning(f"Clipping_scale={clipping_scale}, grad-norm quartiles "
                    + " ".join(f"{q:.3e}" for q in quartiles)
                    + f", threshold={threshold:.3e}, percent-clipped={clipped:.1f}")


def _dominant_parameter(batches: List[_Batch], tot_sumsq: torch.Tensor,
                        scalar_lr_scale: float) -> Tuple[str, float]:
    """The parameter with the largest share of the (scaled) squared gradient norm."""
    best_name, best = "?", -1.0
    for b in batches:
        rms = scalar_lr_scale if _is_scalar(b.p) else b.state["param_rms"]
        sumsq = ((b.grad * rms) ** 2).reshape(len(b.params), -1).sum(dim=1)
        i = int(sumsq.argmax())
        if sumsq[i].item() > best:
            best = sumsq[i].item()
            best_name = b.names[i] or f"a parameter of shape {list(b.params[i].shape)}"
    return best_name, best / max(tot_sumsq.item(), 1e-30)


def _adam_delta(group: Dict, p: torch.Tensor, state: Dict, grad: torch.Tensor) -> torch.Tensor:
    """-lr * grad / rms(grad), rms bias-corrected while that matters; no momentum."""
    lr = group["lr"]
    if _is_scalar(p):
        lr = lr * group["scalar_lr_scale"]
    beta2 = group["betas"][1]
    if "exp_avg_sq" not in state:
        state["exp_avg_sq"] = torch.zeros(*p.shape, device=p.device, dtype=torch.float)
    exp_avg_sq = state["exp_avg_sq"]
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction2 = 1 - beta2 ** (state["step"] + 1)
    if bias_correction2 < 0.99:
        exp_avg_sq = exp_avg_sq * (1.0 / bias_correction2)
    denom = exp_avg_sq.sqrt().add_(group["eps"])
    return -lr * grad / denom


def _scaled_delta(group: Dict, p: torch.Tensor, state: Dict, grad: torch.Tensor) -> torch.Tensor:
    """The Adam step times each tensor's rms, plus the periodic size update.

    p, grad: [B, *shape], B tensors stacked; param_rms etc. are [B, 1, ...].
    """
    delta = _adam_delta(group, p, state, grad)
    if _is_scalar(p):
        return delta
    step, period = state["step"], group["size_update_period"]
    dims = list(range(1, p.ndim))
    if "param_rms" not in state:
        param_rms = (p**2).mean(dim=dims, keepdim=True).sqrt().to(torch.float)
        state["param_rms"] = param_rms
        state["scale_exp_avg_sq"] = torch.zeros_like(param_rms)
        state["scale_grads"] = torch.zeros(period, *param_rms.shape, dtype=torch.float,
                                           device=p.device)
    param_rms, scale_grads = state["param_rms"], state["scale_grads"]
    # d(loss)/d(log-scale of the tensor), kept for the next size update
    scale_grads[step % period] = (p * grad).sum(dim=dims, keepdim=True)
    if step % period == period - 1:
        param_rms.copy_((p**2).mean(dim=dims, keepdim=True).sqrt())
    delta *= param_rms.clamp(min=group["param_min_rms"])
    if step % period == period - 1 and step > 0:
        delta.add_(p * _size_step(group, state, step))
    return delta


def _size_step(group: Dict, state: Dict, step: int) -> torch.Tensor:
    """Adam on the log-scale of each tensor over the last `size_update_period`
    scale gradients: the relative size change [B, 1, ...], within +-0.1,
    never shrinking below param_min_rms nor growing above param_max_rms."""
    period = group["size_update_period"]
    param_rms, scale_grads = state["param_rms"], state["scale_grads"]
    beta2 = group["betas"][1] ** period  # one average per period
    scale_exp_avg_sq = state["scale_exp_avg_sq"]
    scale_exp_avg_sq.mul_(beta2).add_((scale_grads**2).mean(dim=0), alpha=1 - beta2)
    bias_correction2 = 1 - beta2 ** ((step + 1) // period)
    denom = scale_exp_avg_sq.sqrt() + group["eps"]
    size_lr = group["lr"] * group["scalar_lr_scale"]
    scale_step = -size_lr * (bias_correction2**0.5) * scale_grads.sum(dim=0) / denom
    scale_step.masked_fill_(param_rms < group["param_min_rms"], 0.0)
    scale_step.clamp_(min=-0.1, max=0.1)
    return torch.minimum(scale_step, (group["param_max_rms"] - param_rms) / param_rms)


def _momentum_delta(group: Dict, p: torch.Tensor, state: Dict, grad: torch.Tensor) -> torch.Tensor:
    """Moving average (beta1) of the scaled steps, without bias correction."""
    delta = _scaled_delta(group, p, state, grad)
    if "delta" not in state:
        state["delta"] = torch.zeros(*p.shape, device=p.device, dtype=torch.float)
    stored = state["delta"]
    stored.mul_(group["betas"][0]).add_(delta, alpha=1 - group["betas"][0])
    return stored


class LRScheduler:
    """Base for schedules that depend on both the batch and the epoch count.

    Sub-classes implement get_lr() from self.batch, self.epoch, self.base_lrs.
    """

    def __init__(self, optimizer: Optimizer, verbose: bool = False):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        self.verbose = verbose
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.epoch = 0
        self.batch = 0
        self._last_lr = list(self.base_lrs)

    def state_dict(self) -> Dict:
        """The schedule's position: base_lrs, epoch and batch."""
        return {"base_lrs": self.base_lrs, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state_dict: Dict) -> None:
        """Restore what state_dict() returned and apply its learning rates."""
        self.base_lrs = list(state_dict["base_lrs"])
        self.epoch = state_dict["epoch"]
        self.batch = state_dict["batch"]
        self._set_lrs()

    def get_last_lr(self) -> List[float]:
        """Learning rates last set, one per parameter group."""
        return self._last_lr

    def get_lr(self) -> List[float]:
        raise NotImplementedError

    def step_batch(self, batch: Optional[int] = None) -> None:
        """Advance by one batch, or set the batch count (summed over epochs)."""
        self.batch = self.batch + 1 if batch is None else batch
        self._set_lrs()

    def step_epoch(self, epoch: Optional[int] = None) -> None:
        """Advance by one epoch (call at an epoch's end), or set the epoch
        (call at its start, e.g. step_epoch(epoch - 1) for 1-based epochs)."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._set_lrs()

    def _set_lrs(self) -> None:
        lrs = self.get_lr()
        assert len(lrs) == len(self.optimizer.param_groups)
        for i, (group, lr) in enumerate(zip(self.optimizer.param_groups, lrs)):
            group["lr"] = lr
            if self.verbose:
                print(f"Epoch={self.epoch}, batch={self.batch}: "
                      f"learning rate of group {i} set to {lr:.4e}.")
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class Eden(LRScheduler):
    """lr = initial_lr * ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25
                       * ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
                       * warmup

    Flat at first, then decaying like batch**-0.5 after about `lr_batches`
    batches and like epoch**-0.5 after about `lr_epochs` epochs.  icefall
    uses initial_lr 0.003, lr_batches 5000, lr_epochs 6 with Eve
    (pruned_transducer_stateless3), and 0.045, 7500, 3.5 with
    warmup_start=0.1 with ScaledAdam (zipformer).

    `warmup` rises linearly from `warmup_start` at batch 0 to 1 at
    `warmup_batches` and stays 1 after.  Give either argument to get the
    zipformer's Eden (the other then defaults to icefall's 500 or 0.5);
    give neither for pruned_transducer_stateless3's Eden, which has no warmup.
    """

    def __init__(self, optimizer: Optimizer, lr_batches: Union[int, float],
                 lr_epochs: Union[int, float],
                 warmup_batches: Optional[Union[int, float]] = None,
                 warmup_start: Optional[float] = None, verbose: bool = False):
        if warmup_batches is None and warmup_start is None:
            warmup_batches, warmup_start = 0.0, 1.0
        self.warmup_batches = 500.0 if warmup_batches is None else warmup_batches
        self.warmup_start = 0.5 if warmup_start is None else warmup_start
        if not 0.0 <= self.warmup_start <= 1.0:
            raise ValueError(f"Eden: warmup_start must be in [0, 1], got {self.warmup_start}")
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        super().__init__(optimizer, verbose)

    def get_lr(self) -> List[float]:
        batch_factor = ((self.batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25
        epoch_factor = ((self.epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        if self.batch >= self.warmup_batches:  # always, without warmup
            return [lr * batch_factor * epoch_factor for lr in self.base_lrs]
        warmup = self.warmup_start + (1.0 - self.warmup_start) * (self.batch / self.warmup_batches)
        return [lr * (batch_factor * epoch_factor) * warmup for lr in self.base_lrs]


def cooldown_factor(epoch: int, batch_in_epoch: int, batches_per_epoch: int,
                    num_epochs: int, cooldown_epochs: float) -> float:
    """The learning-rate multiplier of a linear cooldown over the last
    `cooldown_epochs` of `num_epochs` (warmup-stable-decay's decay phase):
    1 before it, then falling linearly to 0 at the end of epoch `num_epochs`.

    `epoch` counts from 1 and `batch_in_epoch` batches of it are done; with
    `batches_per_epoch` unknown (0) the epoch counts as just begun.
    """
    if cooldown_epochs <= 0:
        return 1.0
    within = min(batch_in_epoch / batches_per_epoch, 1.0) if batches_per_epoch > 0 else 0.0
    left = num_epochs - (epoch - 1 + within)
    return max(0.0, min(1.0, left / cooldown_epochs))


def get_parameter_groups_with_lrs(model: nn.Module, lr: float, include_names: bool = False,
                                  freeze_modules: List[str] = []) -> List[Dict]:
    """Parameter groups for ScaledAdam with per-module learning rates.

    A module with an `lr_scale` attribute (set it after construction:
    `model.encoder.lr_scale = 0.5`) multiplies the lr of every parameter
    inside it; nested scales multiply.  Parameters of the top-level modules
    named in `freeze_modules` (looked up under `module.` for DDP) are left
    out.  Returns one group per distinct lr, in order of first appearance:
    [{"params": [...], "lr": lr}] or, with include_names,
    [{"named_params": [(name, p), ...], "lr": lr}] (ScaledAdam then names
    the parameter that dominates a clipped gradient).
    """
    scales = {name: m.lr_scale for name, m in model.named_modules() if hasattr(m, "lr_scale")}
    by_lr: Dict[float, list] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        top = parts[1] if parts[0] == "module" and len(parts) > 1 else parts[0]
        if top in freeze_modules:
            logging.info(f"Remove {name} from parameters")
            continue
        # icefall's order of multiplication, so equal products give equal keys
        cur_lr = lr * scales.get(parts[0], 1.0) * scales.get("", 1.0)
        for i in range(2, len(parts) + 1):
            cur_lr *= scales.get(".".join(parts[:i]), 1.0)
        by_lr.setdefault(cur_lr, []).append((name, p) if include_names else p)
    key = "named_params" if include_names else "params"
    return [{key: entries, "lr": group_lr} for group_lr, entries in by_lr.items()]

"""The Eve optimizer and the Eden learning-rate schedule of icefall's
pruned_transducer_stateless2/3.

Typical use (icefall's defaults for LibriSpeech)::

    optimizer = Eve(model.parameters(), lr=0.003)
    scheduler = Eden(optimizer, lr_batches=5000, lr_epochs=6)
    for epoch in range(1, num_epochs + 1):
        scheduler.step_epoch(epoch - 1)
        for batch in loader:
            ...; loss.backward(); optimizer.step(); optimizer.zero_grad()
            scheduler.step_batch()
"""

from typing import Dict, List, Optional, Union

import torch
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
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: Dict) -> None:
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("Eve does not support sparse gradients")
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        # Bias-corrected rms of the gradient, and bias-corrected step size.
        denom = (exp_avg_sq.sqrt() * (1 - beta2**step) ** -0.5).add_(group["eps"])
        step_size = group["lr"] / (1 - beta1**step)

        if p.numel() > 1:
            # rms(p) > target_rms  <=>  ||p|| > target_rms * sqrt(numel)
            above = p.norm() > group["target_rms"] * p.numel() ** 0.5
            p.mul_(1 - group["weight_decay"] * above)
        p.addcdiv_(exp_avg, denom, value=-step_size)
        if p.numel() == 1:
            p.clamp_(min=-10.0, max=2.0)


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

    Flat at first, then decaying like batch**-0.5 after about `lr_batches`
    batches and like epoch**-0.5 after about `lr_epochs` epochs.  icefall
    uses initial_lr 0.003, lr_batches 5000, lr_epochs 6 on LibriSpeech.
    """

    def __init__(self, optimizer: Optimizer, lr_batches: Union[int, float],
                 lr_epochs: Union[int, float], verbose: bool = False):
        super().__init__(optimizer, verbose)
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs

    def get_lr(self) -> List[float]:
        batch_factor = ((self.batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25
        epoch_factor = ((self.epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        return [lr * batch_factor * epoch_factor for lr in self.base_lrs]

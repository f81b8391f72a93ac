#!/usr/bin/env python3
"""Train a Zipformer (icefall's zipformer recipe): transducer and/or CTC head,
ScaledAdam with Eden.

Usage, from egs/<dataset>/ASR:

  ./zipformer/train.py --world-size 1 --num-epochs 30 --exp-dir zipformer/exp \\
      --max-duration 1000 --use-fp16 1
  ./zipformer/train.py --use-transducer 1 --use-ctc 1 ...   # both heads
  ./zipformer/train.py --causal 1 ...                       # streaming model
  ./zipformer/train.py --world-size 2 ...   (or torchrun --nproc-per-node 2 ...)
  ./zipformer/train.py --start-epoch 4 ...  /  --start-batch 8000 ...   (resume)

As icefall: the simple-loss weight falls from 1.0 to --simple-loss-scale and
the pruned-loss weight rises from 0.1 to 1.0 over --warm-step batches; the
model's ScheduledFloat schedules see the batch count
batch_idx_train * max_duration * world_size / ref_duration, updated every 10
batches; cuts with fewer than tokens + 2 encoder frames are dropped.
Checkpoints, resume, DDP, logging and Ctrl-C/SIGTERM handling are those of
icefall/trainer.py (see pruned_transducer_stateless3/train.py's notes).
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.threads import set_thread_env  # noqa: E402

set_thread_env()  # before torch is imported; icefall/trainer.py applies the thread count

from icefall.asr_datamodule import AsrDataModule  # noqa: E402
from icefall.trainer import Recipe, TrainingError, add_training_arguments, new_parser, run_training  # noqa: E402
from icefall.utils import AttributeDict, MetricsTracker  # noqa: E402

SUBSAMPLING_FACTOR = 4  # fbank frames per encoder output frame (for the per-frame losses)


def get_parser() -> argparse.ArgumentParser:
    from model import add_model_arguments

    parser = new_parser(__doc__)
    add_training_arguments(parser, exp_dir="zipformer/exp")
    parser.set_defaults(save_every_n=4000, keep_last_k=30, average_period=200)  # icefall's zipformer
    g = parser.add_argument_group("zipformer training")
    g.add_argument("--base-lr", type=float, default=0.045, help="ScaledAdam's learning rate before Eden's factors")
    g.add_argument("--lr-batches", type=float, default=7500, help="Eden: batches for the LR to start decaying")
    g.add_argument("--lr-epochs", type=float, default=3.5, help="Eden: epochs for the LR to start decaying")
    g.add_argument("--ref-duration", type=float, default=600,
                   help="reference batch duration (s): the model's schedules count batches of this size")
    g.add_argument("--prune-range", type=int, default=5, help="symbols per frame in the pruned loss")
    g.add_argument("--rnnt-type", choices=("regular", "modified"), default="regular",
                   help="transducer topology of the losses: regular (icefall's; any number of "
                        "tokens on a frame) or modified (at most one token per frame, as greedy "
                        "search with --max-sym-per-frame 1, modified beam search and sherpa-onnx "
                        "decode)")
    g.add_argument("--lm-scale", type=float, default=0.25, help="lm-only weight in the smoothed simple loss")
    g.add_argument("--am-scale", type=float, default=0.0, help="am-only weight in the smoothed simple loss")
    g.add_argument("--simple-loss-scale", type=float, default=0.5, help="weight of the simple loss after --warm-step")
    g.add_argument("--ctc-loss-scale", type=float, default=0.2,
                   help="weight of the CTC loss (1.0 when there is no transducer head)")
    g.add_argument("--warm-step", type=int, default=2000, help="batches over which the loss weights warm up")
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    if not (args.use_transducer or args.use_ctc):
        raise TrainingError("--use-transducer and --use-ctc are both false: enable at least one")
    if args.warm_step < 1:
        raise TrainingError(f"--warm-step must be at least 1, got {args.warm_step}")


def usable_frames(num_frames: int, config: Dict) -> int:
    """Encoder frames a cut may fill with tokens: icefall keeps a cut when
    frames after subsampling - 2 >= tokens (CTC needs the margin). One
    front end for every config."""
    from model import frames_after_subsampling

    return frames_after_subsampling(num_frames) - 2


def build_model(params: AttributeDict):
    from model import build_model as build, config_from_args

    config = config_from_args(params, params.vocab_size, params.blank_id)
    return build(config), config


def build_optimizer(params: AttributeDict, model):
    from icefall.optim import Eden, ScaledAdam, get_parameter_groups_with_lrs

    optimizer = ScaledAdam(
        get_parameter_groups_with_lrs(model, lr=params.base_lr, include_names=True),
        lr=params.base_lr,  # each group has its own
        clipping_scale=2.0,
    )
    return optimizer, Eden(optimizer, params.lr_batches, params.lr_epochs, warmup_start=0.1)


def before_batch(params: AttributeDict, model) -> None:
    """icefall's set_batch_count(model, get_adjusted_batch_count(params)) every
    10 batches of an epoch; set before every batch here with the value of the
    last of those updates, so that a resumed run sees what an uninterrupted
    one saw."""
    from scaling_schedule import set_batch_count

    batch_idx_train = params.batch_idx_train - params.cur_batch_idx % 10
    set_batch_count(model, batch_idx_train * params.max_duration * params.world_size / params.ref_duration)


def find_unused_parameters(params: AttributeDict) -> bool:
    """Zipformer layers skip whole modules at random early in training (as icefall, ask DDP)."""
    return True


def loss_scales(params: AttributeDict) -> Tuple[float, float]:
    """icefall's warm-up: (simple, pruned) weights, from (1.0, 0.1) at batch 0
    linearly to (--simple-loss-scale, 1.0) at --warm-step."""
    b, warm, s = params.batch_idx_train, params.warm_step, params.simple_loss_scale
    if b >= warm:
        return s, 1.0
    return 1.0 - (b / warm) * (1.0 - s), 0.1 + 0.9 * (b / warm)


def compute_loss(params: AttributeDict, model, batch: Dict, is_training: bool) -> Tuple["torch.Tensor", MetricsTracker]:
    """The weighted transducer (simple + pruned) and CTC losses of a batch, summed over utterances."""
    import torch

    device = next(model.parameters()).device
    feature = batch["inputs"].to(device)
    sup = batch["supervisions"]
    feature_lens = sup["num_frames"].to(device)
    with torch.set_grad_enabled(is_training):
        simple, pruned, ctc = model(
            x=feature, x_lens=feature_lens, y=sup["token_ids"], prune_range=params.prune_range,
            am_scale=params.am_scale, lm_scale=params.lm_scale,
        )
        loss = feature.new_zeros(())
        if params.use_transducer:
            simple_scale, pruned_scale = loss_scales(params)
            loss = loss + simple_scale * simple + pruned_scale * pruned
        if params.use_ctc:
            loss = loss + (params.ctc_loss_scale if params.use_transducer else 1.0) * ctc

    info = MetricsTracker()
    info["frames"] = int((feature_lens // SUBSAMPLING_FACTOR).sum())
    info["loss"] = loss.detach().item()
    if params.use_transducer:
        info["simple_loss"] = simple.detach().item()
        info["pruned_loss"] = pruned.detach().item()
    if params.use_ctc:
        info["ctc_loss"] = ctc.detach().item()
    return loss, info


RECIPE = Recipe(
    build_model=build_model,
    build_optimizer=build_optimizer,
    compute_loss=compute_loss,
    frames_after_subsampling=usable_frames,
    find_unused_parameters=find_unused_parameters,
    before_batch=before_batch,
    check_args=check_args,
    step_scheduler_before_optimizer=True,
    small_grad_scale=True,
)


def main() -> None:
    run_training(get_parser(), RECIPE)


if __name__ == "__main__":
    main()

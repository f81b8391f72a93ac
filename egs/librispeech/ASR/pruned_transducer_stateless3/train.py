#!/usr/bin/env python3
"""Train a pruned_transducer_stateless3 model (Conformer + stateless decoder).

Usage, from egs/<dataset>/ASR:

  # one process
  ./pruned_transducer_stateless3/train.py --world-size 1 --num-epochs 30 \\
      --exp-dir pruned_transducer_stateless3/exp --max-duration 300

  # two processes (DDP; gloo on CPU, nccl on CUDA), or the same through torchrun
  ./pruned_transducer_stateless3/train.py --world-size 2 ...
  torchrun --nproc-per-node 2 ./pruned_transducer_stateless3/train.py ...

  # resume after epoch 3, or from exp/checkpoint-8000.pt
  ./pruned_transducer_stateless3/train.py --start-epoch 4 ...
  ./pruned_transducer_stateless3/train.py --start-batch 8000 ...

Checkpoints (exp-dir): epoch-N.pt every epoch, checkpoint-<batch>.pt every
--save-every-n batches (the last --keep-last-k kept), best-train-loss.pt,
best-valid-loss.pt. Each holds the model, the running-average model, the
optimizer, scheduler, sampler and RNG states and the model config.
Logs go to exp-dir/log/, TensorBoard curves to exp-dir/tensorboard/.
Ctrl-C or SIGTERM: saves checkpoint-<batch>.pt after the current step and
exits (130 or 143); resume with --start-batch <batch>. The loop itself is
icefall/trainer.py's.
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.threads import set_thread_env  # noqa: E402

set_thread_env()  # before torch is imported; icefall/trainer.py applies the thread count

from icefall.asr_datamodule import AsrDataModule  # noqa: E402
from icefall.trainer import Recipe, add_training_arguments, new_parser, run_training  # noqa: E402
from icefall.utils import AttributeDict, MetricsTracker, str2bool  # noqa: E402

def get_parser() -> argparse.ArgumentParser:
    from model import add_model_arguments

    parser = new_parser(__doc__)
    add_training_arguments(parser, exp_dir="pruned_transducer_stateless3/exp")
    g = parser.add_argument_group("pruned_transducer_stateless3")
    g.add_argument("--initial-lr", type=float, default=0.003, help="Eve's learning rate before Eden's decay")
    g.add_argument("--lr-batches", type=float, default=5000, help="Eden: batches for the LR to start decaying")
    g.add_argument("--lr-epochs", type=float, default=6, help="Eden: epochs for the LR to start decaying")
    g.add_argument("--prune-range", type=int, default=5, help="symbols per frame in the pruned loss")
    g.add_argument("--rnnt-type", choices=("regular", "modified"), default="regular",
                   help="transducer topology of the losses: regular (icefall's; any number of "
                        "tokens on a frame) or modified (at most one token per frame, as greedy "
                        "search with --max-sym-per-frame 1, modified beam search and sherpa-onnx "
                        "decode)")
    g.add_argument("--lm-scale", type=float, default=0.25, help="lm-only weight in the smoothed loss")
    g.add_argument("--am-scale", type=float, default=0.0, help="am-only weight in the smoothed loss")
    g.add_argument("--simple-loss-scale", type=float, default=0.5, help="weight of the simple loss")
    g.add_argument("--use-ctc", type=str2bool, default=False,
                   help="add an auxiliary CTC head on the encoder (saved in the model config; "
                        "decode.py can then also use the CTC methods)")
    g.add_argument("--ctc-loss-scale", type=float, default=0.2,
                   help="weight of the CTC loss (with --use-ctc true)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout in the Conformer layers")
    g.add_argument("--layer-dropout", type=float, default=0.075,
                   help="chance that a Conformer layer is nearly bypassed in a training step")
    g.add_argument("--model-warm-step", type=int, default=3000, help="batches of model warm-up")
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def frames_after_subsampling(num_frames: int, config: Dict) -> int:
    """Encoder output frames for ``num_frames`` fbank frames (the model's own rule)."""
    from model import frames_after_subsampling as model_rule

    return model_rule(num_frames, config["subsampling_factor"])


def build_model(params: AttributeDict):
    from model import build_model as build, config_from_args

    config = config_from_args(params, params.vocab_size, params.blank_id)
    model = build({**config, "dropout": params.dropout, "layer_dropout": params.layer_dropout})
    return model, config


def build_optimizer(params: AttributeDict, model):
    from icefall.optim import Eden, Eve

    optimizer = Eve(model.parameters(), lr=params.initial_lr)
    return optimizer, Eden(optimizer, params.lr_batches, params.lr_epochs)


def compute_loss(params: AttributeDict, model, batch: Dict, is_training: bool) -> Tuple["torch.Tensor", MetricsTracker]:
    """The weighted simple + pruned (+ CTC) loss of a batch, summed over utterances.

    Utterances whose loss is not finite are left out (and logged); if none
    is finite the returned loss is nan and the trainer skips the batch.
    """
    import logging

    import torch

    device = next(model.parameters()).device
    feature = batch["inputs"].to(device)
    sup = batch["supervisions"]
    feature_lens = sup["num_frames"].to(device)
    warmup = params.batch_idx_train / params.model_warm_step

    with torch.set_grad_enabled(is_training):
        losses = model(
            x=feature, x_lens=feature_lens, y=sup["token_ids"], prune_range=params.prune_range,
            am_scale=params.am_scale, lm_scale=params.lm_scale,
            warmup=warmup if is_training else 2.0, reduction="none",
        )
        finite = torch.stack([torch.isfinite(x) for x in losses]).all(dim=0)
        if not finite.all():
            cuts = [c.id for c in sup["cut"]] if "cut" in sup else []
            bad = [cuts[i] if cuts else i for i in (~finite).nonzero().flatten().tolist()]
            logging.warning(f"non-finite loss for utterances {bad}; leaving them out")
        # sums over the finite utterances (nan if there are none)
        simple, pruned, *rest = [x[finite].sum() if finite.any() else x.new_tensor(float("nan"))
                                 for x in losses]
        ctc = rest[0] if rest else None  # a model with a CTC head (use_ctc)
        # As icefall: the pruned loss joins only after the warm-up, and
        # gently at first, so that it cannot swamp the simple loss before
        # the alignment is learned.
        w = warmup if is_training else 2.0
        pruned_scale = 0.0 if w < 1.0 else (0.1 if w < 2.0 else 1.0)
        loss = params.simple_loss_scale * simple + pruned_scale * pruned
        if ctc is not None:
            loss = loss + params.ctc_loss_scale * ctc

    info = MetricsTracker()
    info["frames"] = int((feature_lens[finite] // params.subsampling_factor).sum())
    info["utterances"] = int(finite.sum())
    info["loss"] = loss.detach().item()
    info["simple_loss"] = simple.detach().item()
    info["pruned_loss"] = pruned.detach().item()
    if ctc is not None:
        info["ctc_loss"] = ctc.detach().item()
    return loss, info


RECIPE = Recipe(
    build_model=build_model,
    build_optimizer=build_optimizer,
    compute_loss=compute_loss,
    frames_after_subsampling=frames_after_subsampling,
    # Every parameter gets a gradient in every step: layer dropout keeps 10%
    # of a layer (alpha >= 0.1), so DDP need not search for unused ones.
    find_unused_parameters=None,
)


def main() -> None:
    run_training(get_parser(), RECIPE)


if __name__ == "__main__":
    main()

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
"""

import argparse
import copy
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.asr_datamodule import AsrDataModule  # noqa: E402
from icefall.checkpoint import (  # noqa: E402
    atomic_copy,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    update_averaged_model,
)
from icefall.dist import (  # noqa: E402
    all_reduce_sum,
    cleanup_dist,
    free_port,
    launched_by_torchrun,
    setup_dist,
)
from icefall.optim import Eden, Eve  # noqa: E402
from icefall.tokens import load_bpe_model  # noqa: E402
from icefall.utils import AttributeDict, MetricsTracker, get_env_info, setup_logger, str2bool  # noqa: E402
from model import add_model_arguments, build_model, config_from_args  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world-size", type=int, default=1, help="processes for DDP training")
    parser.add_argument("--master-port", type=int, default=0,
                        help="port of the DDP rendezvous with --world-size > 1 (0: a free one)")
    parser.add_argument("--tensorboard", type=str2bool, default=True)
    parser.add_argument("--num-epochs", type=int, default=30)
    parser.add_argument("--start-epoch", type=int, default=1, help="resume from epoch-(N-1).pt if > 1")
    parser.add_argument(
        "--start-batch", type=int, default=0, help="resume from checkpoint-N.pt if > 0 (wins over --start-epoch)"
    )
    parser.add_argument("--exp-dir", type=Path, default=Path("pruned_transducer_stateless3/exp"))
    parser.add_argument("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"))
    parser.add_argument("--initial-lr", type=float, default=0.003)
    parser.add_argument("--lr-batches", type=float, default=5000, help="Eden: batches for the LR to start decaying")
    parser.add_argument("--lr-epochs", type=float, default=6, help="Eden: epochs for the LR to start decaying")
    parser.add_argument("--prune-range", type=int, default=5, help="symbols per frame in the pruned loss")
    parser.add_argument("--lm-scale", type=float, default=0.25, help="lm-only weight in the smoothed loss")
    parser.add_argument("--am-scale", type=float, default=0.0, help="am-only weight in the smoothed loss")
    parser.add_argument("--simple-loss-scale", type=float, default=0.5)
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout in the Conformer layers")
    parser.add_argument("--layer-dropout", type=float, default=0.075,
                        help="chance that a Conformer layer is nearly bypassed in a training step")
    parser.add_argument("--model-warm-step", type=int, default=3000, help="batches of model warm-up")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--save-every-n", type=int, default=8000, help="save checkpoint-<batch>.pt every N batches")
    parser.add_argument("--keep-last-k", type=int, default=20, help="batch checkpoints to keep (0: all)")
    parser.add_argument("--average-period", type=int, default=100, help="update model_avg every N batches")
    parser.add_argument("--use-fp16", type=str2bool, default=False, help="mixed precision (CUDA only)")
    parser.add_argument("--log-interval", type=int, default=50)
    parser.add_argument("--max-bad-batches", type=int, default=20, help="stop after this many non-finite batches in a row")
    parser.add_argument("--max-batches", type=int, default=0, help="stop after this many batches in all (0: no limit)")
    parser.add_argument("--min-duration", type=float, default=1.0, help="drop shorter training cuts (s)")
    parser.add_argument("--max-cut-duration", type=float, default=20.0, help="drop longer training cuts (s)")
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def get_params(args: argparse.Namespace) -> AttributeDict:
    params = AttributeDict(
        best_train_loss=float("inf"),
        best_valid_loss=float("inf"),
        best_train_epoch=-1,
        best_valid_epoch=-1,
        batch_idx_train=0,
        cur_epoch=1,
        cur_batch_idx=0,
        env_info=get_env_info(),
    )
    params.update(vars(args))
    return params


# ------------------------------------------------------------------ the loss


def compute_loss(
    params: AttributeDict, model: nn.Module, sp, batch: Dict, is_training: bool
) -> Tuple[torch.Tensor, MetricsTracker]:
    """The weighted simple + pruned loss of a batch, summed over utterances.

    Utterances whose loss is not finite are left out (and logged); if none
    is finite the returned loss is nan and the caller skips the batch.
    """
    device = next(model.parameters()).device
    feature = batch["inputs"].to(device)
    sup = batch["supervisions"]
    feature_lens = sup["num_frames"].to(device)
    y = sp.encode(sup["text"], out_type=int)
    warmup = params.batch_idx_train / params.model_warm_step

    with torch.set_grad_enabled(is_training):
        simple, pruned = model(
            x=feature, x_lens=feature_lens, y=y, prune_range=params.prune_range,
            am_scale=params.am_scale, lm_scale=params.lm_scale,
            warmup=warmup if is_training else 2.0, reduction="none",
        )
        finite = torch.isfinite(simple) & torch.isfinite(pruned)
        if not finite.all():
            cuts = [c.id for c in sup["cut"]] if "cut" in sup else []
            bad = [cuts[i] if cuts else i for i in (~finite).nonzero().flatten().tolist()]
            logging.warning(f"non-finite loss for utterances {bad}; leaving them out")
        simple = simple[finite].sum() if finite.any() else simple.new_tensor(float("nan"))
        pruned = pruned[finite].sum() if finite.any() else pruned.new_tensor(float("nan"))
        # As icefall: the pruned loss joins only after the warm-up, and
        # gently at first, so that it cannot swamp the simple loss before
        # the alignment is learned.
        w = warmup if is_training else 2.0
        pruned_scale = 0.0 if w < 1.0 else (0.1 if w < 2.0 else 1.0)
        loss = params.simple_loss_scale * simple + pruned_scale * pruned

    info = MetricsTracker()
    info["frames"] = int((feature_lens[finite] // params.subsampling_factor).sum())
    info["utterances"] = int(finite.sum())
    info["loss"] = loss.detach().item()
    info["simple_loss"] = simple.detach().item()
    info["pruned_loss"] = pruned.detach().item()
    return loss, info


def compute_validation_loss(params, model, sp, valid_dl) -> MetricsTracker:
    model.eval()
    tot = MetricsTracker()
    with torch.no_grad():
        for batch in valid_dl:
            loss, info = compute_loss(params, model, sp, batch, is_training=False)
            if math.isfinite(info["loss"]):
                tot = tot + info
    tot.reduce(next(model.parameters()).device)
    model.train()
    return tot


# ------------------------------------------------------------- RNG state


def get_rng_state() -> Dict[str, Any]:
    """Every random state a resumed run needs to draw the same numbers."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fix_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------- the loop


class Trainer:
    """The state of one training process and the epoch loop."""

    def __init__(self, params, model, model_avg, optimizer, scheduler, scaler, sp, rank, tb_writer):
        self.params, self.model, self.model_avg = params, model, model_avg
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.sp, self.rank, self.tb = sp, rank, tb_writer
        self.device = next(model.parameters()).device
        self.bad_in_a_row = 0

    def save(self, filename: Path, sampler) -> None:
        p = self.params
        info = {
            k: p[k]
            for k in (
                "best_train_loss", "best_valid_loss", "best_train_epoch", "best_valid_epoch",
                "batch_idx_train", "cur_epoch", "cur_batch_idx", "average_period", "env_info",
            )
        }
        info["rng_state"] = get_rng_state()
        save_checkpoint(
            filename, self.model, params=info, model_avg=self.model_avg, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.scaler, sampler=sampler,
            config=config_from_args(p, p.vocab_size, p.blank_id), rank=self.rank,
        )

    def train_one_epoch(self, train_dl, valid_dl, rng_state: Optional[Dict] = None) -> bool:
        """Returns False when --max-batches stopped the epoch early.

        ``rng_state``: when resuming mid-epoch, the random state saved with
        the checkpoint; it is restored after the data iterator is created
        (which draws a seed), so the resumed run draws what the
        uninterrupted run drew.
        """
        p, model = self.params, self.model
        model.train()
        tot = MetricsTracker()
        audio_seconds, start = 0.0, time.time()
        batches = iter(train_dl)
        if rng_state is not None:
            set_rng_state(rng_state)
        for batch in batches:
            if p.max_batches and p.batch_idx_train >= p.max_batches:
                return False
            p.batch_idx_train += 1
            p.cur_batch_idx += 1
            batch_size = len(batch["supervisions"]["text"])
            with torch.autocast(self.device.type, enabled=self.scaler.is_enabled()):
                loss, info = compute_loss(p, model, self.sp, batch, is_training=True)
            if not self._step(loss, info):
                continue
            audio_seconds += float(batch["supervisions"]["num_frames"].sum()) * 0.01
            tot = tot * (1 - 1 / 200) + info  # icefall's decaying running sum
            self.scheduler.step_batch(p.batch_idx_train)
            if self.rank == 0 and p.batch_idx_train % p.average_period == 0:
                update_averaged_model(p.average_period, p.batch_idx_train, model, self.model_avg)
            if p.batch_idx_train % p.save_every_n == 0:
                self.save(p.exp_dir / f"checkpoint-{p.batch_idx_train}.pt", train_dl.sampler)
                remove_checkpoints(p.exp_dir, p.keep_last_k, rank=self.rank)
            if p.batch_idx_train % p.log_interval == 0:
                lr = self.scheduler.get_last_lr()[0]
                logging.info(
                    f"Epoch {p.cur_epoch}, batch {p.cur_batch_idx} (global {p.batch_idx_train}), "
                    f"batch size {batch_size}, loss per frame: {_fmt(info)}; running {_fmt(tot)}; lr {lr:.3e}"
                )
                if self.tb is not None:
                    info.write_summary(self.tb, "train/current_", p.batch_idx_train)
                    tot.write_summary(self.tb, "train/tot_", p.batch_idx_train)
                    self.tb.add_scalar("train/learning_rate", lr, p.batch_idx_train)
        if p.cur_batch_idx == 0:
            raise RuntimeError(
                f"epoch {p.cur_epoch} had no training batches: too few cuts for --max-duration "
                f"{p.max_duration} and --num-buckets {p.num_buckets} (with --drop-last {p.drop_last})"
            )
        elapsed = time.time() - start
        throughput = all_reduce_sum(torch.tensor([audio_seconds], dtype=torch.float64)).item()
        logging.info(
            f"Epoch {p.cur_epoch}: {throughput:.0f} s of audio in {elapsed:.0f} s, "
            f"throughput {throughput / max(elapsed, 1e-9):.1f} s of audio per second"
        )
        if valid_dl is not None:
            valid = compute_validation_loss(p, model, self.sp, valid_dl)
            logging.info(f"Epoch {p.cur_epoch}, validation: {_fmt(valid)}")
            if self.tb is not None:
                valid.write_summary(self.tb, "train/valid_", p.batch_idx_train)
            self._track_best("valid", valid)
        self._track_best("train", tot)
        return True

    def _step(self, loss: torch.Tensor, info: MetricsTracker) -> bool:
        """Backward + optimizer step; False (and no step) for a non-finite loss."""
        p = self.params
        # Every rank must agree to skip, or DDP's all-reduce would hang.
        bad = all_reduce_sum(torch.tensor([0.0 if math.isfinite(info["loss"]) else 1.0])).item()
        if bad:
            self.bad_in_a_row += 1
            logging.warning(
                f"batch {p.batch_idx_train}: non-finite loss, skipped "
                f"({self.bad_in_a_row} in a row, at most {p.max_bad_batches})"
            )
            if self.bad_in_a_row >= p.max_bad_batches:
                raise RuntimeError(
                    f"{self.bad_in_a_row} batches in a row had a non-finite loss; stopping. "
                    f"Lower --initial-lr, check the data, or resume from the last checkpoint in {p.exp_dir}"
                )
            self.optimizer.zero_grad()
            return False
        self.bad_in_a_row = 0
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        return True

    def _track_best(self, which: str, tracker: MetricsTracker) -> None:
        p = self.params
        loss = tracker.norm_items().get("loss", float("inf"))
        if loss < p[f"best_{which}_loss"]:
            p[f"best_{which}_loss"] = loss
            p[f"best_{which}_epoch"] = p.cur_epoch


def _fmt(t: MetricsTracker) -> str:
    n = t.norm_items()
    return ", ".join(f"{k} {n[k]:.6g}" for k in ("loss", "simple_loss", "pruned_loss") if k in n)


def filter_cuts(cuts, sp, params):
    """Drop cuts that are too short or long, or have more tokens than frames."""

    def keep(c) -> bool:
        if not params.min_duration <= c.duration <= params.max_cut_duration:
            return False
        frames_after = ((c.num_frames - 7) // 2 + 1) // 2 if c.num_frames else int(c.duration * 25)
        return frames_after >= len(sp.encode(c.supervisions[0].text, out_type=str))

    return cuts.filter(keep)


def resume(params, model, model_avg, optimizer, scheduler, scaler) -> Optional[Dict]:
    """Load the checkpoint --start-batch/--start-epoch ask for, if any."""
    if params.start_batch > 0:
        filename = params.exp_dir / f"checkpoint-{params.start_batch}.pt"
    elif params.start_epoch > 1:
        filename = params.exp_dir / f"epoch-{params.start_epoch - 1}.pt"
    else:
        return None
    ckpt = load_checkpoint(filename, model, model_avg=model_avg, optimizer=optimizer, scheduler=scheduler)
    if "grad_scaler" in ckpt:
        scaler.load_state_dict(ckpt["grad_scaler"])
    for k in ("best_train_loss", "best_valid_loss", "best_train_epoch", "best_valid_epoch", "batch_idx_train"):
        params[k] = ckpt[k]
    if params.start_batch > 0:
        params.cur_epoch, params.cur_batch_idx = ckpt["cur_epoch"], ckpt["cur_batch_idx"]
    else:
        params.cur_epoch, params.cur_batch_idx = params.start_epoch, 0
    logging.info(f"resumed from {filename} (global batch {params.batch_idx_train})")
    return ckpt


def run(rank: int, world_size: int, args: argparse.Namespace) -> None:
    params = get_params(args)
    rank, world_size, device = setup_dist(rank, world_size, params.master_port)
    fix_random_seed(params.seed)
    params.exp_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(params.exp_dir / "log" / "log-train")
    logging.info(f"Training started on {device} with {world_size} process(es), "
                 f"{torch.get_num_threads()} CPU thread(s) each")
    logging.info({k: v for k, v in params.items()})

    sp = load_bpe_model(params.bpe_model)
    params.vocab_size, params.blank_id = sp.get_piece_size(), 0
    config = config_from_args(params, params.vocab_size, params.blank_id)
    config.update(dropout=params.dropout, layer_dropout=params.layer_dropout)
    model = build_model(config)
    logging.info(f"Number of model parameters: {sum(p.numel() for p in model.parameters())}")
    model_avg = copy.deepcopy(model).to(torch.float64) if rank == 0 else None
    model.to(device)
    optimizer = Eve(model.parameters(), lr=params.initial_lr)
    scheduler = Eden(optimizer, params.lr_batches, params.lr_epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=params.use_fp16 and device.type == "cuda")
    if params.use_fp16 and device.type != "cuda":
        logging.warning("--use-fp16 needs CUDA; training in float32")
    ckpt = resume(params, model, model_avg, optimizer, scheduler, scaler)
    if world_size > 1:
        # Layer dropout skips whole layers, so some parameters get no gradient.
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    data = AsrDataModule(args)
    train_cuts = filter_cuts(data.train_cuts(), sp, params)
    valid_dl = data.valid_dataloaders(data.valid_cuts())
    tb = None
    if rank == 0 and params.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(log_dir=str(params.exp_dir / "tensorboard"))
    trainer = Trainer(params, model, model_avg, optimizer, scheduler, scaler, sp, rank, tb)

    first_epoch = params.cur_epoch
    for epoch in range(first_epoch, params.num_epochs + 1):
        params.cur_epoch = epoch
        scheduler.step_epoch(epoch - 1)
        mid_epoch = ckpt is not None and epoch == first_epoch and params.start_batch > 0
        if not mid_epoch:
            fix_random_seed(params.seed + epoch - 1)
            params.cur_batch_idx = 0
        train_dl = data.train_dataloaders(train_cuts, sampler_state_dict=ckpt["sampler"] if mid_epoch else None)
        if not mid_epoch:
            train_dl.sampler.set_epoch(epoch - 1)
        if tb is not None:
            tb.add_scalar("train/epoch", epoch, params.batch_idx_train)
        finished = trainer.train_one_epoch(train_dl, valid_dl, ckpt["rng_state"] if mid_epoch else None)
        if not finished:
            logging.info(f"stopping after --max-batches {params.max_batches}")
            break
        filename = params.exp_dir / f"epoch-{epoch}.pt"
        trainer.save(filename, train_dl.sampler)
        if rank == 0:
            for which in ("train", "valid"):
                if params[f"best_{which}_epoch"] == epoch:
                    atomic_copy(filename, params.exp_dir / f"best-{which}-loss.pt")
    logging.info("Done!")
    if tb is not None:
        tb.close()
    cleanup_dist()


def main() -> None:
    args = get_parser().parse_args()
    args.exp_dir = Path(args.exp_dir)
    if args.world_size > 1 and not launched_by_torchrun():
        if args.master_port == 0:
            args.master_port = free_port()
        mp.spawn(run, args=(args.world_size, args), nprocs=args.world_size, join=True)
    else:
        run(rank=0, world_size=1, args=args)


if __name__ == "__main__":
    main()

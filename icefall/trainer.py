"""The training driver shared by every recipe's ``train.py``.

A recipe describes only what is its own (a :class:`Recipe`): its flags, how
to build the model and the optimizer/scheduler, its loss, and how many
frames its encoder keeps. Everything else lives here once: the shared flags,
resume, the epoch loop, non-finite batch skipping agreed by all DDP ranks,
validation, ``best-*.pt``, the running-average model, checkpoints, the
learning-rate cooldown, TensorBoard, progress with an ETA, the exp-dir lock, SIGINT/SIGTERM, and the
DDP launch (``--world-size N`` spawns; ``torchrun`` works too). ::

    def main():
        run_training(get_parser(), Recipe(build_model=..., build_optimizer=...,
                                          compute_loss=..., frames_after_subsampling=...))

Files in ``--exp-dir``: ``epoch-N.pt`` after each epoch,
``checkpoint-<batch>.pt`` every ``--save-every-n`` batches (the newest
``--keep-last-k`` kept), ``best-train-loss.pt``, ``best-valid-loss.pt``,
``log/log-train-*``, ``tensorboard/``, and ``.lock`` while a run is going.

Stopping: Ctrl-C (SIGINT) and SIGTERM both finish the current step, save
``checkpoint-<batch>.pt`` of that state, and exit with 128 + the signal
number (130, 143) and a one-line message saying how to resume.

Resuming owns the exp dir from the resume point on: ``epoch-*.pt``,
``checkpoint-*.pt`` and ``best-*.pt`` written after it by the abandoned run
are moved into ``abandoned-<time>/`` (logged), never deleted.

torch, lhotse and tensorboard are imported inside the functions that need
them, so that ``train.py --help`` is quick.
"""

import argparse
import functools
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from icefall.utils import (AttributeDict, MetricsTracker, fix_random_seed, get_rng_state, log_timestamp,
                           set_rng_state, str2bool)

# Keys of params saved in every checkpoint and restored on resume.
_SAVED_PARAMS = (
    "best_train_loss", "best_valid_loss", "best_train_epoch", "best_valid_epoch",
    "batch_idx_train", "cur_epoch", "cur_batch_idx", "average_period", "batches_per_epoch",
)
_EXIT_USAGE = 2


class TrainingError(Exception):
    """A user mistake (bad flag, missing file, wrong folder): printed as one line, exit 2."""


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped training after a step (and a checkpoint was saved)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Recipe:
    """What a recipe's train.py supplies. Functions must be module-level (DDP
    spawn pickles them by name).

    - ``build_model(params) -> (model, config)``: ``config`` is the plain dict
      saved as ``"config"`` in every checkpoint (it rebuilds the model).
    - ``build_optimizer(params, model) -> (optimizer, scheduler)``; the
      scheduler has ``step_batch(batch_idx_train)`` and ``step_epoch(epoch)``
      (icefall's Eden).
    - ``compute_loss(params, model, batch, is_training) -> (loss, MetricsTracker)``:
      ``batch["supervisions"]["token_ids"]`` holds the BPE ids of each text.
      The tracker has ``frames``; ``loss`` and each other entry but
      ``utterances`` are logged per frame. A non-finite ``loss`` skips the batch.
    - ``frames_after_subsampling(num_frames, config) -> int``, ``config``
      being what ``build_model`` returned: cuts with fewer frames than tokens
      after it are dropped (training and validation).
    - ``find_unused_parameters(params) -> bool``: whether DDP must look for
      parameters without gradients (e.g. layer dropout skips layers).
    - ``before_batch(params, model)``: called before each training batch,
      with ``params.batch_idx_train`` and ``params.cur_batch_idx`` not yet
      counting it (e.g. zipformer's ``set_batch_count``).
    - ``check_args(args)``: raise :class:`TrainingError` for bad recipe flags.
    - ``step_scheduler_before_optimizer``: icefall's zipformer steps Eden
      between backward and the optimizer step (pts3: after the step).
    - ``small_grad_scale``: icefall's zipformer fp16 grad scaler: starts at
      1.0 and is doubled every 25/100/400 batches while below 2/8/32.
    """

    build_model: Callable
    build_optimizer: Callable
    compute_loss: Callable
    frames_after_subsampling: Callable[[int, Dict], int]
    find_unused_parameters: Optional[Callable] = None
    before_batch: Optional[Callable] = None
    check_args: Optional[Callable] = None
    step_scheduler_before_optimizer: bool = False
    small_grad_scale: bool = False


# ---------------------------------------------------------------- flags


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default and keeps the description's line breaks."""


def new_parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def add_training_arguments(parser: argparse.ArgumentParser, exp_dir: str) -> None:
    """The flags every recipe's train.py shares (icefall's names and defaults)."""
    g = parser.add_argument_group("training")
    g.add_argument("--world-size", type=int, default=1, help="processes for DDP training")
    g.add_argument("--master-port", type=int, default=0,
                   help="port of the DDP rendezvous with --world-size > 1 (0: a free one)")
    g.add_argument("--tensorboard", type=str2bool, default=True, help="write TensorBoard curves to exp-dir/tensorboard")
    g.add_argument("--num-epochs", type=int, default=30, help="train up to and including this epoch")
    g.add_argument("--start-epoch", type=int, default=1, help="resume from epoch-(N-1).pt if > 1")
    g.add_argument("--start-batch", type=int, default=0,
                   help="resume from checkpoint-N.pt if > 0 (wins over --start-epoch)")
    g.add_argument("--exp-dir", type=Path, default=Path(exp_dir), help="where checkpoints and logs go")
    g.add_argument("--bpe-model", type=Path, default=Path("data/lang_bpe_500/bpe.model"),
                   help="the sentencepiece model of prepare.sh")
    g.add_argument("--seed", type=int, default=42, help="random seed (model init, shuffling, dropout)")
    g.add_argument("--save-every-n", type=int, default=8000, help="save checkpoint-<batch>.pt every N batches")
    g.add_argument("--keep-last-k", type=int, default=20, help="batch checkpoints to keep (0: all)")
    g.add_argument("--average-period", type=int, default=100, help="update the running-average model every N batches")
    g.add_argument("--use-fp16", type=str2bool, default=False, help="float16 autocast with a grad scaler (CUDA only)")
    g.add_argument("--use-bf16", type=str2bool, default=False, help="bfloat16 autocast (CPU or CUDA)")
    g.add_argument("--log-interval", type=int, default=50, help="log the loss every N batches")
    g.add_argument("--max-bad-batches", type=int, default=20,
                   help="stop after this many non-finite batches in a row")
    g.add_argument("--max-batches", type=int, default=0, help="stop after this many batches in all (0: no limit)")
    g.add_argument("--min-duration", type=float, default=1.0, help="drop shorter training cuts (seconds)")
    g.add_argument("--max-cut-duration", type=float, default=20.0, help="drop longer training cuts (seconds)")
    g.add_argument("--subword-sampling-alpha", type=float, default=0.0,
                   help="subword regularisation: each training transcript is segmented by sampling "
                        "from the unigram sentencepiece model (alpha: its smoothing, 0 < alpha <= 1, lower "
                        "samples more varied, shorter pieces); 0: always the best segmentation, as icefall")
    g.add_argument("--lr-cooldown-epochs", type=float, default=0.0,
                   help="over the last N of --num-epochs, scale the scheduler's learning rate down linearly "
                        "to 0 at the end (0: no cooldown, as icefall; at most --num-epochs - 1)")


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Say which values each boolean flag takes; every flag must have help."""
    for action in parser._actions:
        if action.type is str2bool and "true/false" not in (action.help or ""):
            action.help = (action.help or "").rstrip() + " (true/false, yes/no or 1/0)"
        if not action.help:
            raise ValueError(f"flag {action.option_strings} has no help text")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuse flag values and combinations that cannot work (one line each)."""
    positive = ("world_size", "num_epochs", "start_epoch", "save_every_n", "average_period", "log_interval",
                "max_bad_batches")
    for name in positive:
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("start_batch", "keep_last_k", "max_batches"):
        if getattr(args, name) < 0:
            raise TrainingError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if not 0 <= args.subword_sampling_alpha <= 1:
        raise TrainingError(f"--subword-sampling-alpha must be in [0, 1], got {args.subword_sampling_alpha}")
    if args.use_fp16 and args.use_bf16:
        raise TrainingError("--use-fp16 and --use-bf16 exclude each other: choose one")
    if args.start_epoch > args.num_epochs:
        raise TrainingError(f"--start-epoch {args.start_epoch} is after --num-epochs {args.num_epochs}")
    if not 0 <= args.lr_cooldown_epochs <= args.num_epochs - 1:
        # The first epoch measures how many batches an epoch has.
        raise TrainingError(f"--lr-cooldown-epochs must be in [0, --num-epochs - 1 = {args.num_epochs - 1}], "
                            f"got {args.lr_cooldown_epochs}")
    if args.max_batches and args.start_batch >= args.max_batches:
        raise TrainingError(f"--max-batches {args.max_batches} is not after --start-batch {args.start_batch}")
    if args.min_duration > args.max_cut_duration:
        raise TrainingError(f"--min-duration {args.min_duration} is above --max-cut-duration {args.max_cut_duration}")


def resume_filename(args) -> Optional[Path]:
    """The checkpoint --start-batch/--start-epoch ask for, or None for a fresh start."""
    if args.start_batch > 0:
        return Path(args.exp_dir) / f"checkpoint-{args.start_batch}.pt"
    if args.start_epoch > 1:
        return Path(args.exp_dir) / f"epoch-{args.start_epoch - 1}.pt"
    return None


def check_inputs(args: argparse.Namespace) -> None:
    """Check the files a run needs before any process starts (one-line errors)."""
    from icefall.checkpoint import CheckpointError, find_checkpoints, load_file
    from icefall.tokens import TokenFileError, load_bpe_model

    hint = "" if Path("data").is_dir() else f" (no data/ in {Path.cwd()}: run from egs/<dataset>/ASR)"
    if not Path(args.bpe_model).is_file():
        raise TrainingError(f"--bpe-model {args.bpe_model}: not found{hint}")
    try:
        load_bpe_model(args.bpe_model)
    except TokenFileError as e:
        raise TrainingError(f"--bpe-model {e}") from None
    mdir = Path(args.manifest_dir)
    if not mdir.is_dir():
        raise TrainingError(f"--manifest-dir {mdir}: not found{hint or '; run prepare.sh first'}")
    from icefall.asr_datamodule import AsrDataModule, CORPORA

    try:
        data = AsrDataModule(args)
    except (FileNotFoundError, ValueError) as e:
        raise TrainingError(f"{e}{hint}") from None
    parts = CORPORA[data.dataset]["train_full" if getattr(args, "full_libri", False) else "train"]
    for part in parts + CORPORA[data.dataset]["valid"]:
        if not data.cuts_path(part).is_file():
            raise TrainingError(f"{data.cuts_path(part)}: cut file not found; run the fbank stage of prepare.sh{hint}")
    filename = resume_filename(args)
    if filename is not None:
        flag = f"--start-batch {args.start_batch}" if args.start_batch > 0 else f"--start-epoch {args.start_epoch}"
        if not filename.is_file():
            exp = Path(args.exp_dir)
            have = sorted(p.name for p in exp.glob("epoch-*.pt")) + [p.name for p in find_checkpoints(exp)][::-1]
            raise TrainingError(f"{flag}: {filename} not found; {exp} has "
                                + (", ".join(have) if have else "no epoch-*.pt or checkpoint-*.pt"))
        try:
            load_file(filename)
        except CheckpointError as e:
            raise TrainingError(f"{flag}: {e}") from None


# ----------------------------------------------------------------- signals


class StopFlag:
    """Set by SIGINT/SIGTERM; training stops after the current step."""

    def __init__(self):
        self.signum = 0

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if not self.signum:
            logging.warning(f"{signal.Signals(signum).name} received: stopping after the current step "
                            f"(a checkpoint will be saved)")
        self.signum = signum


# ------------------------------------------------------------- the loop


def _fmt(t: MetricsTracker) -> str:
    n = t.norm_items()
    return ", ".join(f"{k} {v:.6g}" for k, v in n.items() if k != "utterances")


def refine_epoch_estimate(estimate: int, batch_idx: int, batches_done: int, audio_done: float,
                          epoch_audio: float) -> int:
    """Batches in an epoch not yet seen end to end: ``estimate`` (the epoch's
    audio over --max-duration) until batches have been trained, then the
    epoch's audio per process ``epoch_audio`` over the audio per batch so far
    (``audio_done`` seconds in ``batches_done`` batches; bucketed batches are
    not filled to --max-duration), and never below ``batch_idx``."""
    if batches_done > 0 and audio_done > 0 and epoch_audio > 0:
        estimate = round(epoch_audio * batches_done / audio_done)
    return max(estimate, batch_idx)


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Trainer:
    """The state of one training process and the epoch loop."""

    def __init__(self, params, recipe: Recipe, model, model_avg, optimizer, scheduler, scaler, sp,
                 rank: int, tb_writer, config: Dict, stop: StopFlag):
        import torch

        self.params, self.recipe, self.model, self.model_avg = params, recipe, model, model_avg
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.sp, self.rank, self.tb, self.config, self.stop = sp, rank, tb_writer, config, stop
        self.device = next(model.parameters()).device
        self.bad_in_a_row = 0
        self.step_lr = 0.0  # the learning rate of the last update, for the log
        self.autocast_dtype = torch.bfloat16 if params.use_bf16 else torch.float16
        self.autocast = bool(params.use_bf16) or scaler.is_enabled()
        self.run_start = time.time()
        self.run_start_batch = params.batch_idx_train

    def save(self, filename: Path, sampler) -> None:
        from icefall.checkpoint import save_checkpoint

        p = self.params
        info = {k: p[k] for k in _SAVED_PARAMS}
        info["env_info"] = p.env_info
        info["rng_state"] = get_rng_state()
        save_checkpoint(
            filename, self.model, params=info, model_avg=self.model_avg, optimizer=self.optimizer,
            scheduler=self.scheduler, scaler=self.scaler, sampler=sampler, config=self.config, rank=self.rank,
        )

    def _add_tokens(self, batch: Dict, training: bool) -> Dict:
        sup = batch["supervisions"]
        alpha = self.params.subword_sampling_alpha
        if training and alpha > 0:
            from icefall.tokens import sample_segmentations

            sup["token_ids"] = sample_segmentations(self.sp, sup["text"], alpha,
                                                    seed=(self.params.seed, self.params.batch_idx_train, self.rank))
        else:
            sup["token_ids"] = self.sp.encode(sup["text"], out_type=int)
        return batch

    def train_one_epoch(self, train_dl, valid_dl, rng_state: Optional[Dict] = None) -> bool:
        """Returns False when --max-batches stopped the epoch early.

        ``rng_state``: when resuming mid-epoch, the random state saved with
        the checkpoint; it is restored after the data iterator is created
        (which draws a seed), so the resumed run draws what the
        uninterrupted run drew.
        """
        import torch

        from icefall.checkpoint import remove_checkpoints, update_averaged_model
        from icefall.dist import all_reduce_sum

        p, model = self.params, self.model
        model.train()
        tot = MetricsTracker()
        audio_seconds, start, start_idx = 0.0, time.time(), p.cur_batch_idx
        batches = iter(train_dl)
        if rng_state is not None:
            set_rng_state(rng_state)
        for batch in batches:
            if p.max_batches and p.batch_idx_train >= p.max_batches:
                return False
            if self.recipe.before_batch is not None:
                self.recipe.before_batch(p, model)
            p.batch_idx_train += 1
            p.cur_batch_idx += 1
            batch_size = len(batch["supervisions"]["text"])
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast):
                loss, info = self.recipe.compute_loss(p, model, self._add_tokens(batch, True), True)
            stepped = self._step(loss, info)
            if stepped:
                audio_seconds += float(batch["supervisions"]["num_frames"].sum()) * 0.01
                tot = tot * (1 - 1 / 200) + info  # icefall's decaying running sum
                if not self.recipe.step_scheduler_before_optimizer:
                    self.step_scheduler()
                if self.recipe.small_grad_scale and self.scaler.is_enabled():
                    self._grow_grad_scale(p.cur_batch_idx - 1)
                if self.rank == 0 and p.batch_idx_train % p.average_period == 0:
                    update_averaged_model(p.average_period, p.batch_idx_train, model, self.model_avg)
                if p.batch_idx_train % p.save_every_n == 0:
                    self.save(p.exp_dir / f"checkpoint-{p.batch_idx_train}.pt", train_dl.sampler)
                    remove_checkpoints(p.exp_dir, p.keep_last_k, rank=self.rank)
                if p.batch_idx_train % p.log_interval == 0:
                    self._log_batch(info, tot, batch_size, start, start_idx, audio_seconds)
            if self._stop_agreed():
                filename = p.exp_dir / f"checkpoint-{p.batch_idx_train}.pt"
                self.save(filename, train_dl.sampler)
                raise TrainingStopped(self.stop.signum or signal.SIGTERM)
        if p.cur_batch_idx == 0:
            raise RuntimeError(
                f"epoch {p.cur_epoch} had no training batches: too few cuts for --max-duration "
                f"{p.max_duration} and --num-buckets {p.num_buckets} (with --drop-last {p.drop_last})"
            )
        p.batches_per_epoch = p.cur_batch_idx
        p.epoch_audio_estimate = 0  # the epoch's length is known now
        elapsed = time.time() - start
        throughput = all_reduce_sum(torch.tensor([audio_seconds], dtype=torch.float64)).item()
        logging.info(
            f"Epoch {p.cur_epoch}: {throughput:.0f} s of audio in {elapsed:.0f} s, "
            f"throughput {throughput / max(elapsed, 1e-9):.1f} s of audio per second"
        )
        if valid_dl is not None:
            valid = self.validate(valid_dl)
            logging.info(f"Epoch {p.cur_epoch}, validation: {_fmt(valid)}")
            if self.tb is not None:
                valid.write_summary(self.tb, "train/valid_", p.batch_idx_train)
            self._track_best("valid", valid)
        self._track_best("train", tot)
        return True

    def _log_batch(self, info, tot, batch_size: int, start: float, start_idx: int, audio_seconds: float) -> None:
        """``audio_seconds``: audio this process trained on since ``start``."""
        p = self.params
        lr = self.step_lr
        per_epoch = p.batches_per_epoch or 0
        done = p.cur_batch_idx - start_idx
        if per_epoch and getattr(p, "epoch_audio_estimate", 0):
            per_epoch = refine_epoch_estimate(per_epoch, p.cur_batch_idx, done, audio_seconds,
                                              p.epoch_audio_estimate)
        per_batch = (time.time() - start) / max(done, 1)
        progress, eta = f"{p.cur_batch_idx}", ""
        if per_epoch:
            left_epoch = max(per_epoch - p.cur_batch_idx, 0)
            left_run = left_epoch + per_epoch * (p.num_epochs - p.cur_epoch)
            if p.max_batches:
                left_run = min(left_run, p.max_batches - p.batch_idx_train)
                left_epoch = min(left_epoch, left_run)
            progress = f"{p.cur_batch_idx}/{per_epoch}"
            eta = f"; ETA epoch {_hms(left_epoch * per_batch)}, run {_hms(left_run * per_batch)}"
        logging.info(
            f"Epoch {p.cur_epoch}, batch {progress} (global {p.batch_idx_train}), "
            f"batch size {batch_size}, loss per frame: {_fmt(info)}; running {_fmt(tot)}; lr {lr:.3e}; "
            f"{per_batch:.2f} s per batch, {audio_seconds / max(time.time() - start, 1e-9):.1f} s of audio "
            f"per second{eta}"
        )
        if self.tb is not None:
            info.write_summary(self.tb, "train/current_", p.batch_idx_train)
            tot.write_summary(self.tb, "train/tot_", p.batch_idx_train)
            self.tb.add_scalar("train/learning_rate", lr, p.batch_idx_train)

    def validate(self, valid_dl) -> MetricsTracker:
        import torch

        model = self.model
        model.eval()
        tot = MetricsTracker()
        with torch.no_grad():
            for batch in valid_dl:
                loss, info = self.recipe.compute_loss(self.params, model, self._add_tokens(batch, False), False)
                if math.isfinite(info["loss"]):
                    tot = tot + info
        tot.reduce(self.device)
        model.train()
        return tot

    def step_scheduler(self) -> None:
        """The scheduler's per-batch step, then --lr-cooldown-epochs."""
        self.scheduler.step_batch(self.params.batch_idx_train)
        self.cool_down()

    def cool_down(self) -> None:
        """Scale the learning rates the scheduler just set by the cooldown
        factor (the scheduler recomputes them from its base rates each step)."""
        from icefall.optim import cooldown_factor

        p = self.params
        factor = cooldown_factor(p.cur_epoch, p.cur_batch_idx, p.batches_per_epoch or 0, p.num_epochs,
                                 p.get("lr_cooldown_epochs", 0.0))
        if factor < 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= factor

    def _step(self, loss, info: MetricsTracker) -> bool:
        """Backward + optimizer step; False (and no step) for a non-finite loss."""
        import torch

        from icefall.dist import all_reduce_sum

        p = self.params
        # Every rank must agree to skip (and to stop), or DDP's all-reduce would hang.
        flags = all_reduce_sum(torch.tensor([0.0 if math.isfinite(info["loss"]) else 1.0,
                                             float(self.stop.signum)]))
        self._stop_votes = flags[1].item()
        if flags[0].item():
            self.bad_in_a_row += 1
            logging.warning(
                f"batch {p.batch_idx_train}: non-finite loss, skipped "
                f"({self.bad_in_a_row} in a row, at most {p.max_bad_batches})"
            )
            if self.bad_in_a_row >= p.max_bad_batches:
                raise RuntimeError(
                    f"{self.bad_in_a_row} batches in a row had a non-finite loss; stopping. "
                    f"Lower the learning rate, check the data, or resume from the last checkpoint in {p.exp_dir}"
                )
            self.optimizer.zero_grad()
            return False
        self.bad_in_a_row = 0
        self.scaler.scale(loss).backward()
        if self.recipe.step_scheduler_before_optimizer:
            self.step_scheduler()
        self.step_lr = max(g["lr"] for g in self.optimizer.param_groups)  # logged: this update's rate
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        return True

    def _grow_grad_scale(self, batch_idx: int) -> None:
        """icefall zipformer's rule; ``batch_idx`` counts from 0 in the epoch."""
        scale = self.scaler.get_scale()
        if scale < 1.0e-05:
            raise RuntimeError(f"grad scale {scale} is too small: the fp16 training diverged; "
                               f"try --use-fp16 False or resume from an earlier checkpoint")
        if ((batch_idx % 25 == 0 and scale < 2.0) or (batch_idx % 100 == 0 and scale < 8.0)
                or (batch_idx % 400 == 0 and scale < 32.0)):
            self.scaler.update(scale * 2.0)

    def _stop_agreed(self) -> bool:
        if self._stop_votes and not self.stop.signum:
            self.stop.signum = int(signal.SIGTERM)  # another rank was signalled
        return bool(self._stop_votes)

    def _track_best(self, which: str, tracker: MetricsTracker) -> None:
        p = self.params
        loss = tracker.norm_items().get("loss", float("inf"))
        if loss < p[f"best_{which}_loss"]:
            p[f"best_{which}_loss"] = loss
            p[f"best_{which}_epoch"] = p.cur_epoch


# ------------------------------------------------------------- set-up


def get_params(args: argparse.Namespace) -> AttributeDict:
    from icefall.utils import get_env_info

    params = AttributeDict(
        best_train_loss=float("inf"), best_valid_loss=float("inf"), best_train_epoch=-1, best_valid_epoch=-1,
        batch_idx_train=0, cur_epoch=1, cur_batch_idx=0, batches_per_epoch=0, env_info=get_env_info(),
    )
    params.update(vars(args))
    return params


def resume(params, model, model_avg, optimizer, scheduler, scaler) -> Optional[Dict]:
    """Load the checkpoint --start-batch/--start-epoch ask for, if any."""
    from icefall.checkpoint import load_checkpoint

    filename = resume_filename(params)
    if filename is None:
        return None
    ckpt = load_checkpoint(filename, model, model_avg=model_avg, optimizer=optimizer, scheduler=scheduler)
    if "grad_scaler" in ckpt:
        scaler.load_state_dict(ckpt["grad_scaler"])
    for k in ("best_train_loss", "best_valid_loss", "best_train_epoch", "best_valid_epoch", "batch_idx_train"):
        params[k] = ckpt[k]
    params.batches_per_epoch = ckpt.get("batches_per_epoch", 0)
    if params.start_batch > 0:
        params.cur_epoch, params.cur_batch_idx = ckpt["cur_epoch"], ckpt["cur_batch_idx"]
    else:
        params.cur_epoch, params.cur_batch_idx = params.start_epoch, 0
    logging.info(f"resumed from {filename} (global batch {params.batch_idx_train})")
    return ckpt


def make_tb_writer(log_dir: Path):
    """A SummaryWriter whose event file name carries no host name
    (``events.out.tfevents.<time>.host.<pid>.<n>``)."""
    from unittest import mock

    from tensorboard.summary.writer import event_file_writer
    from torch.utils.tensorboard import SummaryWriter

    class _NoHost:
        @staticmethod
        def gethostname() -> str:
            return "host"

    with mock.patch.object(event_file_writer, "socket", _NoHost):
        return SummaryWriter(log_dir=str(log_dir))


def run(rank: int, world_size: int, args: argparse.Namespace, recipe: Recipe) -> None:
    """One training process (rank). Exits 128 + signal after SIGINT/SIGTERM."""
    try:
        _run(rank, world_size, args, recipe)
    except TrainingStopped as e:
        sys.exit(128 + e.signum)


def _run(rank: int, world_size: int, args: argparse.Namespace, recipe: Recipe) -> None:
    import torch

    from icefall.dist import cleanup_dist, setup_dist
    from icefall.expdir import ExpDirLock
    from icefall.threads import apply_num_threads
    from icefall.utils import setup_logger

    stop = StopFlag()
    stop.install()
    params = get_params(args)
    apply_num_threads()  # in every process; setup_dist may share the cores out among ranks
    rank, world_size, device = setup_dist(rank, world_size, params.master_port)
    params.world_size = world_size  # under torchrun, the flag may say otherwise
    lock = ExpDirLock(params.exp_dir).acquire() if rank == 0 and not args.lock_held else None
    try:
        fix_random_seed(params.seed)
        params.exp_dir.mkdir(parents=True, exist_ok=True)
        setup_logger(params.exp_dir / "log" / "log-train", use_console=rank == 0,
                     now=getattr(args, "log_time", None))
        logging.info(f"Training started on {device} with {world_size} process(es), "
                     f"{torch.get_num_threads()} CPU thread(s) each")
        logging.info(f"params: {dict(params)}")
        trainer, ckpt = _set_up(params, args, recipe, rank, world_size, device, stop)
        try:
            _train_epochs(trainer, ckpt)
        finally:
            if trainer.tb is not None:
                trainer.tb.close()
        logging.info("Done!")
        cleanup_dist()
    finally:
        if lock is not None:
            lock.release()


def _set_up(params, args, recipe: Recipe, rank: int, world_size: int, device, stop: StopFlag):
    """The model, running average, optimizer, scheduler and scaler, resumed
    if asked, and the data; returns ``(trainer, resumed checkpoint or None)``."""
    import copy

    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from icefall.expdir import move_abandoned
    from icefall.tokens import load_bpe_model

    sp = load_bpe_model(params.bpe_model)
    params.vocab_size, params.blank_id = sp.get_piece_size(), 0
    model, config = recipe.build_model(params)
    logging.info(f"Number of model parameters: {sum(p.numel() for p in model.parameters())}")
    model_avg = copy.deepcopy(model).to(torch.float64) if rank == 0 else None
    model.to(device)
    optimizer, scheduler = recipe.build_optimizer(params, model)
    scaler = torch.amp.GradScaler("cuda", init_scale=1.0 if recipe.small_grad_scale else 2.0**16,
                                  enabled=params.use_fp16 and device.type == "cuda")
    if params.use_fp16 and device.type != "cuda":
        logging.warning("--use-fp16 needs CUDA; training in float32 (--use-bf16 works on CPU)")
    ckpt = resume(params, model, model_avg, optimizer, scheduler, scaler)
    if rank == 0:
        move_abandoned(params.exp_dir, params.batch_idx_train, params.cur_epoch)
    if world_size > 1:
        unused = bool(recipe.find_unused_parameters and recipe.find_unused_parameters(params))
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=unused)
    tb = make_tb_writer(params.exp_dir / "tensorboard") if rank == 0 and params.tensorboard else None
    trainer = Trainer(params, recipe, model, model_avg, optimizer, scheduler, scaler, sp, rank, tb, config, stop)
    frames = functools.partial(recipe.frames_after_subsampling, config=config)
    trainer.data, trainer.train_cuts, trainer.valid_dl = _data(params, args, frames, sp, rank, world_size)
    return trainer, ckpt


def _data(params, args, frames_after_subsampling: Callable[[int], int], sp, rank: int,
          world_size: int):
    """The data module, the usable training cuts and the validation loader
    (cuts too short for the model dropped from both, and counted)."""
    from icefall.asr_datamodule import AsrDataModule, CutFilter, scan_cuts

    data = AsrDataModule(args)
    train_cuts, valid_cuts = data.train_cuts(), data.valid_cuts()
    train_keep = CutFilter(sp, frames_after_subsampling, params.min_duration, params.max_cut_duration)
    valid_keep = CutFilter(sp, frames_after_subsampling)
    if rank == 0:  # one pass over the cut lists, for the counts and the progress estimate
        train_seconds = scan_cuts(train_cuts, train_keep)
        scan_cuts(valid_cuts, valid_keep)
        logging.info(train_keep.summary("training set"))
        logging.info(valid_keep.summary("validation set"))
        if not params.batches_per_epoch:  # an estimate until an epoch has been seen
            params.batches_per_epoch = max(1, math.ceil(train_seconds / params.max_duration / world_size))
            params.epoch_audio_estimate = train_seconds / world_size  # refined as batches are seen
    return data, train_cuts.filter(train_keep), data.valid_dataloaders(valid_cuts.filter(valid_keep))


def _train_epochs(trainer: "Trainer", ckpt: Optional[Dict]) -> None:
    """The epochs from the resume point on: epoch-N.pt and best-*.pt after each."""
    from icefall.checkpoint import atomic_copy

    params, scheduler, data = trainer.params, trainer.scheduler, trainer.data
    first_epoch = params.cur_epoch
    try:
        for epoch in range(first_epoch, params.num_epochs + 1):
            params.cur_epoch = epoch
            scheduler.step_epoch(epoch - 1)
            mid_epoch = ckpt is not None and epoch == first_epoch and params.start_batch > 0
            if not mid_epoch:
                fix_random_seed(params.seed + epoch - 1)
                params.cur_batch_idx = 0
            trainer.cool_down()
            train_dl = data.train_dataloaders(trainer.train_cuts,
                                              sampler_state_dict=ckpt["sampler"] if mid_epoch else None)
            if not mid_epoch:
                train_dl.sampler.set_epoch(epoch - 1)
            if trainer.tb is not None:
                trainer.tb.add_scalar("train/epoch", epoch, params.batch_idx_train)
            if not trainer.train_one_epoch(train_dl, trainer.valid_dl, ckpt["rng_state"] if mid_epoch else None):
                logging.info(f"stopping after --max-batches {params.max_batches}")
                break
            filename = params.exp_dir / f"epoch-{epoch}.pt"
            trainer.save(filename, train_dl.sampler)
            if trainer.rank == 0:
                for which in ("train", "valid"):
                    if params[f"best_{which}_epoch"] == epoch:
                        atomic_copy(filename, params.exp_dir / f"best-{which}-loss.pt")
    except TrainingStopped as e:
        b = params.batch_idx_train
        logging.error(f"stopped by {signal.Signals(e.signum).name} after global batch {b}; saved "
                      f"{params.exp_dir / f'checkpoint-{b}.pt'}; resume with --start-batch {b}")
        raise


# ------------------------------------------------------------- launching


def run_training(parser: argparse.ArgumentParser, recipe: Recipe, argv: Optional[List[str]] = None) -> None:
    """Parse the flags, check them and the input files, take the exp-dir
    lock and train in one process, ``--world-size`` spawned processes, or
    the processes torchrun started. User mistakes exit 2 with one line."""
    from icefall.expdir import ExpDirInUse

    from icefall.threads import apply_num_threads

    args = finish_parser(parser).parse_args(argv)
    apply_num_threads()
    args.exp_dir = Path(args.exp_dir)
    prog = Path(sys.argv[0]).name
    try:
        check_args(args)
        if recipe.check_args is not None:
            recipe.check_args(args)
        check_inputs(args)
        _launch(args, recipe)
    except (TrainingError, ExpDirInUse) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(_EXIT_USAGE)


def _launch(args: argparse.Namespace, recipe: Recipe) -> None:
    from icefall.dist import free_port, launched_by_torchrun
    from icefall.expdir import ExpDirLock

    args.lock_held = False
    if args.world_size == 1 or launched_by_torchrun():
        run(0, 1, args, recipe)
        return
    import torch.multiprocessing as mp

    lock = ExpDirLock(args.exp_dir).acquire()
    args.lock_held = True
    if args.master_port == 0:
        args.master_port = free_port()
    args.log_time = log_timestamp()  # one name for every rank's log file
    ctx = mp.spawn(run, args=(args.world_size, args, recipe), nprocs=args.world_size, join=False)

    def forward(signum, frame):  # the ranks stop together after their current step
        for proc in ctx.processes:
            if proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the ranks directly
    try:
        while not ctx.join():
            pass
    except mp.ProcessExitedException as e:
        why = f"exited with code {e.exit_code}"
        if e.exit_code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            why = f"stopped by {signal.Signals(e.exit_code - 128).name} (a checkpoint was saved)"
        print(f"{Path(sys.argv[0]).name}: rank {e.error_index} {why}; see {args.exp_dir / 'log'}", file=sys.stderr)
        sys.exit(e.exit_code if e.exit_code and e.exit_code > 0 else 1)
    finally:
        lock.release()

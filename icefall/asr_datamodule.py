"""Data loading for ASR recipes, in the role of icefall's ``asr_datamodule.py``.

One class for every corpus: :class:`AsrDataModule` reads the cuts written by
``prepare.sh`` (``<manifest-dir>/<corpus>_cuts_<part>.jsonl.gz``), samples
batches with lhotse's ``DynamicBucketingSampler`` and collates them with
``K2SpeechRecognitionDataset`` (which needs no k2). A batch is::

    {"inputs": float [B, T, 80], "supervisions": {"text": [...],
     "sequence_idx": [B], "start_frame": [B], "num_frames": [B], "cut": [...]}}

Corpora and their cut files (``--dataset auto`` picks the one present):

- ``synth``: ``synth_cuts_{train,dev,test,heldout}.jsonl.gz``;
  train / valid / test sets = train / dev / {"test", "heldout"} (heldout only
  when its cut file exists).
- ``librispeech``: ``librispeech_cuts_{train-clean-100,train-clean-360,
  train-other-500,dev-clean,dev-other,test-clean,test-other}.jsonl.gz``;
  train = train-clean-100 (+ 360 + 500 with ``--full-libri``), valid =
  dev-clean + dev-other, test sets = {"test-clean", "test-other"}.
"""

import argparse
import inspect
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from icefall.utils import str2bool

CORPORA = {
    "synth": {
        "train": ["train"],
        "train_full": ["train"],
        "valid": ["dev"],
        "test": ["test"],
        # decoded too when its cut file exists (prepare.sh --heldout none has none)
        "optional_test": ["heldout"],
    },
    "librispeech": {
        "train": ["train-clean-100"],
        "train_full": ["train-clean-100", "train-clean-360", "train-other-500"],
        "valid": ["dev-clean", "dev-other"],
        "test": ["test-clean", "test-other"],
    },
}


class _SeedWorkers:
    """Different, reproducible random state in each dataloader worker (when
    ``seed`` is given). Workers ignore Ctrl-C: the training process gets it
    too and stops after its current step, which needs the workers alive."""

    def __init__(self, seed: Optional[int]):
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        import random
        import signal

        import numpy as np

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.seed is None:
            return
        seed = self.seed + worker_id
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


def fit_num_buckets(cuts, num_buckets: int, max_duration: float, drop_last: bool) -> int:
    """At most ``num_buckets`` and no more buckets than cuts (lhotse refuses
    that: tiny CI corpora).  With ``drop_last``, also few enough that each
    bucket holds about 1.5 batches of audio: buckets split the data evenly by
    duration and each drops its last partial batch, so a small corpus in many
    buckets (e.g. 1000 synth utterances, 30 buckets of 100 s) would give no
    batch at all.  Reads the cuts only until it has seen enough, so large
    corpora cost little.
    """
    need = 1.5 * max_duration if drop_last else 0.0
    count, total = 0, 0.0
    for cut in cuts:
        count += 1
        total += cut.duration
        if count >= num_buckets and total >= num_buckets * need:
            return num_buckets
    if not drop_last:
        return count
    fitted = min(count, max(1, int(total // need)))
    if fitted < min(count, num_buckets):
        logging.info(f"{total:.0f} s of audio: {fitted} bucket(s) instead of --num-buckets "
                     f"{num_buckets}, so that each fills a batch of --max-duration {max_duration:g}")
    return fitted


class AsrDataModule:
    """Cut loaders and dataloaders for training, validation and decoding.

    Usage::

        parser = argparse.ArgumentParser()
        AsrDataModule.add_arguments(parser)
        args = parser.parse_args()
        data = AsrDataModule(args)
        train_dl = data.train_dataloaders(data.train_cuts())
    """

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dataset = self._resolve_dataset()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            title="ASR data related options",
            description="These options are used to prepare the PyTorch DataLoaders "
            "from lhotse CutSets (dynamic bucketing, SpecAugment, features).",
        )
        group.add_argument("--dataset", choices=["auto", "synth", "librispeech"], default="auto",
                           help="which corpus; auto: the one whose cut files are in --manifest-dir")
        group.add_argument("--manifest-dir", type=Path, default=Path("data/fbank"),
                           help="path to the directory with the *_cuts_*.jsonl.gz files")
        group.add_argument("--full-libri", type=str2bool, default=False,
                           help="librispeech: train on all 960 h, not only train-clean-100")
        group.add_argument("--max-duration", type=float, default=200.0,
                           help="maximum pooled recordings duration (seconds) in a batch")
        group.add_argument("--bucketing-sampler", type=str2bool, default=True,
                           help="bucket cuts of similar duration (DynamicBucketingSampler); "
                           "false: SimpleCutSampler")
        group.add_argument("--num-buckets", type=int, default=30,
                           help="number of buckets of the DynamicBucketingSampler")
        group.add_argument("--shuffle", type=str2bool, default=True,
                           help="shuffle the training cuts at each epoch")
        group.add_argument("--drop-last", type=str2bool, default=True,
                           help="drop the last incomplete training batch")
        group.add_argument("--return-cuts", type=str2bool, default=True,
                           help="put the cuts in batch['supervisions']['cut']")
        group.add_argument("--num-workers", type=int, default=2,
                           help="dataloader worker processes (0: load in the main process)")
        group.add_argument("--enable-spec-aug", type=str2bool, default=True,
                           help="SpecAugment on training batches")
        group.add_argument("--spec-aug-time-warp-factor", type=int, default=80,
                           help="SpecAugment time warp factor; < 1 disables time warping")
        group.add_argument("--enable-musan", type=str2bool, default=False,
                           help="mix MUSAN noise (<manifest-dir>/musan_cuts.jsonl.gz) into training cuts")
        group.add_argument("--on-the-fly-feats", type=str2bool, default=False,
                           help="compute fbank from the audio while loading instead of "
                           "reading the precomputed features")
        group.add_argument("--input-strategy", type=str, default="PrecomputedFeatures",
                           choices=["PrecomputedFeatures", "AudioSamples"],
                           help="what the batch 'inputs' are when not --on-the-fly-feats")
        if not _has_option(parser, "--seed"):  # train.py usually has its own --seed
            group.add_argument("--seed", type=int, default=42,
                               help="seed of the sampler's shuffling and of the dataloader workers")

    # --------------------------------------------------------------- cuts

    def _resolve_dataset(self) -> str:
        name = getattr(self.args, "dataset", "auto")
        mdir = Path(self.args.manifest_dir)
        if name != "auto":
            return name
        found = [
            d for d, parts in CORPORA.items()
            if (mdir / f"{d}_cuts_{parts['train'][0]}.jsonl.gz").is_file()
            or (mdir / f"{d}_cuts_{parts['test'][0]}.jsonl.gz").is_file()
        ]
        if len(found) == 1:
            return found[0]
        if not found:
            raise FileNotFoundError(
                f"--manifest-dir {mdir}: no synth_cuts_*.jsonl.gz or librispeech_cuts_*.jsonl.gz; "
                "run prepare.sh of the recipe, or point --manifest-dir at its data/fbank"
            )
        raise ValueError(f"--manifest-dir {mdir} has cuts of {' and '.join(found)}: choose one with --dataset")

    def cuts_path(self, part: str) -> Path:
        return Path(self.args.manifest_dir) / f"{self.dataset}_cuts_{part}.jsonl.gz"

    def load_cuts(self, part: str):
        """The (lazy) CutSet of one part, e.g. ``load_cuts("test-clean")``."""
        from lhotse import load_manifest_lazy

        path = self.cuts_path(part)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: cut file not found; run the fbank stage of prepare.sh "
                                    f"or check --manifest-dir / --dataset")
        logging.info(f"About to get {part} cuts from {path}")
        return load_manifest_lazy(path)

    def _combined(self, parts: List[str]):
        cuts = [self.load_cuts(p) for p in parts]
        return _concat(cuts)

    def train_cuts(self):
        key = "train_full" if getattr(self.args, "full_libri", False) else "train"
        return self._combined(CORPORA[self.dataset][key])

    def valid_cuts(self):
        return self._combined(CORPORA[self.dataset]["valid"])

    def test_sets(self) -> Dict[str, Any]:
        """``{name: CutSet}`` of the test sets (see the module doc)."""
        corpus = CORPORA[self.dataset]
        parts = corpus["test"] + [p for p in corpus.get("optional_test", []) if self.cuts_path(p).is_file()]
        return {p: self.load_cuts(p) for p in parts}

    # -------------------------------------------------------- dataloaders

    def _input_strategy(self):
        from lhotse.dataset import AudioSamples, OnTheFlyFeatures, PrecomputedFeatures

        from icefall.features import make_fbank

        if self.args.on_the_fly_feats:
            # One cut at a time: lhotse's batch extraction zero-pads the audio,
            # which changes the last frames versus the precomputed features.
            return OnTheFlyFeatures(make_fbank(), use_batch_extract=False)
        if getattr(self.args, "input_strategy", "PrecomputedFeatures") == "AudioSamples":
            return AudioSamples()
        return PrecomputedFeatures()

    def _spec_augment(self):
        from lhotse.dataset import SpecAugment

        # As icefall: lhotse < 1.x had num_frame_masks=1 with another meaning.
        num_frame_masks = 10
        default = inspect.signature(SpecAugment.__init__).parameters["num_frame_masks"].default
        if default == 1:
            num_frame_masks = 2
        return SpecAugment(
            time_warp_factor=self.args.spec_aug_time_warp_factor,
            num_frame_masks=num_frame_masks,
            features_mask_size=27,
            num_feature_masks=2,
            frames_mask_size=100,
            max_frames_mask_fraction=0.15,
        )

    def _sampler(self, cuts, shuffle: bool, drop_last: bool):
        from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler

        num_buckets = fit_num_buckets(cuts, self.args.num_buckets, self.args.max_duration, drop_last)
        if self.args.bucketing_sampler and num_buckets >= 2:
            return DynamicBucketingSampler(
                cuts,
                max_duration=self.args.max_duration,
                shuffle=shuffle,
                num_buckets=num_buckets,
                # lhotse adds a (deprecated) shuffle_buffer_size to buffer_size;
                # this is what icefall's 2000 + 5000 per bucket amount to.
                buffer_size=num_buckets * 7000,
                drop_last=drop_last,
                seed=getattr(self.args, "seed", 0) or 0,
            )
        return SimpleCutSampler(cuts, max_duration=self.args.max_duration, shuffle=shuffle,
                                drop_last=drop_last, seed=getattr(self.args, "seed", 0) or 0)

    def _loader(self, dataset, sampler, seed_workers: bool = False) -> DataLoader:
        workers = self.args.num_workers
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,  # the sampler yields whole batches (CutSets)
            num_workers=workers,
            persistent_workers=False,
            worker_init_fn=_SeedWorkers((getattr(self.args, "seed", 0) or 0) if seed_workers else None),
        )

    def train_dataloaders(self, cuts_train, sampler_state_dict: Optional[Dict[str, Any]] = None) -> DataLoader:
        """Training batches: shuffled buckets, SpecAugment (``--enable-spec-aug``).

        Args:
          cuts_train: e.g. ``self.train_cuts()`` (filter durations first if needed).
          sampler_state_dict: ``train_dl.sampler.state_dict()`` saved in a
            checkpoint; restoring it continues the epoch where it stopped.
            (Exact with ``--num-workers 0``; with workers, batches the workers
            had prefetched but not yet returned are skipped.)
        """
        from lhotse.dataset import K2SpeechRecognitionDataset

        transforms = []
        if self.args.enable_musan:
            from lhotse import load_manifest
            from lhotse.dataset import CutMix

            musan = Path(self.args.manifest_dir) / "musan_cuts.jsonl.gz"
            if not musan.is_file():
                raise FileNotFoundError(f"{musan}: not found, needed by --enable-musan true; "
                                        "run prepare.sh with --musan true")
            transforms.append(CutMix(cuts=load_manifest(musan), p=0.5, snr=(10, 20), preserve_id=True))
        input_transforms = [self._spec_augment()] if self.args.enable_spec_aug else []
        dataset = K2SpeechRecognitionDataset(
            return_cuts=self.args.return_cuts,
            cut_transforms=transforms,
            input_transforms=input_transforms,
            input_strategy=self._input_strategy(),
        )
        sampler = self._sampler(cuts_train, shuffle=self.args.shuffle, drop_last=self.args.drop_last)
        if sampler_state_dict is not None:
            logging.info("Loading sampler state dict")
            sampler.load_state_dict(sampler_state_dict)
        return self._loader(dataset, sampler, seed_workers=True)

    def valid_dataloaders(self, cuts_valid) -> DataLoader:
        """Validation batches: no augmentation, not shuffled."""
        from lhotse.dataset import K2SpeechRecognitionDataset

        dataset = K2SpeechRecognitionDataset(return_cuts=self.args.return_cuts,
                                             input_strategy=self._input_strategy())
        return self._loader(dataset, self._sampler(cuts_valid, shuffle=False, drop_last=False))

    def test_dataloaders(self, cuts) -> DataLoader:
        """Decoding batches: no augmentation, not shuffled, cuts always returned."""
        from lhotse.dataset import K2SpeechRecognitionDataset

        dataset = K2SpeechRecognitionDataset(return_cuts=True, input_strategy=self._input_strategy())
        return self._loader(dataset, self._sampler(cuts, shuffle=False, drop_last=False))


def _concat(cuts_list):
    # CutSet addition keeps the sets lazy and in order.
    out = cuts_list[0]
    for c in cuts_list[1:]:
        out = out + c
    return out


def _has_option(parser: argparse.ArgumentParser, flag: str) -> bool:
    return any(flag in a.option_strings for a in parser._actions)



@dataclass
class CutFilter:
    """Keeps a cut when its duration is in ``[min_duration, max_duration]``
    and the model keeps at least as many frames as the text has tokens.

    Counts what it drops and the characters the BPE model does not know
    (they become ``<unk>``); :meth:`summary` says so in one line.
    """

    sp: Any
    frames_after_subsampling: Callable[[int], int]
    min_duration: float = 0.0
    max_duration: float = math.inf
    kept: int = 0
    bad_duration: int = 0
    too_short: int = 0  # fewer frames after subsampling than tokens
    unk_cuts: int = 0
    unk_chars: Dict[str, int] = field(default_factory=dict)

    def __call__(self, cut) -> bool:
        if not self.min_duration <= cut.duration <= self.max_duration:
            self.bad_duration += 1
            return False
        text = cut.supervisions[0].text
        ids = self.sp.encode(text, out_type=int)
        if self.sp.unk_id() in ids:
            self.unk_cuts += 1
            for ch in set(text) - {" "}:
                if self.sp.unk_id() in self.sp.encode(ch, out_type=int):
                    self.unk_chars[ch] = self.unk_chars.get(ch, 0) + text.count(ch)
        num_frames = cut.num_frames if cut.num_frames else int(round(cut.duration * 100))
        if self.frames_after_subsampling(num_frames) < max(1, len(ids)):
            self.too_short += 1
            return False
        self.kept += 1
        return True

    def summary(self, name: str) -> str:
        dropped = self.bad_duration + self.too_short
        line = (f"{name}: kept {self.kept} of {self.kept + dropped} cuts; dropped {self.too_short} too short "
                f"for the subsampling or with more tokens than frames")
        if self.max_duration < math.inf or self.min_duration > 0:
            line += f", {self.bad_duration} outside [{self.min_duration:g}, {self.max_duration:g}] s"
        if self.unk_cuts:
            chars = ", ".join(f"{c!r} x{n}" for c, n in sorted(self.unk_chars.items(), key=lambda x: -x[1])[:10])
            line += f"; {self.unk_cuts} cut(s) have characters outside the BPE model, mapped to <unk>: {chars}"
        return line


def scan_cuts(cuts, keep: CutFilter) -> float:
    """Run ``keep`` over every cut once (for the counts); the seconds of audio kept."""
    seconds = 0.0
    for cut in cuts:
        if keep(cut):
            seconds += cut.duration
    return seconds

"""The one feature extractor of the toolkit: 80-dim log-mel filter banks.

It is lhotse's ``Fbank(FbankConfig(num_mel_bins=80))``, whose defaults are
icefall's: 25 ms windows every 10 ms, povey window, dither 0,
``snip_edges=False`` (so ``T = num_samples // 160`` frames at 16 kHz, rounded
to the nearest frame), ``low_freq=20``, ``high_freq=-400`` (i.e. Nyquist - 400 Hz).
Training (precomputed or on-the-fly), decoding and ``pretrained.py`` all use
:func:`make_fbank`, so the features cannot differ between them.
"""

from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

PathLike = Union[str, Path]

NUM_MEL_BINS = 80
SAMPLE_RATE = 16000
FRAME_SHIFT = 0.01  # seconds


def make_fbank(device: Union[str, torch.device] = "cpu"):
    """The lhotse ``Fbank`` extractor used everywhere (80 bins, icefall's settings)."""
    from lhotse import Fbank, FbankConfig

    config = FbankConfig(
        sampling_rate=SAMPLE_RATE,
        num_mel_bins=NUM_MEL_BINS,
        dither=0.0,
        snip_edges=False,
        high_freq=-400.0,
        device=str(device),
    )
    return Fbank(config)


def num_frames(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of frames ``T`` that :func:`compute_fbank` gives for ``num_samples``
    (``snip_edges=False``: one frame per 10 ms shift, rounded half up)."""
    shift = int(round(FRAME_SHIFT * sample_rate))
    return (num_samples + shift // 2) // shift


def compute_fbank(
    waveforms: Sequence[Union[np.ndarray, torch.Tensor]],
    sample_rate: int = SAMPLE_RATE,
    device: Union[str, torch.device] = "cpu",
) -> List[torch.Tensor]:
    """Compute log-mel filter banks for a batch of waveforms.

    Args:
      waveforms: a list of 1-D float signals ``[N_i]`` in [-1, 1] at ``sample_rate``.
      sample_rate: must be 16000 (use :func:`icefall.audio.read_audio` to resample).
      device: where to compute.

    Returns:
      a list of float32 tensors ``[T_i, 80]`` with ``T_i = num_frames(N_i)``;
      each is what the waveform gives alone (batching does not change it).
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(
            f"compute_fbank: sample_rate={sample_rate}, expected {SAMPLE_RATE}; "
            "resample first (icefall.audio.read_audio does)"
        )
    if len(waveforms) == 0:
        return []
    waves = [
        torch.as_tensor(np.asarray(w, dtype=np.float32) if isinstance(w, np.ndarray) else w)
        .float()
        .reshape(-1)
        for w in waveforms
    ]
    for i, w in enumerate(waves):
        if w.numel() == 0:
            raise ValueError(f"compute_fbank: waveform {i} is empty")
    # extract_batch zero-pads shorter signals, which changes their last frames
    # (snip_edges=False reflects the signal at its end): batch only signals of
    # equal length, so that a waveform gets the same features as when it is
    # alone, or precomputed by compute_and_store_fbank.
    extractor = make_fbank(device)
    by_length: dict = {}
    for i, w in enumerate(waves):
        by_length.setdefault(w.numel(), []).append(i)
    out: List[Optional[torch.Tensor]] = [None] * len(waves)
    for idx in by_length.values():
        feats = extractor.extract_batch(torch.stack([waves[i] for i in idx]), sampling_rate=sample_rate)
        feats = torch.as_tensor(feats).float()
        if feats.dim() == 2:
            feats = feats.unsqueeze(0)
        for k, i in enumerate(idx):
            out[i] = feats[k]
    return out


def compute_and_store_fbank(
    cuts,
    storage_path: PathLike,
    num_jobs: int = 1,
    perturb_speed: bool = False,
    progress_bar: bool = True,
    min_cuts_per_job: int = 5000,
):
    """Compute fbank features of a lhotse ``CutSet`` and store them with
    ``LilcomChunkyWriter`` under ``storage_path``.

    Args:
      cuts: a ``CutSet`` with recordings (e.g. ``CutSet.from_manifests(...)``).
      storage_path: the feature archive path (``.lca`` is added by lhotse);
        with ``num_jobs > 1`` lhotse writes one archive per job in a directory.
      num_jobs: worker processes (fewer for small sets: one per
        `min_cuts_per_job` cuts).
      perturb_speed: as icefall's ``compute_fbank_librispeech.py``, store
        ``cuts + cuts.perturb_speed(0.9) + cuts.perturb_speed(1.1)``.
      min_cuts_per_job: a worker costs seconds to start (importing torch and
        lhotse), so small sets use fewer jobs.

    Returns:
      the ``CutSet`` with features attached (eager; write it with ``to_file``).
    """
    from lhotse import LilcomChunkyWriter

    if perturb_speed:
        cuts = cuts + cuts.perturb_speed(0.9) + cuts.perturb_speed(1.1)
    # The pool was slower than one process on 2 busy cores for 2000 cuts.
    num_jobs = max(1, min(num_jobs, len(cuts) // max(1, min_cuts_per_job)))
    # One torch thread per job: the jobs are the parallelism (as icefall does).
    # Workers must set it themselves: with torch's default threads per worker
    # the pool was 20x slower than one process on a 2-core machine.
    torch.set_num_threads(1)
    executor = None
    if num_jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        executor = ProcessPoolExecutor(
            num_jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread
        )
    try:
        return cuts.compute_and_store_features(
            extractor=make_fbank(),
            storage_path=str(storage_path),
            num_jobs=num_jobs,
            storage_type=LilcomChunkyWriter,
            executor=executor,
            progress_bar=progress_bar,
        )
    finally:
        if executor is not None:
            executor.shutdown()


def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


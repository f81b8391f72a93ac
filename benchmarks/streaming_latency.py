#!/usr/bin/env python3
"""Streaming Zipformer: how long after the end of a word it shows in the partial result.

On the built-in synthetic corpus (egs/synth/ASR), whose utterances can be
spoken again with espeak-ng's word timings.  From the repository root:

  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive python benchmarks/streaming_latency.py \\
      --exp-dir egs/synth/ASR/zipformer/exp --epoch 30 --avg 9 \\
      --tokens egs/synth/ASR/data/lang_bpe_256/tokens.txt \\
      --audio-dir egs/synth/ASR/data/audio/synth --split test --num-utts 100 \\
      --chunk-sizes 16,32 --left-context-frames 128
  # or an exported model: --checkpoint egs/synth/ASR/zipformer/exp/pretrained.pt

The model is loaded as zipformer/streaming_decode.py loads it (the config
stored in the checkpoint; --causal 1 models only).  The first --num-utts
utterances of the split's plan (<audio-dir>/<split>.jsonl) are spoken again
exactly as the corpus was made (icefall/synth_corpus.py: espeak reloaded
every 16 utterances), now with espeak's word events; the table's first line
says how far the audio is from the corpus FLAC files (16-bit rounding only,
when they are there).  Each utterance is then fed like a microphone, in
pieces of one chunk of audio (2 * chunk * 10 ms), through
zipformer/streaming_pretrained.py's stream_samples (kaldi-native-fbank
features as the audio arrives, icefall/streaming_decoder.py), and after each
decoded chunk the partial transcript and the audio fed so far are recorded
(--piece-ms feeds smaller pieces, as a microphone app would).

Times, all in audio time (compute time is not included; add it from
benchmarks/streaming_benchmark.py's real-time factor):
  * word start: espeak's word event (plus the leading silence);
  * word end: the next word's start (pauses count to the word before them);
    the last word's end is the end of the voiced speech, the last sample of
    the clean speech above 1% of its peak.  espeak says some unstressed
    words together with the word before them ("in the" has one event, at
    "in"): that word before has no known end and is not timed;
  * appearance: for each reference word the final transcript has right
    (edit-distance alignment of reference and final words), the audio fed
    when the partial first held that word, in its final spelling at its
    final position, for good (icefall/word_latency.py);
  * delay = appearance - end;
  * structural = the audio fed when the first chunk whose frames reach the
    word end was decoded, minus the end: waiting for the rest of the chunk,
    its 13 feature frames (130 ms) of look-ahead, the feed's piece size and
    the final padding.  No model can show the word earlier with this chunking;
    delay - structural is the model's own delay (its emission lag).

Prints a markdown table per chunk size: WER of the final transcripts, the
number of words timed, mean / median / 90th percentile delay and the mean
structural part in ms.  Nothing is asserted.
"""

import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "zipformer"
sys.path.insert(0, str(RECIPE))
sys.path.insert(0, str(ROOT))

from icefall.threads import apply_num_threads, set_thread_env  # noqa: E402

set_thread_env()  # before torch is imported

import torch  # noqa: E402

from icefall.checkpoint import add_checkpoint_arguments  # noqa: E402
from icefall.cli import UserError, check_inputs_exist, make_parser, run_main  # noqa: E402
from icefall.streaming_decoder import StreamingDecoder  # noqa: E402
from icefall.streaming_features import SAMPLE_RATE  # noqa: E402
from icefall.streaming_search import add_streaming_search_arguments  # noqa: E402
from icefall.wer import ErrorCounts  # noqa: E402
from icefall.word_latency import first_time_covering, word_delays, word_ends  # noqa: E402
from model import add_model_arguments, stack_states, unstack_states  # noqa: E402
from streaming_decode import PAD_FRAMES, load_streaming_model, set_streaming  # noqa: E402
from streaming_pretrained import stream_samples  # noqa: E402

SYNTH = Path("egs/synth/ASR")


def get_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an exported file with a 'model' state_dict (else --exp-dir "
                        "--epoch/--avg select checkpoints)")
    parser.add_argument("--exp-dir", type=Path, default=SYNTH / "zipformer/exp",
                        help="checkpoints when --checkpoint is not given")
    add_checkpoint_arguments(parser)
    parser.add_argument("--tokens", type=Path, default=SYNTH / "data/lang_bpe_256/tokens.txt",
                        help="tokens.txt of the model")
    parser.add_argument("--audio-dir", type=Path, default=SYNTH / "data/audio/synth",
                        help="the synthetic corpus: <audio-dir>/<split>.jsonl is the plan")
    parser.add_argument("--split", default="test", help="which split of the corpus")
    parser.add_argument("--num-utts", type=int, default=100,
                        help="the first N utterances of the split (0: all)")
    parser.add_argument("--chunk-sizes", default="16,32",
                        help="chunk sizes to measure, 50 Hz frames (16 = 320 ms)")
    add_streaming_search_arguments(parser)
    parser.add_argument("--piece-ms", type=int, default=0,
                        help="feed the audio in pieces of this many ms (0: one chunk, as "
                        "streaming_pretrained.py; with pieces of one chunk the 130 ms "
                        "look-ahead costs a whole piece)")
    parser.add_argument("--per-word-out", type=Path, default=None,
                        help="if given, write one line per timed word there (TSV, ms)")
    add_model_arguments(parser)
    # one left context to stream with (the model flag is a training list)
    parser.set_defaults(left_context_frames="128", chunk_size="16")
    return parser


def int_list(flag: str, value: str) -> List[int]:
    try:
        out = [int(v) for v in str(value).split(",")]
    except ValueError:
        out = []
    if not out or min(out) <= 0:
        raise UserError(f"{flag}: expected positive integers like 16,32, got {value!r}")
    return out


def speak(utts) -> List[Tuple[np.ndarray, np.ndarray, int]]:
    """(audio [N], word starts [W] (samples, -1 unknown), voiced end) of each
    utterance, made as the corpus makes its blocks: the engine reloaded before
    every BLOCK-th utterance, so the first utterances of a split come out as
    in the corpus."""
    from icefall.espeak import get_engine
    from icefall.synth_corpus import BLOCK, render_with_word_starts

    out = []
    for k, utt in enumerate(utts):
        if k % BLOCK == 0:
            get_engine().reset()
        out.append(render_with_word_starts(utt))
    return out


def corpus_mismatch(audio_dir: Path, split: str, utts, spoken) -> Optional[float]:
    """Max |spoken - corpus FLAC| over the utterances whose FLAC exists (None if none)."""
    import soundfile as sf

    worst = None
    for utt, (audio, _, _) in zip(utts, spoken):
        path = audio_dir / split / f"{utt.id}.flac"
        if not path.is_file():
            continue
        flac, _ = sf.read(str(path), dtype="float32")
        diff = float(np.abs(flac - audio).max()) if len(flac) == len(audio) else float("inf")
        worst = diff if worst is None else max(worst, diff)
    return worst


def measure_utterance(decoder: StreamingDecoder, tokens, chunk: int, ref: List[str],
                      audio: np.ndarray, starts: np.ndarray, speech_end: int,
                      piece: int = 0):
    """Stream one utterance in pieces of `piece` samples (0: one chunk).
    Returns (final words, [(ref index, end, appear, structural appear)]) in seconds."""
    chunk_frames = 2 * chunk
    steps: List[Tuple[float, List[int]]] = []
    stream_samples(decoder, audio, piece or chunk_frames * SAMPLE_RATE // 100, lambda ids: None,
                   on_chunk=lambda fed, ids: steps.append((fed / SAMPLE_RATE, ids)))
    partials = [(t, tokens.decode(ids).split()) for t, ids in steps]
    covered = [(t, (k + 1) * chunk_frames * 0.01) for k, (t, _) in enumerate(steps)]
    ends = [None if e is None else e / SAMPLE_RATE for e in word_ends(starts, speech_end)]
    timed = [(i, end, appear, first_time_covering(covered, end))
             for i, end, appear in word_delays(ref, partials, ends)]
    return partials[-1][1], timed


def summarize(delays_ms: np.ndarray) -> Tuple[float, float, float]:
    if delays_ms.size == 0:
        return float("nan"), float("nan"), float("nan")
    return (float(delays_ms.mean()), float(np.median(delays_ms)),
            float(np.percentile(delays_ms, 90)))


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    apply_num_threads()
    from icefall.synth_corpus import read_plan

    chunks = int_list("--chunk-sizes", args.chunk_sizes)
    if args.piece_ms < 0:
        raise UserError(f"--piece-ms: must be >= 0, got {args.piece_ms}")
    check_inputs_exist(__file__, {"--audio-dir": args.audio_dir, "--tokens": args.tokens,
                                  "--checkpoint": args.checkpoint})
    if args.checkpoint is None:
        check_inputs_exist(__file__, {"--exp-dir": args.exp_dir})
    utts = read_plan(args.audio_dir, args.split)
    if args.num_utts > 0:
        utts = utts[:args.num_utts]
    args.chunk_size = str(chunks[0])
    try:
        model, tokens, _, left = load_streaming_model(args)
    except ValueError as e:  # not causal, a bad --left-context-frames
        raise UserError(str(e)) from None
    spoken = speak(utts)
    seconds = sum(len(a) for a, _, _ in spoken) / SAMPLE_RATE
    num_words = sum(len(u.text.split()) for u in utts)
    unknown_end = sum(sum(e is None for e in word_ends(s, v)) for _, s, v in spoken)
    mismatch = corpus_mismatch(args.audio_dir, args.split, utts, spoken)
    print(f"{len(utts)} utterances of {args.audio_dir}/{args.split} ({seconds:.0f} s, "
          f"{num_words} words, {unknown_end} without a known end); left context {left} frames; "
          f"{args.decoding_method}; fed in pieces of "
          f"{f'{args.piece_ms} ms' if args.piece_ms else 'one chunk'}; audio vs the corpus FLAC: "
          + ("no FLAC files" if mismatch is None else f"max difference {mismatch:.2e}") + "\n")
    print("| chunk | WER % | words timed | delay mean (ms) | median | 90th pct "
          "| structural mean (ms) | model's own mean (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    per_word = []
    for chunk in chunks:
        set_streaming(model, chunk, left)
        decoder = StreamingDecoder(model, stack_states, unstack_states, chunk_frames=2 * chunk,
                                   pad_frames=PAD_FRAMES, method=args.decoding_method,
                                   num_active_paths=args.num_active_paths)
        counts = ErrorCounts()
        rows = []
        with torch.no_grad():
            for utt, (audio, starts, speech_end) in zip(utts, spoken):
                ref = utt.text.split()
                hyp, timed = measure_utterance(decoder, tokens, chunk, ref, audio, starts,
                                               speech_end, args.piece_ms * SAMPLE_RATE // 1000)
                counts.add(ref, hyp)
                for i, end, appear, structural in timed:
                    rows.append((end, appear, structural))
                    per_word.append((utt.id, chunk, ref[i], end, appear, structural))
        t = np.array(rows).reshape(-1, 3) * 1000
        mean, median, p90 = summarize(t[:, 1] - t[:, 0])
        structural = float((t[:, 2] - t[:, 0]).mean()) if len(t) else float("nan")
        cells = [f"{x:.0f}" if np.isfinite(x) else "-"
                 for x in (mean, median, p90, structural, mean - structural)]
        print(f"| {chunk} ({20 * chunk} ms) | {counts.wer:.2f} | {len(t)} / {counts.ref_len} | "
              + " | ".join(cells) + " |", flush=True)
    if args.per_word_out is not None:
        with open(args.per_word_out, "w", encoding="utf-8") as f:
            print("utt\tchunk\tword\tend_ms\tappear_ms\tstructural_ms", file=f)
            for utt_id, chunk, word, end, appear, structural in per_word:
                print(f"{utt_id}\t{chunk}\t{word}\t{1000 * end:.0f}\t{1000 * appear:.0f}\t"
                      f"{1000 * structural:.0f}", file=f)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))

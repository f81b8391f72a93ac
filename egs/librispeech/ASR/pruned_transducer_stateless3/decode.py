#!/usr/bin/env python3
"""Decode the recipe's test sets and report the WER.

Usage, from egs/<dataset>/ASR:

  # the average of epochs 26..30 via the running-average model
  ./pruned_transducer_stateless3/decode.py --epoch 30 --avg 5 \\
      --exp-dir pruned_transducer_stateless3/exp --max-duration 600 \\
      --decoding-method modified_beam_search --beam-size 4

  # an exported pretrained.pt, through a symlink:
  #   ln -s pretrained.pt pruned_transducer_stateless3/exp/epoch-9999.pt
  ./pruned_transducer_stateless3/decode.py --epoch 9999 --avg 1 \\
      --use-averaged-model False --exp-dir pruned_transducer_stateless3/exp ...

Writes recogs-<set>-<key>-<suffix>.txt, errs-... and wer-summary-... into
<exp-dir>/<decoding-method>/, and logs the WER and the real-time factor.
<key> is greedy_search (one token per frame at most, icefall's default),
greedy_search_max_sym_per_frame_<N> or beam_size_<N>.
"""

import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from icefall.cli import check_inputs_exist, make_parser, run_main  # noqa: E402


def get_parser():
    from icefall.asr_datamodule import AsrDataModule
    from icefall.beam_search import DECODING_METHODS
    from icefall.checkpoint import add_checkpoint_arguments
    from model import add_model_arguments

    parser = make_parser(__doc__)
    add_checkpoint_arguments(parser)
    parser.add_argument("--exp-dir", type=Path, default=Path("pruned_transducer_stateless3/exp"),
                        help="where the checkpoints are; results go to <exp-dir>/<decoding-method>/")
    parser.add_argument("--bpe-model", type=Path, default=None, help="sentencepiece model (or give --tokens)")
    parser.add_argument("--tokens", type=Path, default=None, help="tokens.txt (None: <lang-dir>/tokens.txt)")
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_bpe_500"),
                        help="holds tokens.txt when neither --tokens nor --bpe-model is given")
    parser.add_argument("--decoding-method", choices=DECODING_METHODS, default="greedy_search",
                        help="how to search")
    parser.add_argument("--beam-size", type=int, default=4, help="beam searches only")
    parser.add_argument("--max-sym-per-frame", type=int, default=1, help="greedy_search only")
    parser.add_argument("--device", type=str, default=None, help="cpu or cuda (None: cuda if available)")
    add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    return parser


def load_token_table(args):
    """(SymbolTable, the path it came from)."""
    from icefall.tokens import bpe_symbol_table, load_bpe_model, read_tokens

    if args.tokens is not None:
        return read_tokens(args.tokens), args.tokens
    if args.bpe_model is not None:
        return bpe_symbol_table(load_bpe_model(args.bpe_model)), args.bpe_model
    path = args.lang_dir / "tokens.txt"
    return read_tokens(path), path


def decode_dataset(dl, model, tokens, args) -> Tuple[List[Tuple[str, List[str], List[str]]], float, float]:
    """Returns (results, audio seconds, decoding seconds)."""
    import torch
    from tqdm import tqdm

    from icefall.beam_search import decode_batch

    device = next(model.parameters()).device
    results, audio_seconds, decode_seconds = [], 0.0, 0.0
    for batch in tqdm(dl, desc="decoding", unit="batch"):
        sup = batch["supervisions"]
        feature = batch["inputs"].to(device)
        feature_lens = sup["num_frames"].to(device)
        start = time.perf_counter()
        with torch.no_grad():
            encoder_out, encoder_out_lens = model.forward_encoder(feature, feature_lens)
            hyps = decode_batch(
                model, encoder_out, encoder_out_lens, args.decoding_method,
                beam=args.beam_size, max_sym_per_frame=args.max_sym_per_frame,
            )
        decode_seconds += time.perf_counter() - start
        audio_seconds += float(sup["num_frames"].sum()) * 0.01
        cut_ids = [c.id for c in sup["cut"]]
        for cut_id, ref, hyp in zip(cut_ids, sup["text"], hyps):
            results.append((cut_id, ref.split(), tokens.decode(hyp).split()))
    results.sort()
    return results, audio_seconds, decode_seconds


def save_results(args, test_set: str, results, suffix: str) -> float:
    from icefall.wer import store_transcripts, write_error_stats, write_wer_summary

    if args.decoding_method != "greedy_search":
        key = f"beam_size_{args.beam_size}"
    elif args.max_sym_per_frame == 1:
        key = "greedy_search"  # icefall's name, for its default of one token per frame
    else:
        key = f"greedy_search_max_sym_per_frame_{args.max_sym_per_frame}"
    res_dir = args.exp_dir / args.decoding_method
    store_transcripts(res_dir / f"recogs-{test_set}-{key}-{suffix}.txt", results)
    with open(res_dir / f"errs-{test_set}-{key}-{suffix}.txt", "w") as f:
        wer = write_error_stats(f, f"{test_set}-{key}", results)
    write_wer_summary(res_dir / f"wer-summary-{test_set}-{key}-{suffix}.txt", {key: wer})
    return wer


def run(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    tokens_flag = ({"--tokens": args.tokens} if args.tokens else {"--bpe-model": args.bpe_model}
                   if args.bpe_model else {"--lang-dir": args.lang_dir})
    check_inputs_exist(__file__, {"--exp-dir": args.exp_dir, **tokens_flag, "--manifest-dir": args.manifest_dir})

    import torch

    from icefall.asr_datamodule import AsrDataModule
    from icefall.transcribe import drop_short_cuts
    from icefall.utils import setup_logger
    from model import frames_after_subsampling, load_model

    if args.iter > 0:
        suffix = f"iter-{args.iter}-avg-{args.avg}"
    else:
        suffix = f"epoch-{args.epoch}-avg-{args.avg}"
    if args.use_averaged_model:
        suffix += "-use-averaged-model"
    res_dir = args.exp_dir / args.decoding_method
    res_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(res_dir / f"log-decode-{suffix}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    logging.info(f"Decoding with {args.decoding_method} on {device}; {vars(args)}")

    tokens, tokens_path = load_token_table(args)
    model = load_model(args, tokens, tokens_path)
    model.to(device)
    logging.info(f"Number of model parameters: {sum(p.numel() for p in model.parameters())}")

    data = AsrDataModule(args)
    summary: Dict[str, float] = {}
    for test_set, cuts in data.test_sets().items():
        cuts, _ = drop_short_cuts(cuts, frames_after_subsampling, name=test_set)
        results, audio_s, decode_s = decode_dataset(data.test_dataloaders(cuts), model, tokens, args)
        wer = save_results(args, test_set, results, suffix)
        summary[test_set] = wer
        logging.info(
            f"{test_set}: WER {wer:.2f}% over {len(results)} utterances; {args.decoding_method} "
            f"real-time factor {decode_s / max(audio_s, 1e-9):.4f} ({audio_s:.0f} s of audio in {decode_s:.1f} s)"
        )
    for test_set, wer in summary.items():
        print(f"{test_set}\t{args.decoding_method}\t{wer:.2f}")
    logging.info("Done!")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The exit code: 0, or 2 after a one-line error (a bad file or flag)."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Greedy-search WER of a transducer from any recipe, on cut files with fbank.

The evaluator of benchmarks/zipformer_vs_pts3.sh: the same code decodes both
models, so their WERs compare. It loads ``<recipe-dir>/model.py`` (its
``build_model``; the config stored in the checkpoint), selects checkpoints
with icefall's ``--epoch/--iter/--avg/--use-averaged-model`` flags, runs
``model.forward_encoder`` (pts3: ``model.encoder``) and ``greedy_search_batch`` (icefall/beam_search.py)
and scores with icefall/wer.py. A recipe's own decode.py gives the same
greedy result; this script exists for recipes without one yet.

  python benchmarks/greedy_wer.py --recipe-dir egs/synth/ASR/zipformer \\
      --exp-dir EXP --iter 1400 --avg 3 --use-averaged-model True \\
      --tokens egs/synth/ASR/data/lang_bpe_256/tokens.txt \\
      egs/synth/ASR/data/fbank/synth_cuts_test.jsonl.gz

Prints one line per cut file: name, utterances, WER %, real-time factor.
"""

import argparse
import importlib.util
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Tuple

import torch

from icefall.beam_search import greedy_search_batch
from icefall.checkpoint import add_checkpoint_arguments, read_config, select_checkpoints_from_args
from icefall.tokens import read_tokens
from icefall.wer import write_error_stats

LOG_EPS = -23.0259  # log(1e-10): the padding value of fbank batches


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--recipe-dir", type=Path, required=True, help="folder with the recipe's model.py")
    parser.add_argument("--exp-dir", type=Path, required=True, help="folder with the checkpoints")
    parser.add_argument("--tokens", type=Path, required=True, help="tokens.txt of the BPE model")
    parser.add_argument("--max-sym-per-frame", type=int, default=1, help="greedy search: tokens per frame")
    parser.add_argument("--batch-size", type=int, default=32, help="utterances per batch")
    parser.add_argument("--errs-dir", type=Path, default=None,
                        help="write errs-<cuts name>-<checkpoints>.txt here (default: none)")
    parser.add_argument("cuts", type=Path, nargs="+", help="lhotse cut files with precomputed features")
    return parser


def load_model(args) -> torch.nn.Module:
    """The recipe's model with the selected (averaged) weights, in eval mode."""
    sys.path.insert(0, str(args.recipe_dir.resolve()))
    spec = importlib.util.spec_from_file_location("model", args.recipe_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    spec.loader.exec_module(module)
    selection = select_checkpoints_from_args(args)
    logging.info(f"loading {[str(f) for f in selection.files]} ({selection.mode})")
    config = read_config(selection.files[-1])
    if config is None:
        raise ValueError(f"{selection.files[-1]}: no model config; this script reads the recipe's own files")
    model = module.build_model(config)
    model.load_state_dict(selection.load_state_dict(), strict=True)
    return model.eval()


def batches(cuts_path: Path, batch_size: int):
    """(cut ids, texts, features [N, T, 80] padded with log(1e-10), lengths [N]), longest first."""
    from lhotse import load_manifest

    cuts = sorted(load_manifest(cuts_path), key=lambda c: -c.duration)
    for i in range(0, len(cuts), batch_size):
        chunk = cuts[i : i + batch_size]
        feats = [torch.from_numpy(c.load_features()) for c in chunk]
        lens = torch.tensor([f.shape[0] for f in feats])
        x = torch.full((len(feats), int(lens.max()), feats[0].shape[1]), LOG_EPS)
        for n, f in enumerate(feats):
            x[n, : f.shape[0]] = f
        yield [c.id for c in chunk], [c.supervisions[0].text for c in chunk], x, lens


def decode(model, tokens, cuts_path: Path, args) -> Tuple[List[Tuple[str, List[str], List[str]]], float, float]:
    """Returns (results, audio seconds, decoding seconds)."""
    results, audio, spent = [], 0.0, 0.0
    # Zipformer's AsrModel has forward_encoder; pts3's Transducer calls its encoder directly.
    encoder = getattr(model, "forward_encoder", None) or model.encoder
    for ids, texts, x, lens in batches(cuts_path, args.batch_size):
        start = time.perf_counter()
        with torch.no_grad():
            enc, enc_lens = encoder(x, lens)
            hyps = greedy_search_batch(model, enc, enc_lens, max_sym_per_frame=args.max_sym_per_frame)
        spent += time.perf_counter() - start
        audio += float(lens.sum()) * 0.01
        for cut_id, ref, hyp in zip(ids, texts, hyps):
            results.append((cut_id, ref.split(), tokens.decode(hyp).split()))
    results.sort()
    return results, audio, spent


def selection_name(args) -> str:
    """e.g. iter-1200-avg-4-use-averaged-model-max-sym-1 (as decode.py's suffixes)."""
    name = f"iter-{args.iter}" if args.iter > 0 else f"epoch-{args.epoch}"
    name += f"-avg-{args.avg}" + ("-use-averaged-model" if args.use_averaged_model else "")
    return name + f"-max-sym-{args.max_sym_per_frame}"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = get_parser().parse_args()
    for path in args.cuts:
        if not path.is_file():
            print(f"{path}: cut file not found", file=sys.stderr)
            sys.exit(2)
    tokens = read_tokens(args.tokens)
    model = load_model(args)
    for path in args.cuts:
        results, audio, spent = decode(model, tokens, path, args)
        name = path.name.replace(".jsonl.gz", "")
        if args.errs_dir is None:
            wer = write_error_stats(open(os.devnull, "w"), name, results)
        else:
            args.errs_dir.mkdir(parents=True, exist_ok=True)
            with open(args.errs_dir / f"errs-{name}-{selection_name(args)}.txt", "w") as errs:
                wer = write_error_stats(errs, name, results)
        print(f"{name}\t{len(results)} utterances\tWER {wer:.2f}%\tRTF {spent / max(audio, 1e-9):.4f}")


if __name__ == "__main__":
    main()

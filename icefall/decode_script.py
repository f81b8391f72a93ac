"""What every recipe's decode.py does: decode the test sets with the model that
icefall's checkpoint flags select, and write icefall's result files.

A recipe's decode.py holds only its parser and a call::

    def get_parser():
        parser = make_parser(__doc__)
        add_decode_arguments(parser, "zipformer/exp", ALL_METHODS)
        model.add_model_arguments(parser)
        AsrDataModule.add_arguments(parser)
        return parser

    def run(argv=None) -> int:
        return decode_main(get_parser().parse_args(argv), model, __file__)

Results go to ``<exp-dir>/<decoding-method>/``: ``recogs-<set>-<key>-<suffix>.txt``,
``errs-...`` and ``wer-summary-...``, with <suffix> ``epoch-<E>-avg-<A>``
(or ``iter-<I>-avg-<A>``, plus ``-use-averaged-model``) and <key> from
:func:`result_key`. Test cuts too short for the model's subsampling are
dropped with a logged count. torch and lhotse are imported only when used,
so that --help is quick.
"""

import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]
Result = Tuple[str, List[str], List[str]]  # (cut id, reference words, hypothesis words)


def add_decode_arguments(parser, exp_dir: str, methods: Sequence[str]) -> None:
    """--epoch/--iter/--avg/--use-averaged-model, --exp-dir (default `exp_dir`),
    the token flags, --decoding-method (one of `methods`), --beam-size,
    --max-sym-per-frame and --device."""
    from icefall.checkpoint import add_checkpoint_arguments
    from icefall.cli import add_device_argument

    add_checkpoint_arguments(parser)
    parser.add_argument("--exp-dir", type=Path, default=Path(exp_dir),
                        help="where the checkpoints are; results go to <exp-dir>/<decoding-method>/")
    parser.add_argument("--bpe-model", type=Path, default=None, help="sentencepiece model (or give --tokens)")
    parser.add_argument("--tokens", type=Path, default=None, help="tokens.txt (None: <lang-dir>/tokens.txt)")
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_bpe_500"),
                        help="holds tokens.txt when neither --tokens nor --bpe-model is given")
    parser.add_argument("--decoding-method", choices=list(methods), default=methods[0],
                        help="how to search")
    parser.add_argument("--beam-size", type=int, default=4,
                        help="beam searches only (transducer and CTC prefix beam search)")
    parser.add_argument("--max-sym-per-frame", type=int, default=1, help="greedy_search only")
    add_device_argument(parser)


def token_flag(args) -> Dict[str, Path]:
    """{flag: path} of the token table the flags name (for existence checks)."""
    if args.tokens is not None:
        return {"--tokens": args.tokens}
    if args.bpe_model is not None:
        return {"--bpe-model": args.bpe_model}
    return {"--lang-dir": args.lang_dir}


def load_token_table(args):
    """(SymbolTable, the path it came from): --tokens, else --bpe-model, else
    <lang-dir>/tokens.txt."""
    from icefall.tokens import bpe_symbol_table, load_bpe_model, read_tokens

    if args.tokens is not None:
        return read_tokens(args.tokens), args.tokens
    if args.bpe_model is not None:
        return bpe_symbol_table(load_bpe_model(args.bpe_model)), args.bpe_model
    path = args.lang_dir / "tokens.txt"
    return read_tokens(path), path


def checkpoint_suffix(args) -> str:
    """``epoch-30-avg-9-use-averaged-model``-style name of the checkpoint flags."""
    suffix = f"iter-{args.iter}-avg-{args.avg}" if args.iter > 0 else f"epoch-{args.epoch}-avg-{args.avg}"
    if args.use_averaged_model:
        suffix += "-use-averaged-model"
    return suffix


def result_key(method: str, beam: int, max_sym_per_frame: int) -> str:
    """icefall's name of a decoding setting in the result files: greedy_search
    (one token per frame at most), greedy_search_max_sym_per_frame_<N>,
    beam_size_<N> (transducer beam searches), ctc-greedy-search,
    prefix-beam-search_beam_size_<N>."""
    if method == "greedy_search":
        return "greedy_search" if max_sym_per_frame == 1 else \
            f"greedy_search_max_sym_per_frame_{max_sym_per_frame}"
    if method == "ctc-greedy-search":
        return method
    if method == "ctc-prefix-beam-search":
        return f"prefix-beam-search_beam_size_{beam}"
    return f"beam_size_{beam}"


def decode_dataset(dl, model, tokens, args) -> Tuple[List[Result], float, float]:
    """Decode every batch of `dl` with --decoding-method; returns (results
    sorted by cut id, audio seconds, decoding seconds)."""
    import torch
    from tqdm import tqdm

    from icefall.decoding import decode_encoder_output

    device = next(model.parameters()).device
    results, audio_seconds, decode_seconds = [], 0.0, 0.0
    for batch in tqdm(dl, desc="decoding", unit="batch"):
        sup = batch["supervisions"]
        feature = batch["inputs"].to(device)
        feature_lens = sup["num_frames"].to(device)
        start = time.perf_counter()
        with torch.no_grad():
            encoder_out, encoder_out_lens = model.forward_encoder(feature, feature_lens)
            hyps = decode_encoder_output(model, encoder_out, encoder_out_lens, args.decoding_method,
                                         beam=args.beam_size, max_sym_per_frame=args.max_sym_per_frame)
        decode_seconds += time.perf_counter() - start
        audio_seconds += float(sup["num_frames"].sum()) * 0.01
        for cut, ref, hyp in zip(sup["cut"], sup["text"], hyps):
            results.append((cut.id, ref.split(), tokens.decode(hyp).split()))
    results.sort()
    return results, audio_seconds, decode_seconds


def save_results(res_dir: Path, test_set: str, key: str, suffix: str, results: List[Result]) -> float:
    """Write recogs-, errs- and wer-summary-<test_set>-<key>-<suffix>.txt; returns the WER in %."""
    from icefall.wer import store_transcripts, write_error_stats, write_wer_summary

    store_transcripts(res_dir / f"recogs-{test_set}-{key}-{suffix}.txt", results)
    with open(res_dir / f"errs-{test_set}-{key}-{suffix}.txt", "w") as f:
        wer = write_error_stats(f, f"{test_set}-{key}", results)
    write_wer_summary(res_dir / f"wer-summary-{test_set}-{key}-{suffix}.txt", {key: wer})
    return wer


def decode_main(args, model_module: ModuleType, script: PathLike,
                configure: Optional[Callable[..., str]] = None) -> int:
    """The whole of a decode.py run (see the module docstring): prints
    ``<test set>\\t<method>\\t<WER>`` per test set and returns 0. User
    mistakes raise :class:`icefall.cli.UserError` (one line, for run_main).

    Args:
      args: flags of :func:`add_decode_arguments`, the recipe's model flags
        and AsrDataModule's.
      model_module: the recipe's model.py (build_model, config_from_args;
        see icefall.model_loading); the loaded model has
        ``frames_after_subsampling``.
      script: the decode.py file (for "run from this folder" messages).
      configure: optional ``configure(model, args) -> str``, called on the
        loaded model (e.g. to set a causal model's chunk size from the flags);
        what it returns is appended to the result files' suffix.
    """
    from icefall.cli import check_inputs_exist, device_from_flag
    from icefall.threads import apply_num_threads

    apply_num_threads()
    check_inputs_exist(script, {"--exp-dir": args.exp_dir, **token_flag(args),
                                "--manifest-dir": args.manifest_dir})

    from icefall.asr_datamodule import AsrDataModule
    from icefall.decoding import check_method, max_sym_for
    from icefall.model_loading import load_model
    from icefall.transcribe import drop_short_cuts
    from icefall.utils import setup_logger

    suffix = checkpoint_suffix(args)
    res_dir = args.exp_dir / args.decoding_method
    res_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(res_dir / f"log-decode-{suffix}")
    device = device_from_flag(args.device)
    logging.info(f"Decoding with {args.decoding_method} on {device}; {vars(args)}")

    tokens, tokens_path = load_token_table(args)
    model = load_model(model_module, args, tokens, tokens_path)
    check_method(model, args.decoding_method)
    args.max_sym_per_frame = max_sym_for(model, args.decoding_method, args.max_sym_per_frame)
    if configure is not None:
        suffix += configure(model, args)
    model.to(device)
    logging.info(f"Number of model parameters: {sum(p.numel() for p in model.parameters())}")

    key = result_key(args.decoding_method, args.beam_size, args.max_sym_per_frame)
    data = AsrDataModule(args)
    summary: Dict[str, float] = {}
    for test_set, cuts in data.test_sets().items():
        cuts, _ = drop_short_cuts(cuts, model.frames_after_subsampling, name=test_set)
        results, audio_s, decode_s = decode_dataset(data.test_dataloaders(cuts), model, tokens, args)
        wer = save_results(res_dir, test_set, key, suffix, results)
        summary[test_set] = wer
        logging.info(
            f"{test_set}: WER {wer:.2f}% over {len(results)} utterances; {args.decoding_method} "
            f"real-time factor {decode_s / max(audio_s, 1e-9):.4f} ({audio_s:.0f} s of audio in {decode_s:.1f} s)"
        )
    for test_set, wer in summary.items():
        print(f"{test_set}\t{args.decoding_method}\t{wer:.2f}")
    logging.info("Done!")
    return 0

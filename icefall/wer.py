"""Transcripts and word error statistics, in icefall's file formats.

``results`` everywhere is a list of ``(cut_id, ref_words, hyp_words)`` with
the words as lists of str.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, TextIO, Tuple, Union

import kaldialign

Result = Tuple[str, List[str], List[str]]
EPS = "*"  # the gap symbol in alignments, as in icefall's errs files


def store_transcripts(filename: Union[str, Path], results: Sequence[Result]) -> None:
    """Write ``recogs-*.txt``: a ``ref=`` and a ``hyp=`` line per utterance."""
    with open(filename, "w", encoding="utf-8") as f:
        for cut_id, ref, hyp in results:
            print(f"{cut_id}:\tref={list(ref)}", file=f)
            print(f"{cut_id}:\thyp={list(hyp)}", file=f)


@dataclass
class ErrorCounts:
    """Counts collected from the alignments of every utterance."""

    ref_len: int = 0
    num_corr: int = 0
    subs: Counter = field(default_factory=Counter)  # (ref, hyp) -> n
    dels: Counter = field(default_factory=Counter)  # ref word -> n
    ins: Counter = field(default_factory=Counter)  # hyp word -> n
    # word -> [corr, as ref in a sub, as hyp in a sub, inserted, deleted]
    words: Dict[str, List[int]] = field(default_factory=dict)

    @property
    def num_errors(self) -> int:
        return sum(self.subs.values()) + sum(self.dels.values()) + sum(self.ins.values())

    @property
    def wer(self) -> float:
        """In percent; an empty reference with insertions counts them over 1 word."""
        return 100.0 * self.num_errors / max(self.ref_len, 1)

    def add(self, ref: Sequence[str], hyp: Sequence[str]) -> List[Tuple[str, str]]:
        ali = kaldialign.align(list(ref), list(hyp), EPS)
        self.ref_len += len(ref)
        for r, h in ali:
            if r == EPS:
                self.ins[h] += 1
                self._word(h)[3] += 1
            elif h == EPS:
                self.dels[r] += 1
                self._word(r)[4] += 1
            elif r != h:
                self.subs[(r, h)] += 1
                self._word(r)[1] += 1
                self._word(h)[2] += 1
            else:
                self.num_corr += 1
                self._word(r)[0] += 1
        return ali

    def _word(self, w: str) -> List[int]:
        return self.words.setdefault(w, [0, 0, 0, 0, 0])


def _merge_error_runs(ali: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """Join consecutive errors into one ``(ref words->hyp words)`` pair, so
    the PER-UTT line reads ``(A B->C)`` rather than ``(A->C) (B->*)``."""
    merged: List[Tuple[List[str], List[str]]] = []
    prev_error = False
    for r, h in ali:
        error = r != h
        if error and prev_error:
            merged[-1][0].append(r)
            merged[-1][1].append(h)
        else:
            merged.append(([r], [h]))
        prev_error = error
    out = []
    for refs, hyps in merged:
        refs = [w for w in refs if w != EPS]
        hyps = [w for w in hyps if w != EPS]
        out.append((" ".join(refs) or EPS, " ".join(hyps) or EPS))
    return out


def write_error_stats(
    f: TextIO, test_set_name: str, results: Sequence[Result], enable_log: bool = True
) -> float:
    """Write an ``errs-*.txt`` report to ``f`` and return the WER in percent.

    Sections, as icefall writes them: the ``%WER`` line, the error counts,
    PER-UTT DETAILS, SUBSTITUTIONS, DELETIONS, INSERTIONS and PER-WORD STATS.
    """
    counts = ErrorCounts()
    alignments = [(cut_id, counts.add(ref, hyp)) for cut_id, ref, hyp in results]
    n_ins, n_del, n_sub = (sum(c.values()) for c in (counts.ins, counts.dels, counts.subs))
    if enable_log:
        logging.info(
            f"[{test_set_name}] %WER {counts.wer:.2f}% [{counts.num_errors} / {counts.ref_len}, "
            f"{n_ins} ins, {n_del} del, {n_sub} sub ]"
        )
    print(f"%WER = {counts.wer:.2f}", file=f)
    print(
        f"Errors: {n_ins} insertions, {n_del} deletions, {n_sub} substitutions, "
        f"over {counts.ref_len} reference words ({counts.num_corr} correct)",
        file=f,
    )
    print(
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, "
        "DELETIONS:, INSERTIONS:, PER-WORD STATS:",
        file=f,
    )
    print("", file=f)
    print("PER-UTT DETAILS: corr or (ref->hyp)  ", file=f)
    for cut_id, ali in alignments:
        pairs = _merge_error_runs(ali)
        text = " ".join(r if r == h else f"({r}->{h})" for r, h in pairs)
        print(f"{cut_id}:\t{text}", file=f)
    print("", file=f)
    print("SUBSTITUTIONS: count ref -> hyp", file=f)
    for (r, h), n in sorted(counts.subs.items(), key=lambda x: (x[1], x[0]), reverse=True):
        print(f"{n}   {r} -> {h}", file=f)
    print("", file=f)
    for title, counter in (("DELETIONS: count ref", counts.dels), ("INSERTIONS: count hyp", counts.ins)):
        print(title, file=f)
        for w, n in sorted(counter.items(), key=lambda x: (x[1], x[0]), reverse=True):
            print(f"{n}   {w}", file=f)
        print("", file=f)
    print("PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp", file=f)
    by_errors = sorted(counts.words.items(), key=lambda x: (sum(x[1][1:]), x[0]), reverse=True)
    for w, (corr, ref_sub, hyp_sub, ins, dels) in by_errors:
        tot = ref_sub + hyp_sub + ins + dels
        print(f"{w}   {corr} {tot} {corr + ref_sub + dels} {corr + hyp_sub + ins}", file=f)
    return float(f"{counts.wer:.2f}")


def write_wer_summary(filename: Union[str, Path], wers: Dict[str, float]) -> None:
    """``wer-summary-*.txt``: one ``setting<TAB>WER`` line per setting, best first."""
    with open(filename, "w", encoding="utf-8") as f:
        print("settings\tWER", file=f)
        for key, wer in sorted(wers.items(), key=lambda x: x[1]):
            print(f"{key}\t{wer}", file=f)


def load_transcripts(filename: Union[str, Path]) -> List[Result]:
    """Read a ``recogs-*.txt`` written by :func:`store_transcripts`.

    Raises:
      ValueError: naming the file and line that is not a ``ref=``/``hyp=`` line
        of that format, or an utterance without both.
    """
    import ast

    refs: Dict[str, List[str]] = {}
    hyps: Dict[str, List[str]] = {}
    with open(filename, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            cut_id, sep, rest = line.rstrip("\n").partition(":\t")
            kind, _, words = rest.partition("=")
            try:
                value = ast.literal_eval(words) if sep and kind in ("ref", "hyp") else None
            except (ValueError, SyntaxError):
                value = None
            if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
                raise ValueError(f"{filename}:{n}: not a recogs line (CUT_ID:<TAB>ref=[...] or hyp=[...])")
            (refs if kind == "ref" else hyps)[cut_id] = value
    if refs.keys() != hyps.keys():
        missing = sorted(refs.keys() ^ hyps.keys())
        raise ValueError(f"{filename}: {len(missing)} utterance(s) without both ref= and hyp=, e.g. {missing[0]}")
    return [(cut_id, refs[cut_id], hyps[cut_id]) for cut_id in refs]


def errors_by_word_count(
    results: Sequence[Result], counts: Dict[str, int], edges: Sequence[int] = (1, 5, 20, 100)
) -> List[Tuple[str, int, int]]:
    """How often reference words are missed, by how often each word occurs in
    another text (e.g. the training transcripts).

    A reference word is missed when the alignment substitutes or deletes it.
    ``edges`` split the counts into bins ``[0, e0), [e0, e1), ..., [e_last, inf)``.

    Returns:
      ``[(bin label, reference words in the bin, missed words in the bin)]``,
      labels such as ``"0"``, ``"1-4"``, ``"100+"``.
    """
    import bisect

    bounds = [0, *edges]
    labels = [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in zip(bounds, bounds[1:])]
    labels.append(f"{bounds[-1]}+")
    total, missed = [0] * len(labels), [0] * len(labels)
    for _, ref, hyp in results:
        for r, h in kaldialign.align(list(ref), list(hyp), EPS):
            if r == EPS:
                continue  # an insertion belongs to no reference word
            i = bisect.bisect_right(bounds, counts.get(r, 0)) - 1
            total[i] += 1
            missed[i] += r != h
    return list(zip(labels, total, missed))

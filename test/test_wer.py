"""WER statistics against hand-computed counts, and icefall's file formats."""

import io
import subprocess
import sys

import pytest

from icefall.wer import (errors_by_word_count, load_transcripts, store_transcripts, write_error_stats,
                         write_wer_summary)
from recipe_fixture import REPO, env

RESULTS = [
    # ref: A B C D, hyp: A X C -> 1 sub (B->X), 1 del (D)
    ("utt1", "A B C D".split(), "A X C".split()),
    # ref: E F, hyp: E F G -> 1 ins (G)
    ("utt2", "E F".split(), "E F G".split()),
    # identical
    ("utt3", "A B".split(), "A B".split()),
]


def _report(results=RESULTS):
    f = io.StringIO()
    wer = write_error_stats(f, "test", results, enable_log=False)
    return wer, f.getvalue()


def test_counts_match_hand_computed_example():
    wer, text = _report()
    # 3 errors over 4 + 2 + 2 = 8 reference words.
    assert wer == 37.5
    lines = text.splitlines()
    assert lines[0] == "%WER = 37.50"
    assert lines[1] == "Errors: 1 insertions, 1 deletions, 1 substitutions, over 8 reference words (6 correct)"


def test_sections_and_per_utterance_details():
    _, text = _report()
    assert "utt1:\tA (B->X) C (D->*)" in text
    assert "utt2:\tE F (*->G)" in text
    assert "utt3:\tA B" in text
    sections = ["PER-UTT DETAILS:", "SUBSTITUTIONS:", "DELETIONS:", "INSERTIONS:", "PER-WORD STATS:"]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    subs = text.split("SUBSTITUTIONS: count ref -> hyp\n")[1].split("\n\n")[0]
    assert subs == "1   B -> X"
    dels = text.split("DELETIONS: count ref\n")[1].split("\n\n")[0]
    assert dels == "1   D"
    ins = text.split("INSERTIONS: count hyp\n")[1].split("\n\n")[0]
    assert ins == "1   G"


def test_per_word_stats():
    _, text = _report()
    stats = {}
    for line in text.split("PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp\n")[1].splitlines():
        word, *nums = line.split()
        stats[word] = list(map(int, nums))
    # word: corr, tot_errs, count_in_ref, count_in_hyp
    assert stats["A"] == [2, 0, 2, 2]
    assert stats["B"] == [1, 1, 2, 1]
    assert stats["X"] == [0, 1, 0, 1]
    assert stats["D"] == [0, 1, 1, 0]
    assert stats["G"] == [0, 1, 0, 1]


def test_consecutive_errors_are_merged():
    _, text = _report([("u", "A B C D".split(), "A Y Z".split())])
    # B C D -> Y Z: two substitutions and a deletion in one run.
    assert "u:\tA (B C D->Y Z)" in text


def test_perfect_and_empty_cases():
    assert _report([("u", ["A"], ["A"])])[0] == 0.0
    assert _report([("u", ["A", "B"], [])])[0] == 100.0


def test_store_transcripts_and_summary(tmp_path):
    store_transcripts(tmp_path / "recogs.txt", RESULTS[:1])
    assert (tmp_path / "recogs.txt").read_text().splitlines() == [
        "utt1:\tref=['A', 'B', 'C', 'D']",
        "utt1:\thyp=['A', 'X', 'C']",
    ]
    write_wer_summary(tmp_path / "wer.txt", {"beam_4": 3.5, "greedy": 2.25})
    assert (tmp_path / "wer.txt").read_text() == "settings\tWER\ngreedy\t2.25\nbeam_4\t3.5\n"


def test_load_transcripts_round_trip_and_bad_lines(tmp_path):
    results = RESULTS + [("utt4", ["IT'S", "O'CLOCK"], [])]  # quotes and an empty hypothesis
    store_transcripts(tmp_path / "recogs.txt", results)
    assert load_transcripts(tmp_path / "recogs.txt") == results
    bad = tmp_path / "bad.txt"
    bad.write_text("utt1:\tref=['A']\nutt1:\thyp=A\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: not a recogs line"):
        load_transcripts(bad)
    bad.write_text("utt1:\tref=['A']\n")
    with pytest.raises(ValueError, match=r"1 utterance\(s\) without both ref= and hyp=, e.g. utt1"):
        load_transcripts(bad)


def test_errors_by_word_count_hand_computed():
    # Training counts: A 0 (unseen), B 3, C 7, D 150; E/F/G unseen.
    counts = {"B": 3, "C": 7, "D": 150}
    rows = errors_by_word_count(RESULTS, counts, edges=(1, 5, 100))
    # Reference words: utt1 A B C D (B substituted, D deleted), utt2 E F, utt3 A B.
    # Bin 0: A, E, F, A (none missed); 1-4: B, B (one missed); 5-99: C; 100+: D (missed).
    assert rows == [("0", 4, 0), ("1-4", 2, 1), ("5-99", 1, 0), ("100+", 1, 1)]


def test_errors_by_frequency_script(tmp_path):
    store_transcripts(tmp_path / "recogs.txt", RESULTS)
    (tmp_path / "train.txt").write_text("B B B C\nC C C C C C D\n" + "D " * 149 + "\n")
    script = REPO / "egs" / "synth" / "ASR" / "local" / "errors_by_frequency.py"
    run = [sys.executable, str(script), "--train-text", str(tmp_path / "train.txt")]
    proc = subprocess.run(run + [str(tmp_path / "recogs.txt")], env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| 1-4 times | 2 | 25.0% | 50.0% |" in proc.stdout
    assert "| 100+ times | 1 | 12.5% | 100.0% |" in proc.stdout
    assert "8 reference words, 25.0% missed" in proc.stdout
    proc = subprocess.run(run + [str(tmp_path / "missing.txt")], env=env(), capture_output=True, text=True)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "missing.txt" in proc.stderr

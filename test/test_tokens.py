"""Token tables, lexicons and BPE helpers."""

import pytest

from icefall.tokens import (
    SymbolTable,
    TokenFileError,
    bpe_lexicon,
    bpe_symbol_table,
    check_tokens_fit_model,
    load_bpe_model,
    read_lexicon,
    read_tokens,
    sample_segmentations,
    train_bpe_model,
    write_lexicon,
    write_tokens,
)


def test_tokens_round_trip_both_ways(tmp_path):
    table = SymbolTable.from_pairs([("<blk>", 0), ("<sos/eos>", 1), ("<unk>", 2), ("\u2581HI", 3)])
    write_tokens(table, tmp_path / "tokens.txt")
    assert (tmp_path / "tokens.txt").read_text().splitlines()[0] == "<blk> 0"
    back = read_tokens(tmp_path / "tokens.txt")
    assert back == table
    assert back["<unk>"] == 2 and back[3] == "\u2581HI" and len(back) == 4
    assert back.decode([3, 3]) == "HI HI"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a 0\nb 0\n", "duplicate id 0"),
        ("a 0\na 1\n", "duplicate symbol 'a'"),
        ("a 0\nb 2\n", "not contiguous"),
        ("", "empty"),
        ("a zero\n", "expected 'symbol id'"),
    ],
)
def test_bad_token_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "tokens.txt"
    path.write_text(text)
    with pytest.raises(TokenFileError) as e:
        read_tokens(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_missing_token_file(tmp_path):
    with pytest.raises(TokenFileError, match="not found"):
        read_tokens(tmp_path / "nope.txt")


def test_tokens_that_do_not_fit_the_model(tmp_path):
    table = SymbolTable.from_pairs([("a", 0), ("b", 1)])
    with pytest.raises(TokenFileError, match="has 2 tokens but the model's vocabulary size is 500"):
        check_tokens_fit_model(table, 500, tmp_path / "tokens.txt")


def test_lexicon_round_trip(tmp_path):
    lex = [("HELLO", ["\u2581HE", "LLO"]), ("A", ["\u2581A"])]
    write_lexicon(lex, tmp_path / "lexicon.txt")
    assert read_lexicon(tmp_path / "lexicon.txt") == lex


def test_bpe_training_gives_icefall_special_ids(tmp_path):
    words = ["HELLO", "WORLD", "THE", "CAT", "SAT", "ON", "MAT", "DOG", "RAN", "FAST"]
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6)) for i in range(300)]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    model = train_bpe_model(tmp_path / "text.txt", tmp_path / "bpe", vocab_size=20)
    sp = load_bpe_model(model)
    table = bpe_symbol_table(sp)
    assert table.symbols[:3] == ["<blk>", "<sos/eos>", "<unk>"] and len(table) == 20
    assert table.decode(sp.encode("HELLO CAT")) == "HELLO CAT"
    lex = dict(bpe_lexicon(sp, ["CAT", "HELLO", "CAT"]))
    assert "".join(lex["HELLO"]).replace("\u2581", "") == "HELLO" and len(lex) == 2


def test_bad_bpe_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TokenFileError, match="empty.txt"):
        train_bpe_model(tmp_path / "empty.txt", tmp_path / "bpe", 20)
    (tmp_path / "junk.model").write_text("junk")
    with pytest.raises(TokenFileError, match="junk.model"):
        load_bpe_model(tmp_path / "junk.model")


def test_a_tokens_file_that_is_not_utf8_is_named(tmp_path):
    from icefall.tokens import TokenFileError, read_lexicon, read_tokens

    path = tmp_path / "tokens.txt"
    path.write_bytes("<blk> 0\n\u2581A 1\n".encode("utf-8") + b"\xff\xfe 2\n")
    with pytest.raises(TokenFileError, match=r"tokens\.txt:3: not UTF-8") as e:
        read_tokens(path)
    assert "\n" not in str(e.value)
    with pytest.raises(TokenFileError, match="not UTF-8"):
        read_lexicon(path)


def test_sampled_segmentations_follow_the_unigram_model(tmp_path):
    """Subword regularisation against brute force: every segmentation of a
    word into the model's pieces, weighted by exp(alpha * sum of the pieces'
    log-probabilities), against the frequencies of 4000 seeded draws."""
    import collections
    import math

    words = ("HELLO HELP HELD YELLOW MELLOW FELLOW HELM CELLO SHELL BELOW WORLD WORD WORK WORRY THE "
             "THEN THERE CAT CATCH MATCH MAT SAT SATURDAY ON ONE ONCE DOG DOGS RAN RANG FAST FASTER "
             "LAST LATER").split()
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6)) for i in range(400)]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    sp = load_bpe_model(train_bpe_model(tmp_path / "text.txt", tmp_path / "bpe", vocab_size=40))
    pieces = {sp.id_to_piece(i): i for i in range(3, sp.get_piece_size())}
    alpha, word = 0.2, "\u2581FASTER"  # FASTER, FAST E R, F A S T E R

    def segmentations(rest):
        if not rest:
            yield ()
        for end in range(1, len(rest) + 1):
            if rest[:end] in pieces:
                for tail in segmentations(rest[end:]):
                    yield (pieces[rest[:end]],) + tail

    weights = {s: math.exp(alpha * sum(sp.get_score(i) for i in s)) for s in segmentations(word)}
    assert len(weights) == 3
    total = sum(weights.values())
    draws = collections.Counter(tuple(sample_segmentations(sp, ["FASTER"], alpha, seed=(k,))[0])
                                for k in range(4000))  # with alpha 0.5: 0.17 away
    assert set(draws) <= set(weights)
    distance = sum(abs(draws[s] / 4000 - w / total) for s, w in weights.items()) / 2
    assert distance < 0.03, (distance, draws.most_common(5))

    texts = ["HELLO WORLD", "THE FASTER CAT SAT ON THE YELLOW MAT"]
    once = sample_segmentations(sp, texts, alpha, seed=(1, 2, 0))
    assert once == sample_segmentations(sp, texts, alpha, seed=(1, 2, 0))
    assert [sp.decode(ids) for ids in once] == texts
    others = [sample_segmentations(sp, texts, alpha, seed=(1, 2, r)) for r in range(1, 20)]
    assert any(o != once for o in others)
    # The same seed in another process: the draws must not depend on the process.
    import json
    import subprocess
    import sys

    code = ("import json, sys; from icefall.tokens import load_bpe_model, sample_segmentations; "
            "sp = load_bpe_model(sys.argv[1]); "
            "print(json.dumps([sample_segmentations(sp, json.loads(sys.argv[2]), 0.2, seed=(1, 2, r)) "
            "for r in range(20)]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bpe.model"), json.dumps(texts)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [once] + others

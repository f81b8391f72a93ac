"""The built-in synthetic corpus: English sentences spoken by espeak-ng voices.

Layout written by :func:`synthesize_corpus` under ``audio_dir``::

    {split}/{utt_id}.flac      16 kHz mono PCM-16 FLAC, one per utterance
    {split}.jsonl              one :class:`Utterance` per line (text, voice, jitter)
    vocab.txt                  the words of the text source (all of them with num_words 0)

Besides train/dev/test, ``config.heldout`` (a text file, one sentence a
line) adds the split ``heldout``: those sentences, normalised with
:func:`icefall.text.normalize_text`, spoken by the test voices; they are
never used as corpus sentences.

:func:`make_manifests` turns a split into lhotse RecordingSet/SupervisionSet.

Splits never share sentences, and the voices of dev, test and heldout use variants
(timbres) that training never hears; every split uses all accents.
Everything is drawn from ``random.Random``/``numpy`` generators seeded by
``seed``, so the same config gives identical transcripts and audio.
"""

import json
import logging
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, Path]
SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")

# All English accents of espeak-ng but Shavian (a different script).
LANGUAGES = (
    "en", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-gb-x-rp", "en-us", "en-us-nyc",
)
# Variants (timbres). Robotic, whispering and croaking ones are left out.
# dev and test variants are never used for training.
TRAIN_VARIANTS = (
    "m1", "m2", "m4", "m5", "m6", "m7", "f1", "f2", "f4", "f5", "klatt", "klatt3",
    "klatt5", "adam", "Alex", "Alicia", "Andy", "aunty", "belinda", "benjamin", "boris",
    "caleb", "david", "ed", "Gene", "iven", "john", "Lee", "linda", "max", "Michael",
    "michel", "paul", "quincy", "Reed", "rob", "robert", "steph", "steph3", "travis",
    "zac", "anika", "grandpa", "norbert", "shelby", "pablo",
)
DEV_VARIANTS = ("m8", "klatt2", "Andrea", "edward2", "iven2", "sandro")
TEST_VARIANTS = ("m3", "f3", "klatt4", "Annie", "grandma", "edward", "Mike", "Gene2", "steph2", "mike2")


@dataclass
class SynthConfig:
    """What to synthesise; every field is a flag of ``local/synthesize.py``."""

    num_train: int = 6000
    num_dev: int = 300
    num_test: int = 300
    # Sentences use only the N most frequent words (0: all) of the first
    # vocab_sample_tokens words of the text (all of WordNet): this drops rare
    # names of plants and animals and keeps everyday words (README.md).
    num_words: int = 20000
    vocab_sample_tokens: Optional[int] = None  # None: all of WordNet, 300,000 of a Markov walk
    min_words: int = 4
    max_words: int = 20
    seed: int = 0
    # "wordnet": WordNet's examples, then its glosses; None (configs written
    # before WordNet became the default): essential-generators' Markov chain.
    text_source: Optional[str] = "wordnet"
    heldout: Optional[str] = None  # held-out sentences, one a line (split "heldout")
    languages: Tuple[str, ...] = LANGUAGES
    train_variants: Tuple[str, ...] = TRAIN_VARIANTS
    dev_variants: Tuple[str, ...] = DEV_VARIANTS
    test_variants: Tuple[str, ...] = TEST_VARIANTS
    min_rate: int = 140  # words per minute (espeak's default is 175)
    max_rate: int = 200
    min_pitch: int = 30  # 0..100, default 50
    max_pitch: int = 70
    min_snr: float = 15.0  # dB of white noise
    max_snr: float = 40.0
    # Seconds of silence kept after the speech, drawn uniformly from this
    # range; espeak-ng ends every utterance with about 0.3 s of silence (12%
    # of the default corpus's audio). None keeps all of it, as corpora made
    # before this field existed did.
    tail: Optional[Tuple[float, float]] = (0.05, 0.15)
    # Seconds of silence put before the speech, drawn uniformly from this
    # range (espeak-ng itself starts with about 0.01 s). A shorter range
    # saves training time but makes the model worse on recordings that start
    # with a longer silence (RESULTS.md, 2026-12-02 (night)).
    lead: Tuple[float, float] = (0.05, 0.3)

    def sizes(self) -> Dict[str, int]:
        return {"train": self.num_train, "dev": self.num_dev, "test": self.num_test}

    def variants(self, split: str) -> Tuple[str, ...]:
        return {"train": self.train_variants, "dev": self.dev_variants,
                "test": self.test_variants}[split]


@dataclass
class Utterance:
    """One planned utterance: its text and how to speak it."""

    id: str
    split: str
    text: str  # normalised, upper case (the transcript)
    voice: str  # "language+variant", also the speaker id
    rate: int
    pitch: int
    pitch_range: int
    snr: float  # dB, white noise
    gain: float  # peak amplitude before noise
    lead: float  # seconds of silence before the speech
    noise_seed: int
    num_samples: int = 0  # filled in once synthesised
    tail: Optional[float] = None  # seconds kept after the speech; None: espeak's whole output

    @classmethod
    def from_dict(cls, d: dict) -> "Utterance":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class VoiceError(ValueError):
    """An unknown voice name; the message names the flag."""


def check_config(config: SynthConfig) -> None:
    """Check the voices against espeak-ng and the splits for overlaps; raise
    :class:`VoiceError` / ``ValueError`` naming the offending flag."""
    from icefall.espeak import get_engine

    engine = get_engine()
    known_langs = {v.name.lower() for v in engine.languages()}
    known_variants = {v.name for v in engine.variants()}
    for lang in config.languages:
        if lang.lower() not in known_langs:
            raise VoiceError(
                f"--languages: unknown espeak voice {lang!r}; English ones are "
                f"{', '.join(v.name for v in engine.languages('en'))}"
            )
    for split in SPLITS:
        for variant in config.variants(split):
            if variant not in known_variants:
                raise VoiceError(
                    f"--{split}-variants: unknown espeak variant {variant!r}; "
                    f"known ones: {', '.join(sorted(known_variants, key=str.lower))}"
                )
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        common = set(config.variants(a)) & set(config.variants(b))
        if common:
            raise ValueError(
                f"--{a}-variants and --{b}-variants share {sorted(common)}: "
                "held-out voices must not be heard in training"
            )
    for split, n in config.sizes().items():
        if n < 0:
            raise ValueError(f"--num-{split}: must be >= 0, got {n}")
        if n > 0 and not config.variants(split):
            raise ValueError(f"--{split}-variants: empty, but --num-{split} is {n}")
    if not config.languages:
        raise ValueError("--languages: empty")
    for flag, seconds in (("--tail", config.tail), ("--lead", config.lead)):
        if seconds is not None and not (len(seconds) == 2 and 0 <= seconds[0] <= seconds[1]):
            raise ValueError(f"{flag}: expected MIN,MAX seconds with 0 <= MIN <= MAX, got {seconds}")


def read_heldout(path: PathLike) -> List[str]:
    """The normalised sentences of a held-out text file (one sentence a line;
    blank lines and lines starting with ``#`` are skipped)."""
    from icefall.text import TextSourceError, normalize_text

    path = Path(path)
    if not path.is_file():
        raise TextSourceError(f"{path}: held-out sentence file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    sentences = [normalize_text(x) for x in lines if x.strip() and not x.startswith("#")]
    return [s for s in sentences if s]


def _plan_split(split: str, sentences: List[str], voices: List[str], config: SynthConfig,
                rng: random.Random) -> List[Utterance]:
    utts = []
    # Its own generator: the other draws stay those of corpora planned without a tail.
    tail_rng = random.Random(f"synth-tail-{config.seed}-{split}")
    for i, text in enumerate(sentences):
        utts.append(Utterance(
            id=f"synth-{split}-{i:06d}",
            split=split,
            text=text,
            voice=rng.choice(voices),
            rate=rng.randint(config.min_rate, config.max_rate),
            pitch=rng.randint(config.min_pitch, config.max_pitch),
            pitch_range=rng.randint(30, 80),
            snr=round(rng.uniform(config.min_snr, config.max_snr), 2),
            gain=round(rng.uniform(0.2, 0.9), 3),
            lead=round(rng.uniform(*config.lead), 3),
            noise_seed=rng.randrange(2**31),
            tail=round(tail_rng.uniform(*config.tail), 3) if config.tail else None,
        ))
    return utts


def plan_corpus(config: SynthConfig, progress: bool = False) -> Tuple[Dict[str, List[Utterance]], List[str]]:
    """Choose the sentences, voices and jitter of every utterance.

    Returns:
      ({split: [Utterance, ...]}, vocabulary). Sentences are unique across
      train/dev/test (dev and test sentences are never in train), and no
      held-out sentence is among them.
    """
    from icefall.text import build_sentence_pool, load_text_source

    heldout = read_heldout(config.heldout) if config.heldout else []
    source = load_text_source(config.text_source)
    total = sum(config.sizes().values())
    pool, vocab = build_sentence_pool(
        source, total, num_words=config.num_words, min_words=config.min_words,
        max_words=config.max_words, seed=config.seed, progress=progress, exclude=heldout,
        vocab_sample_tokens=config.vocab_sample_tokens or getattr(source, "vocab_sample_tokens", 300_000),
    )
    rng = random.Random(f"synth-plan-{config.seed}")
    rng.shuffle(pool)
    plan: Dict[str, List[Utterance]] = {}
    start = 0
    for split in ("test", "dev", "train"):  # held-out splits first: sizes of train don't move them
        n = config.sizes()[split]
        sentences, start = pool[start:start + n], start + n
        voices = [f"{lang}+{var}" for lang in config.languages for var in config.variants(split)]
        plan[split] = _plan_split(split, sentences, voices, config, rng)
    plan = {s: plan[s] for s in SPLITS}
    if heldout:
        # Its own generator: the held-out audio does not move with the corpus sizes.
        voices = [f"{lang}+{var}" for lang in config.languages for var in config.test_variants]
        plan["heldout"] = _plan_split("heldout", heldout, voices, config,
                                      random.Random(f"synth-heldout-{config.seed}"))
    return plan, vocab


def render(utt: Utterance) -> np.ndarray:
    """Synthesise one utterance: espeak, leading silence, gain, silence after
    the speech cut to ``utt.tail`` seconds (if set), white noise.
    Returns float32 ``[N]`` at 16 kHz."""
    return _render(utt, word_starts=False)


def render_with_word_starts(utt: Utterance) -> Tuple[np.ndarray, np.ndarray, int]:
    """:func:`render` plus where the words are.

    Returns:
      (audio, starts, speech_end): audio float32 ``[N]`` at 16 kHz, exactly
      what :func:`render` gives in the same engine state (asking espeak for
      its word events does not change its output), e.g. both right after
      ``get_engine().reset()``; starts int64 ``[W]``, ``W =
      len(utt.text.split())``, each word's first sample in ``audio`` (the
      leading silence included), -1 for a word espeak joined to the one
      before it (see :meth:`icefall.espeak.Espeak.synthesize`); speech_end,
      one past the last sample of the speech (before the noise is added)
      above 1% of its peak.
    """
    return _render(utt, word_starts=True)


def _render(utt: Utterance, word_starts: bool):
    from icefall.espeak import synthesize

    # Lower case: espeak may spell out an all-caps word letter by letter.
    out = synthesize(utt.text.lower(), utt.voice, rate=utt.rate, pitch=utt.pitch,
                     pitch_range=utt.pitch_range, sample_rate=SAMPLE_RATE, word_starts=word_starts)
    speech, starts = out if word_starts else (out, None)
    peak = float(np.abs(speech).max()) if speech.size else 0.0
    if peak > 0:
        speech = speech * (utt.gain / peak)
    voiced = np.abs(speech) > 0.01 * utt.gain
    if utt.tail is not None and voiced.any():
        end = int(np.nonzero(voiced)[0][-1]) + 1 + int(utt.tail * SAMPLE_RATE)
        speech, voiced = speech[:end], voiced[:end]
    lead = np.zeros(int(utt.lead * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([lead, speech]).astype(np.float32)
    power = float(np.mean(speech[voiced] ** 2)) if voiced.any() else 0.0
    noise_rng = np.random.default_rng(utt.noise_seed)
    noise = noise_rng.standard_normal(audio.shape[0]).astype(np.float32)
    audio += noise * np.float32(np.sqrt(power / 10 ** (utt.snr / 10)))
    audio = np.clip(audio, -1.0, 1.0)
    if starts is None:
        return audio
    speech_end = int(np.nonzero(voiced)[0][-1]) + 1 if voiced.any() else 0
    return audio, starts + lead.shape[0], lead.shape[0] + speech_end


# espeak's output depends on the utterances before it in the process, so the
# engine is reloaded at the start of each block of this many utterances: the
# audio then depends on the plan only, not on how blocks go to processes.
BLOCK = 16


def _render_block(jobs: List[Tuple[Utterance, str]]) -> List[int]:
    import soundfile as sf

    from icefall.espeak import get_engine

    get_engine().reset()
    lengths = []
    for utt, path in jobs:
        audio = render(utt)
        tmp = path + ".tmp"
        sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        Path(tmp).replace(path)
        lengths.append(int(audio.shape[0]))
    return lengths


def synthesize_corpus(
    config: SynthConfig, audio_dir: PathLike, num_jobs: int = 1, progress: bool = True,
    splits: Optional[Tuple[str, ...]] = None,
) -> Dict[str, List[Utterance]]:
    """Plan and synthesise the corpus into ``audio_dir`` (see the module doc).

    ``{split}.jsonl`` is written last, after all its audio: it marks a
    finished split.  ``splits`` limits the audio written to some splits
    (e.g. only the test set of a corpus a model was trained on): the plan,
    hence their audio, is that of the whole config. Default: all splits,
    with ``heldout`` if ``config.heldout`` is set.
    """
    from tqdm import tqdm

    check_config(config)
    if splits is None:
        splits = SPLITS + (("heldout",) if config.heldout else ())
    known = SPLITS + (("heldout",) if config.heldout else ())
    unknown = sorted(set(splits) - set(known))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected some of {list(known)}")
    audio_dir = Path(audio_dir)
    plan, vocab = plan_corpus(config, progress=progress)
    audio_dir.mkdir(parents=True, exist_ok=True)
    (audio_dir / "vocab.txt").write_text("".join(w + "\n" for w in vocab), encoding="utf-8")
    pool = None
    if num_jobs > 1:
        import multiprocessing

        # spawn: a fresh espeak engine per worker, nothing inherited from the parent
        pool = multiprocessing.get_context("spawn").Pool(num_jobs)
    try:
        for split, utts in plan.items():
            if split not in splits:
                continue
            (audio_dir / split).mkdir(exist_ok=True)
            jobs = [(u, str(audio_dir / split / f"{u.id}.flac")) for u in utts]
            blocks = [jobs[i:i + BLOCK] for i in range(0, len(jobs), BLOCK)]
            results = pool.imap(_render_block, blocks) if pool else map(_render_block, blocks)
            bar = tqdm(total=len(utts), desc=f"synth {split}", disable=not progress)
            for block, lengths in zip(blocks, results):
                for (utt, _), n in zip(block, lengths):
                    utt.num_samples = n
                bar.update(len(block))
            bar.close()
            lines = "".join(json.dumps(asdict(u), ensure_ascii=False) + "\n" for u in utts)
            tmp = audio_dir / f"{split}.jsonl.tmp"
            tmp.write_text(lines, encoding="utf-8")
            tmp.replace(audio_dir / f"{split}.jsonl")
            hours = sum(u.num_samples for u in utts) / SAMPLE_RATE / 3600
            logging.info(f"{split}: {len(utts)} utterances, {hours:.2f} h")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return plan


def read_plan(audio_dir: PathLike, split: str) -> List[Utterance]:
    path = Path(audio_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the synthesis stage first")
    with open(path, encoding="utf-8") as f:
        return [Utterance.from_dict(json.loads(line)) for line in f if line.strip()]


def make_manifests(audio_dir: PathLike, split: str):
    """lhotse ``(RecordingSet, SupervisionSet)`` of one synthesised split; the
    audio paths are ``audio_dir/split/id.flac`` as given (relative stays relative)."""
    from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recordings, supervisions = [], []
    for u in read_plan(audio_dir, split):
        path = Path(audio_dir) / split / f"{u.id}.flac"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run the synthesis stage again")
        duration = u.num_samples / SAMPLE_RATE
        recordings.append(Recording(
            id=u.id, sources=[AudioSource(type="file", channels=[0], source=str(path))],
            sampling_rate=SAMPLE_RATE, num_samples=u.num_samples, duration=duration,
        ))
        supervisions.append(SupervisionSegment(
            id=u.id, recording_id=u.id, start=0.0, duration=duration, channel=0,
            text=u.text, language="English", speaker=u.voice,
            custom={"rate": u.rate, "pitch": u.pitch, "snr": u.snr},
        ))
    return RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions)

"""Text to speech with espeak-ng, through the ``espeakng-loader`` wheel.

``espeakng_loader`` ships ``libespeak-ng.so`` and its ``espeak-ng-data``
directory (``get_library_path()``, ``get_data_path()``), so nothing needs to be
installed system-wide. We drive the C API with ctypes in synchronous mode:
samples come back through a callback as int16 at espeak's native 22050 Hz and
are resampled to 16 kHz.

espeak-ng keeps global state, so one process has one engine: :class:`Espeak`
is a process-wide singleton (use separate processes for parallel synthesis).
Its output also depends on what it said before; ``fresh=True`` (or
:meth:`Espeak.reset`) reloads the library so that the same call gives the
same samples.

A voice is ``language`` or ``language+variant``, e.g. ``en-us+m3``: the
language (``en-us``, ``en-gb-x-rp``, ...) sets the pronunciation, the variant
(``m1``..``m8``, ``f1``..``f5``, ``klatt``, ``adam``, ...) the timbre.
"""

import ctypes
import threading
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np

from icefall.audio import resample

ESPEAK_RATE = 22050

# espeak_AUDIO_OUTPUT, espeak_PARAMETER and flag values from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
# espeak_EVENT_TYPE values
_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1


class EspeakError(RuntimeError):
    """espeak-ng could not be loaded or refused a voice or text."""


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT of speak_lib.h. ``sample`` is the event's position in
    samples at the native rate from the start of the message (``audio_position``
    is the same in whole milliseconds)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class VoiceInfo:
    """A language voice or a variant as listed by espeak-ng."""

    name: str  # what to pass to synthesize(): "en-us" or the variant "m3"
    description: str  # e.g. "English (America)" or "male3"
    gender: str  # "male", "female" or "" (unknown)


class Espeak:
    """The espeak-ng engine of this process; get it with :func:`get_engine`."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:
            raise EspeakError("espeakng-loader is not installed: pip install espeakng-loader") from e
        self._lib_path = espeakng_loader.get_library_path()
        self._data_path = espeakng_loader.get_data_path()
        self._chunks: List[np.ndarray] = []
        # word events: (native-rate sample, 1-based character position in the text)
        self._word_events: List[Tuple[int, int]] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: C holds it
        self._lock = threading.Lock()
        self._lib = None
        self._srand = _c_srand()
        self._load()
        self._languages = self._list(None)
        self._variants = self._list(b"variant")

    def _load(self) -> None:
        try:
            lib = ctypes.CDLL(self._lib_path)
        except OSError as e:
            raise EspeakError(f"{self._lib_path}: cannot load libespeak-ng ({e})") from None
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path.encode(), 0)
        if rate <= 0:
            raise EspeakError(f"{self._data_path}: espeak_Initialize failed ({rate})")
        self.native_rate = rate
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib

    def reset(self) -> None:
        """Return the engine to its freshly loaded state.

        espeak-ng keeps state in static variables from one utterance to the
        next (its output depends on what was said before, even after
        ``espeak_Terminate``), so reproducible audio needs a fresh library:
        we unload and reload it (about 40 ms).
        """
        import _ctypes

        with self._lock:
            self._lib.espeak_Terminate()
            _ctypes.dlclose(self._lib._handle)
            self._lib = None
            self._load()

    def _on_audio(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        if events:
            # Reading the events does not change what espeak synthesises.
            ev = ctypes.cast(events, ctypes.POINTER(_Event))
            i = 0
            while ev[i].type != _EVENT_LIST_TERMINATED:
                if ev[i].type == _EVENT_WORD:
                    self._word_events.append((int(ev[i].sample), int(ev[i].text_position)))
                i += 1
        return 0  # 0 = continue

    def _list(self, languages: Optional[bytes]) -> List[VoiceInfo]:
        spec = None
        if languages is not None:
            spec = _Voice()
            spec.languages = languages
        voices = self._lib.espeak_ListVoices(ctypes.byref(spec) if spec is not None else None)
        out, i = [], 0
        while voices[i]:
            v = voices[i].contents
            # The identifier is the voice file ("gmw/en-US", "!v/m3"); its base
            # name is what espeak_SetVoiceByName accepts, languages in lower case.
            name = v.identifier.decode().split("/")[-1]
            if languages != b"variant":
                name = name.lower()
            gender = {1: "male", 2: "female"}.get(v.gender, "")
            out.append(VoiceInfo(name=name, description=v.name.decode(), gender=gender))
            i += 1
        return out

    def languages(self, prefix: str = "") -> List[VoiceInfo]:
        """Language voices whose name starts with ``prefix`` (e.g. ``"en"``)."""
        return [v for v in self._languages if v.name.startswith(prefix)]

    def variants(self) -> List[VoiceInfo]:
        """Voice variants (``m1``, ``f2``, ``klatt``, ``adam``, ...)."""
        return list(self._variants)

    def check_voice(self, voice: str) -> None:
        """Raise :class:`EspeakError` unless ``voice`` is ``lang`` or ``lang+variant``
        with a known language and variant (espeak itself ignores unknown variants)."""
        lang, _, variant = voice.partition("+")
        if lang.lower() not in {v.name.lower() for v in self._languages}:
            raise EspeakError(
                f"unknown espeak voice {voice!r}: no language {lang!r}; "
                f"English ones: {', '.join(v.name for v in self.languages('en'))}"
            )
        if variant and variant not in {v.name for v in self._variants}:
            raise EspeakError(
                f"unknown espeak voice {voice!r}: no variant {variant!r}; "
                f"e.g. {', '.join(v.name for v in self._variants[:12])}, ..."
            )

    def synthesize(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        sample_rate: int = 16000,
        seed: int = 0,
        fresh: bool = False,
        word_starts: bool = False,
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Speak ``text``.

        Args:
          text: what to say (UTF-8; lower case avoids acronym spelling of all-caps words).
          voice: ``lang`` or ``lang+variant``, e.g. ``"en-gb-x-rp+f2"``.
          rate: speed in words per minute (espeak's default 175; 80..450).
          pitch: base pitch 0..100 (default 50).
          pitch_range: intonation range 0..100 (default 50; 0 is monotone).
          sample_rate: output rate in Hz (espeak's native rate is 22050).
          seed: espeak-ng draws random numbers (e.g. for the voicing source),
            some variants from the C library's ``rand()``; both are reseeded
            with this before each utterance, so the same arguments give the
            same samples after a reset.
          fresh: :meth:`reset` first, so the result does not depend on
            earlier utterances (costs about 40 ms).
          word_starts: also return where each word starts (espeak's word
            events); the samples are the same either way.

        Returns:
          float32 samples ``[N]`` in [-1, 1] at ``sample_rate``; with
          ``word_starts`` the pair (samples, starts): ``starts`` is int64
          ``[W]`` for the ``W = len(text.split())`` words, the sample (at
          ``sample_rate``) where espeak began each word, or -1 for a word
          espeak spoke joined to the word before it without an event of its
          own (it does so with unstressed function words: "in the winter"
          gives events for "in" and "winter" only). The starts that are not
          -1 increase.
        """
        self.check_voice(voice)
        if fresh:
            self.reset()
        data = text.encode("utf-8")
        with self._lock:
            lib = self._lib
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise EspeakError(f"espeak refused voice {voice!r}")
            for param, value in (
                (_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range),
                (_PARAM_VOLUME, 100),
            ):
                lib.espeak_SetParameter(param, int(value), 0)
            lib.espeak_ng_SetRandSeed(int(seed))
            if self._srand is not None:  # some variants (caleb, Reed) draw from the C library's rand()
                self._srand(int(seed) & 0xFFFFFFFF)
            self._chunks, self._word_events = [], []
            err = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
            lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
            events, self._word_events = self._word_events, []
        if err != 0:
            raise EspeakError(f"espeak_Synth failed with error {err} for text {text[:50]!r}")
        if not chunks:
            audio = np.zeros(0, dtype=np.float32)
        else:
            samples = np.concatenate(chunks).astype(np.float32) / 32768.0
            audio = resample(samples, self.native_rate, sample_rate)
        if not word_starts:
            return audio
        return audio, _word_starts(text, events, self.native_rate, sample_rate)


def _word_starts(text: str, events: List[Tuple[int, int]], native_rate: int,
                 sample_rate: int) -> np.ndarray:
    """Each whitespace-separated word of ``text``: the output sample of the
    word event at its first character (or inside it), else -1. ``events`` are
    (native-rate sample, 1-based character position) pairs."""
    import bisect
    import re

    firsts = [m.start() + 1 for m in re.finditer(r"\S+", text)]  # 1-based, as espeak counts
    starts = np.full(len(firsts), -1, dtype=np.int64)
    for sample, position in events:
        i = bisect.bisect_right(firsts, position) - 1
        if i >= 0 and starts[i] < 0:
            # native rate -> output rate, rounded (resample keeps time 0 at sample 0)
            starts[i] = (sample * sample_rate + native_rate // 2) // native_rate
    return starts


def _c_srand():
    """The C library's ``srand`` (espeak-ng shares the process's C library),
    or None where it cannot be found."""
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        srand = ctypes.CDLL(name).srand if name else None
    except (OSError, AttributeError):
        return None
    if srand is not None:
        srand.argtypes, srand.restype = [ctypes.c_uint], None
    return srand


_ENGINE: Optional[Espeak] = None


def get_engine() -> Espeak:
    """The process-wide :class:`Espeak` (created on first use)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE


def list_voices(prefix: str = "en") -> List[VoiceInfo]:
    """Language voices whose name starts with ``prefix``."""
    return get_engine().languages(prefix)


def list_variants() -> List[VoiceInfo]:
    return get_engine().variants()


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
               pitch_range: int = 50, sample_rate: int = 16000, seed: int = 0,
               fresh: bool = False, word_starts: bool = False
               ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Speak ``text`` with ``voice``; float32 ``[N]`` at ``sample_rate``, with
    ``word_starts`` also each word's first sample (int64 ``[W]``).
    See :meth:`Espeak.synthesize`."""
    return get_engine().synthesize(text, voice, rate, pitch, pitch_range, sample_rate, seed, fresh,
                                   word_starts)

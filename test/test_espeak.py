"""Tests of icefall/espeak.py: espeak-ng through ctypes."""

import numpy as np
import pytest

from icefall import espeak


def test_lists_english_voices_and_variants():
    names = [v.name for v in espeak.list_voices("en")]
    for name in ("en", "en-us", "en-gb-x-rp", "en-029"):
        assert name in names
    variants = {v.name: v for v in espeak.list_variants()}
    assert {"m1", "m7", "f1", "f5", "klatt"} <= set(variants)
    assert variants["f2"].gender == "female" and variants["m3"].gender == "male"


def test_synthesize_returns_16k_float32_speech():
    x = espeak.synthesize("the old town was built near the river", "en-us")
    assert x.dtype == np.float32 and x.ndim == 1
    assert 1.0 < len(x) / 16000 < 5.0  # eight words at 175 words per minute
    assert 0.05 < np.abs(x).max() <= 1.0



def test_fresh_synthesis_is_reproducible():
    # espeak's output depends on what it said before; fresh=True reloads it
    text = "the old town was built near the river"
    for voice in ("en-us", "en-gb-x-rp+klatt", "en-029+f2"):
        a = espeak.synthesize(text, voice, fresh=True)
        espeak.synthesize("something else, entirely different", voice)
        b = espeak.synthesize(text, voice, fresh=True)
        assert np.array_equal(a, b), voice


def test_rate_pitch_and_voice_change_the_audio():
    text = "people came to the town from the north"
    base = espeak.synthesize(text, "en-gb-x-rp+m3", rate=175)
    slow = espeak.synthesize(text, "en-gb-x-rp+m3", rate=120)
    assert len(slow) > 1.2 * len(base)
    high = espeak.synthesize(text, "en-gb-x-rp+m3", pitch=90)
    other = espeak.synthesize(text, "en-gb-x-rp+f2")
    for y in (high, other):
        n = min(len(base), len(y))
        assert not np.allclose(base[:n], y[:n], atol=1e-3)


def test_native_rate_output():
    x22 = espeak.synthesize("hello there", "en-us", sample_rate=22050, fresh=True)
    x16 = espeak.synthesize("hello there", "en-us", fresh=True)
    assert abs(len(x22) * 16000 / 22050 - len(x16)) <= 2


def test_unknown_voices_are_errors():
    with pytest.raises(espeak.EspeakError, match="unknown espeak voice 'xx-yy'"):
        espeak.synthesize("hello", "xx-yy")
    # espeak itself would silently ignore an unknown variant
    with pytest.raises(espeak.EspeakError, match="no variant 'nosuch'"):
        espeak.synthesize("hello", "en-us+nosuch")

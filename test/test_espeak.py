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


def test_every_corpus_variant_is_reproducible():
    """Each variant the synthetic corpus speaks with gives the same samples
    twice. Some (caleb, Reed) draw noise from the C library's rand(), which
    espeak_ng_SetRandSeed does not reseed: without reseeding it too, their
    utterances (4% of the training audio) differed from run to run."""
    from icefall.synth_corpus import TEST_VARIANTS, TRAIN_VARIANTS

    text = "they stuck me with the dinner bill"
    for variant in TRAIN_VARIANTS + TEST_VARIANTS:
        a = espeak.synthesize(text, f"en+{variant}", fresh=True)
        espeak.synthesize("something else, entirely different", f"en+{variant}")  # rand() moves on
        b = espeak.synthesize(text, f"en+{variant}", fresh=True)
        assert a.shape == b.shape and np.array_equal(a, b), variant


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


SENTENCES = ("the old town was built near the river",
             "he forgot his umbrella",
             "people don't come here in the winter any more")


@pytest.mark.parametrize("voice", ["en-us", "en-gb-x-rp+f2"])
def test_word_starts_one_per_word_increasing_inside_the_audio(voice):
    for text in SENTENCES:
        plain = espeak.synthesize(text, voice, fresh=True)
        audio, starts = espeak.synthesize(text, voice, fresh=True, word_starts=True)
        assert np.array_equal(audio, plain), text  # asking for events changes nothing
        assert starts.dtype == np.int64 and len(starts) == len(text.split()), text
        known = starts[starts >= 0]
        assert len(known) >= len(starts) - 1 and starts[0] == known[0] and starts[-1] == known[-1]
        assert np.all(np.diff(known) > 0) and known[0] >= 0 and known[-1] < len(audio)
        # the last word starts before the voiced end of the audio, not in the end pause
        voiced = np.nonzero(np.abs(audio) > 0.01 * np.abs(audio).max())[0]
        assert starts[-1] < voiced[-1]
        # each word begins with sound: energy shortly after a start, not silence
        for s in known:
            assert np.abs(audio[s: s + 1600]).max() > 0.01 * np.abs(audio).max()


def test_words_espeak_joins_to_the_one_before_have_no_start():
    # espeak says "in the" as one word and reports a word event for "in" only
    text = "people don't come here in the winter"
    _, starts = espeak.synthesize(text, "en-us", fresh=True, word_starts=True)
    assert [w for w, s in zip(text.split(), starts) if s < 0] == ["the"]
    # one word event per word when no word is joined
    _, starts = espeak.synthesize(SENTENCES[0], "en-us", fresh=True, word_starts=True)
    assert np.all(starts >= 0)


def test_word_starts_scale_with_the_sample_rate():
    text = SENTENCES[0]
    a16, s16 = espeak.synthesize(text, "en-us", fresh=True, word_starts=True)
    a22, s22 = espeak.synthesize(text, "en-us", sample_rate=22050, fresh=True, word_starts=True)
    # the same instants: within one sample of the rounding
    assert np.abs(s22 * 16000 / 22050 - s16).max() <= 1.0


def test_slower_speech_starts_its_words_later():
    text = SENTENCES[0]
    _, fast = espeak.synthesize(text, "en-us", rate=200, fresh=True, word_starts=True)
    _, slow = espeak.synthesize(text, "en-us", rate=120, fresh=True, word_starts=True)
    assert np.all(slow[1:] > fast[1:])
    assert 1.4 < slow[-1] / fast[-1] < 1.9  # about 200 / 120 words per minute


def test_render_with_word_starts_is_render_plus_the_leading_silence():
    from icefall.synth_corpus import Utterance, render, render_with_word_starts

    utt = Utterance(id="u", split="test", text="HE FORGOT HIS UMBRELLA", voice="en-us+m3",
                    rate=160, pitch=40, pitch_range=60, snr=30.0, gain=0.5, lead=0.2,
                    noise_seed=7)
    engine = espeak.get_engine()
    engine.reset()
    want = render(utt)
    engine.reset()
    audio, starts, speech_end = render_with_word_starts(utt)
    assert np.array_equal(audio, want)
    speech, raw = espeak.synthesize("he forgot his umbrella", "en-us+m3", rate=160, pitch=40,
                                    pitch_range=60, fresh=True, word_starts=True)
    lead = int(0.2 * 16000)
    assert np.array_equal(starts, raw + lead)
    loud = np.nonzero(np.abs(speech) > 0.01 * np.abs(speech).max())[0]
    assert speech_end == lead + loud[-1] + 1 and starts[-1] < speech_end < len(audio)


def test_tail_cuts_only_the_silence_after_the_speech():
    """A tail keeps the untrimmed audio's first samples (same speech, same
    noise) and ends ``tail`` seconds after its last voiced sample."""
    import dataclasses

    from icefall.synth_corpus import Utterance, render, render_with_word_starts

    whole = Utterance(id="u", split="test", text="THE CAT SAT ON THE MAT", voice="en+f3",
                      rate=180, pitch=50, pitch_range=60, snr=25.0, gain=0.6, lead=0.1,
                      noise_seed=3)
    engine = espeak.get_engine()
    engine.reset()
    full, _, speech_end = render_with_word_starts(whole)
    assert len(full) - speech_end > 0.2 * 16000  # espeak's own silence, about 0.3 s
    for tail in (0.0, 0.1):
        engine.reset()
        cut = render(dataclasses.replace(whole, tail=tail))
        assert len(cut) == speech_end + int(tail * 16000)
        assert np.array_equal(cut, full[:len(cut)])

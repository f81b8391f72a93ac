"""Log-mel filter banks computed as the audio arrives (a microphone, a call).

kaldi-native-fbank's OnlineFbank (the extractor sherpa-onnx uses), with the
settings of :func:`icefall.features.make_fbank`: 80 bins, 25 ms povey windows
every 10 ms, dither 0, snip_edges=False, low_freq 20 Hz, high_freq -400.  On
the same waveform it gives lhotse's Fbank frames to about 1e-4 (the whole-file
features of training and decode.py), so a streaming model sees what it was
trained on, and exactly what sherpa-onnx's online recognizer computes.

    fbank = OnlineFeatures()
    for samples in microphone:             # float32 in [-1, 1], 16 kHz
        fbank.accept_waveform(samples)
        new_frames = fbank.pop_frames()    # float32 [n, 80], possibly n = 0
    fbank.input_finished(); last = fbank.pop_frames()
"""

import numpy as np

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80


def knf_fbank_options():
    """kaldi_native_fbank.FbankOptions with our feature settings."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = NUM_MEL_BINS
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    return opts


class OnlineFeatures:
    """Frames come out as soon as their 25 ms window is complete; the frames
    of the last 25 ms come out after input_finished()."""

    def __init__(self):
        import kaldi_native_fbank as knf

        self._fbank = knf.OnlineFbank(knf_fbank_options())
        self._popped = 0

    def accept_waveform(self, samples: np.ndarray) -> None:
        """Append samples [n] (float, in [-1, 1], 16 kHz)."""
        self._fbank.accept_waveform(SAMPLE_RATE, np.asarray(samples, np.float32).reshape(-1))

    def input_finished(self) -> None:
        self._fbank.input_finished()

    def pop_frames(self) -> np.ndarray:
        """The frames (float32 [n, 80]) computed since the last call; older frames are freed."""
        ready = self._fbank.num_frames_ready
        frames = np.empty((ready - self._popped, NUM_MEL_BINS), dtype=np.float32)
        for i in range(self._popped, ready):
            frames[i - self._popped] = self._fbank.get_frame(i)
        if ready > self._popped:
            self._fbank.pop(ready - self._popped)  # bounded memory on long input
        self._popped = ready
        return frames

"""Chunk-by-chunk decoding of many streams with a state-carrying encoder.

    decoder = StreamingDecoder(model, stack_states, unstack_states,
                               chunk_frames=32, method="greedy_search")
    stream = decoder.new_stream("utt1")
    stream.accept_features(fbank)          # [T, 80], any number of times
    while stream.ready(): decoder.decode_chunk([stream])
    stream.input_finished()                # pads the tail; then decode until done
    while not stream.done: decoder.decode_chunk([stream])
    stream.tokens

:func:`decode_streams` decodes a whole test set this way, up to
``num_streams`` utterances at a time: streams join as others finish.

The encoder interface (a causal Zipformer's, icefall's streaming_decode.py):
``model.get_init_states(batch_size, device) -> List[Tensor]``,
``model.streaming_forward(features [N, chunk_frames + pad_frames, F], lens [N],
states) -> (encoder_out [N, T', C], lens, states)``, and the recipe's
``stack_states(list of per-stream states)`` / ``unstack_states(states)``.
Each step consumes ``chunk_frames`` feature frames (icefall's decode_chunk_len,
at 100 Hz) and looks ``pad_frames`` further ahead (the subsampling's context,
7 + 2 * 3 for Zipformer).  The search is :mod:`icefall.streaming_search`.
"""

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from icefall.streaming_search import SearchState, init_search_state, search_chunk

LOG_EPS = math.log(1e-10)
TAIL_PAD_FRAMES = 30  # icefall's tail_pad_len: lets the last words come out


class DecodeStream:
    """One utterance being decoded: its features so far, how many have been
    consumed, the encoder state and the search state."""

    def __init__(self, stream_id: str, states: List[Tensor], search: SearchState,
                 chunk_frames: int, pad_frames: int, num_features: int = 80):
        self.id = stream_id
        self.states = states
        self.search = search
        self.chunk_frames = chunk_frames
        self.pad_frames = pad_frames
        self.features = torch.empty(0, num_features)
        self.processed = 0  # feature frames consumed
        self.num_input_frames = 0  # real frames accepted (tail padding excluded)
        self.finished = False

    def accept_features(self, frames: Union[Tensor, np.ndarray]) -> None:
        """Append frames [T, F] (log-mel, 100 Hz)."""
        assert not self.finished, f"{self.id}: input already finished"
        frames = torch.as_tensor(frames)
        self.features = torch.cat([self.features, frames.to(self.features.dtype)])
        self.num_input_frames += frames.size(0)

    def input_finished(self, tail_pad_frames: int = TAIL_PAD_FRAMES) -> None:
        """No more input: pad with look-ahead + tail frames of log(1e-10), as
        icefall's DecodeStream.set_features, so the last frames get decoded."""
        pad = torch.full((self.pad_frames + tail_pad_frames, self.features.size(1)), LOG_EPS)
        self.features = torch.cat([self.features, pad])
        self.finished = True

    def ready(self) -> bool:
        """Whether a chunk can be decoded now."""
        if self.finished:
            return self.processed < self.features.size(0)
        return self.processed + self.chunk_frames + self.pad_frames <= self.features.size(0)

    @property
    def done(self) -> bool:
        return self.finished and self.processed >= self.features.size(0)

    @property
    def tokens(self) -> List[int]:
        return self.search.tokens

    def next_chunk(self) -> Tensor:
        """The next chunk_frames + pad_frames frames (the last one padded with
        log(1e-10)); advances by chunk_frames."""
        length = self.chunk_frames + self.pad_frames
        chunk = self.features[self.processed: self.processed + length]
        self.processed += self.chunk_frames
        # Frames before the look-ahead are never needed again.
        drop = min(self.processed, self.features.size(0))
        self.features, self.processed = self.features[drop:], self.processed - drop
        if chunk.size(0) < length:
            chunk = torch.nn.functional.pad(chunk, (0, 0, 0, length - chunk.size(0)),
                                            value=LOG_EPS)
        return chunk


class StreamingDecoder:
    """Runs one chunk of several streams as a batch (see the module docstring)."""

    def __init__(self, model: nn.Module, stack_states: Callable, unstack_states: Callable,
                 chunk_frames: int, pad_frames: int = 13, method: str = "greedy_search",
                 num_active_paths: int = 4, device: torch.device = torch.device("cpu")):
        self.model = model
        self.stack_states, self.unstack_states = stack_states, unstack_states
        self.chunk_frames, self.pad_frames = chunk_frames, pad_frames
        self.method, self.num_active_paths = method, num_active_paths
        self.device = torch.device(device)
        init_search_state(model, method)  # fails early on a bad method

    def new_stream(self, stream_id: str, num_features: int = 80) -> DecodeStream:
        return DecodeStream(stream_id, self.model.get_init_states(1, self.device),
                            init_search_state(self.model, self.method), self.chunk_frames,
                            self.pad_frames, num_features)

    @torch.no_grad()
    def decode_chunk(self, streams: List[DecodeStream]) -> None:
        """Decode the next chunk of each stream (each must be ready())."""
        assert streams and all(s.ready() for s in streams)
        features = torch.stack([s.next_chunk() for s in streams]).to(self.device)
        lens = torch.full((len(streams),), features.size(1), dtype=torch.int64,
                          device=self.device)
        states = self.stack_states([s.states for s in streams])
        encoder_out, _, states = self.model.streaming_forward(features, lens, states)
        search_chunk(self.model, encoder_out, [s.search for s in streams],
                     self.num_active_paths)
        for s, st in zip(streams, self.unstack_states(states)):
            # clone: a chunk of the batch tensor would keep the whole batch alive
            s.states = [t.clone() for t in st]


@dataclass
class StreamingStats:
    """Compute time of decode_streams: per chunk call (seconds, batch size)."""

    chunk_times: List[Tuple[float, int]] = field(default_factory=list)
    audio_seconds: float = 0.0

    @property
    def compute_seconds(self) -> float:
        return sum(t for t, _ in self.chunk_times)

    @property
    def rtf(self) -> float:
        """Real-time factor: compute time / audio duration."""
        return self.compute_seconds / max(self.audio_seconds, 1e-9)


def decode_streams(decoder: StreamingDecoder, utterances: Iterable[Tuple[str, Tensor]],
                   num_streams: int = 200, frame_shift: float = 0.01,
                   on_done: Optional[Callable[[DecodeStream], None]] = None
                   ) -> Tuple[Dict[str, List[int]], StreamingStats]:
    """Decode (id, features [T, F]) pairs, up to `num_streams` at a time.

    Each utterance enters as a stream as soon as a slot is free; every step
    decodes one chunk of all active streams as one batch; finished streams
    leave.  Returns ({id: tokens}, timing) and calls on_done(stream) for
    each finished stream.
    """
    results: Dict[str, List[int]] = {}
    stats = StreamingStats()
    pending = iter(utterances)
    active: List[DecodeStream] = []
    exhausted = False
    while active or not exhausted:
        while not exhausted and len(active) < num_streams:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            stream_id, feats = item
            stream = decoder.new_stream(stream_id, feats.size(1))
            stream.accept_features(feats)
            stream.input_finished()
            stats.audio_seconds += feats.size(0) * frame_shift
            active.append(stream)
        if not active:
            break
        start = time.perf_counter()
        decoder.decode_chunk(active)
        stats.chunk_times.append((time.perf_counter() - start, len(active)))
        for s in [s for s in active if s.done]:
            results[s.id] = s.tokens
            if on_done is not None:
                on_done(s)
        active = [s for s in active if not s.done]
    return results, stats

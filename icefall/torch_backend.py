"""The PyTorch model behind :func:`icefall.transcribe.transcribe_files`."""

import math
from typing import Callable, List, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from icefall.decoding import check_method, decode_encoder_output, max_sym_for
from icefall.features import compute_fbank
from icefall.transcribe import Backend

LOG_EPS = math.log(1e-10)  # feature padding value, as icefall pads


class TorchBackend(Backend):
    """A model with ``forward_encoder`` and a transducer head (decoder/joiner)
    and/or a CTC head (``ctc_output``).

    Args:
      model: in eval mode, on ``device``.
      frames_after_subsampling: the recipe's length formula (model.py).
      method, beam, max_sym_per_frame: as :func:`icefall.decoding.decode_encoder_output`
        (transducer or CTC methods).
    """

    def __init__(self, model: nn.Module, frames_after_subsampling: Callable[[int], int],
                 method: str = "greedy_search", beam: int = 4, max_sym_per_frame: int = 1,
                 device: torch.device = torch.device("cpu")):
        check_method(model, method, "--method")
        self.model, self.method, self.beam = model, method, beam
        self.max_sym_per_frame = max_sym_for(model, method, max_sym_per_frame)
        self.device = torch.device(device)
        self._frames = frames_after_subsampling

    def frames_after_subsampling(self, num_frames: int) -> int:
        return self._frames(num_frames)

    def features(self, waves: Sequence[np.ndarray]) -> List[torch.Tensor]:
        return compute_fbank(list(waves), device=self.device)

    @torch.no_grad()
    def encode(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        lens = torch.tensor([f.size(0) for f in features], device=self.device)
        x = pad_sequence([f.to(self.device) for f in features], batch_first=True, padding_value=LOG_EPS)
        out, out_lens = self.model.forward_encoder(x, lens)
        return [out[i, :n] for i, n in enumerate(out_lens.tolist())]

    def concat(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts), dim=0)

    @torch.no_grad()
    def search(self, encoder_outs: Sequence[torch.Tensor]) -> List[List[int]]:
        lens = torch.tensor([e.size(0) for e in encoder_outs], device=self.device)
        if len(encoder_outs) == 1:  # e.g. a long file: no padded copy
            x = encoder_outs[0].unsqueeze(0)
        else:
            x = pad_sequence(list(encoder_outs), batch_first=True)
        return decode_encoder_output(self.model, x, lens, self.method, beam=self.beam,
                                     max_sym_per_frame=self.max_sym_per_frame)

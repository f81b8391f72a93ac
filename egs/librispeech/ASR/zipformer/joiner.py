"""Transducer joiner (icefall's zipformer/joiner.py):
output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))."""

import torch
from torch import Tensor, nn

from scaling import ScaledLinear


class Joiner(nn.Module):
    """Combines encoder and decoder frames into logits over the vocabulary."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = ScaledLinear(encoder_dim, joiner_dim, initial_scale=0.25)
        self.decoder_proj = ScaledLinear(decoder_dim, joiner_dim, initial_scale=0.25)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: Tensor, decoder_out: Tensor,
                project_input: bool = True) -> Tensor:
        """
        Args:
          encoder_out: [..., encoder_dim], e.g. [N, T, s_range, C], or
            [N, T, 1, C] broadcast against decoder_out [N, 1, U, C].
            Both must have the same number of dims.
          decoder_out: [..., decoder_dim].
          project_input: False if the caller already applied encoder_proj and
            decoder_proj (both inputs then have joiner_dim), as beam search
            and the pruned loss do.
        Returns:
          unnormalised logits [..., vocab_size] (broadcast shape).
        """
        assert encoder_out.ndim == decoder_out.ndim, (encoder_out.shape, decoder_out.shape)
        if project_input:
            logit = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            logit = encoder_out + decoder_out
        return self.output_linear(torch.tanh(logit))

"""Stateless prediction network: embedding + depthwise Conv1d over the last
`context_size` tokens + ReLU, as in icefall's pruned_transducer_stateless2/3."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaling import ScaledConv1d, ScaledEmbedding


class Decoder(nn.Module):
    """Maps token contexts to decoder_out [B, U, decoder_dim].

    Args:
      vocab_size: number of tokens including blank.
      decoder_dim: embedding and output dim.
      blank_id: id of blank, also used as start-of-sequence.
      context_size: tokens of left context (1 = bigram, 2 = trigram, ...).
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int,
                 context_size: int):
        super().__init__()
        assert context_size >= 1, context_size
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = ScaledEmbedding(vocab_size, decoder_dim)
        if context_size > 1:
            self.conv = ScaledConv1d(decoder_dim, decoder_dim, kernel_size=context_size,
                                     groups=decoder_dim, bias=False)
        else:
            self.conv = nn.Identity()

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """
        Args:
          y: token ids [B, U].  Negative ids (beam search pads a fresh
            hypothesis with -1) embed to zero vectors.
          need_pad: True (training) left-pads with context_size - 1 zero
            frames so output u sees tokens <= u; False (decoding) expects
            exactly U == context_size and returns one frame.
        Returns:
          [B, U, decoder_dim] if need_pad else [B, 1, decoder_dim].
        """
        y = y.to(torch.int64)
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)
        if self.context_size > 1:
            emb = emb.permute(0, 2, 1)  # [B, C, U]
            if need_pad:
                emb = F.pad(emb, pad=(self.context_size - 1, 0))
            else:
                assert emb.size(-1) == self.context_size, emb.shape
            emb = self.conv(emb).permute(0, 2, 1)
        return F.relu(emb)

"""Zipformer2's stateless prediction network (icefall's zipformer/decoder.py): an
embedding, a grouped Conv1d over the last `context_size` tokens, and ReLU."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaling_grad import Balancer


class Decoder(nn.Module):
    """Maps token contexts to decoder_out [N, U, decoder_dim].

    Args:
      vocab_size: number of tokens including blank.
      decoder_dim: embedding and output dim (a multiple of 4: the conv has
        groups of 4 channels).
      blank_id: id of blank, also used as start-of-sequence.
      context_size: tokens of left context (1 = bigram, 2 = trigram, ...).
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int, context_size: int):
        super().__init__()
        assert context_size >= 1, context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        # Keep the embeddings' magnitude from drifting (training only).
        self.balancer = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0,
                                 max_positive=1.0, min_abs=0.5, max_abs=1.0, prob=0.05)
        self.blank_id = blank_id
        self.context_size = context_size
        self.vocab_size = vocab_size
        if context_size > 1:
            self.conv = nn.Conv1d(decoder_dim, decoder_dim, kernel_size=context_size,
                                  padding=0, groups=decoder_dim // 4, bias=False)
            self.balancer2 = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0,
                                      max_positive=1.0, min_abs=0.5, max_abs=1.0, prob=0.05)
        else:
            self.conv = nn.Identity()
            self.balancer2 = nn.Identity()

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """
        Args:
          y: token ids [N, U].  Negative ids (greedy search starts a
            hypothesis with -1) embed to zero vectors.
          need_pad: True (training) left-pads with context_size - 1 zero
            vectors so output u sees tokens <= u; False (decoding) expects
            exactly U == context_size and returns one frame.
        Returns:
          [N, U, decoder_dim] if need_pad else [N, 1, decoder_dim].
        """
        y = y.to(torch.int64)
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)
        emb = self.balancer(emb)
        if self.context_size > 1:
            emb = emb.permute(0, 2, 1)  # [N, C, U]
            if need_pad:
                emb = F.pad(emb, pad=(self.context_size - 1, 0))
            else:
                assert emb.size(-1) == self.context_size, emb.shape
            emb = F.relu(self.conv(emb).permute(0, 2, 1))
            emb = self.balancer2(emb)
        return emb

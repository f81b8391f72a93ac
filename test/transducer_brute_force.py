"""The full RNN-T loss of a decoder + joiner, by dynamic programming over
the whole [T, S+1] lattice in float64, one cell at a time: the reference the
models' pruned losses are checked against (with a prune range above S the
pruned loss must equal it)."""

import math

import torch


def brute_force_rnnt_loss(decoder, joiner, enc, enc_lens, y, modified=False):
    """[N] losses of encoder output ``enc`` [N, T, C] (``enc_lens`` valid
    frames) and token lists ``y``; ``joiner(enc[:, None], dec[None])`` gives
    the logits of every (frame, context) pair.

    Regular: a token keeps the frame (alpha[t, s-1] -> alpha[t, s]), blank
    moves to the next one; the path ends with a blank on the last frame.
    Modified: a token also moves to the next frame (alpha[t-1, s-1] ->
    alpha[t, s], one token per frame at most); alpha[t, s] is the state
    after frame t-1, and the path ends after the last frame."""
    losses = []
    with torch.no_grad():
        for b, ids in enumerate(y):
            T, S = int(enc_lens[b]), len(ids)
            sos = torch.tensor([[decoder.blank_id] + list(ids)])
            dec = decoder(sos)[0]                                        # [S+1, C]
            lp = joiner(enc[b, :T].unsqueeze(1), dec.unsqueeze(0)).log_softmax(-1)
            blank = lp[:, :, decoder.blank_id].double()                  # [T, S+1]
            emit = torch.stack([lp[:, s, ids[s]] for s in range(S)], 1).double()
            if modified:
                alpha = torch.full((T + 1, S + 1), -math.inf, dtype=torch.float64)
                alpha[0, 0] = 0.0
                for t in range(1, T + 1):
                    for s in range(S + 1):
                        a = alpha[t - 1, s] + blank[t - 1, s]
                        e = alpha[t - 1, s - 1] + emit[t - 1, s - 1] if s > 0 else -math.inf
                        alpha[t, s] = torch.logaddexp(torch.as_tensor(a), torch.as_tensor(e))
                losses.append(-alpha[T, S])
                continue
            alpha = torch.full((T, S + 1), -math.inf, dtype=torch.float64)
            for t in range(T):
                for s in range(S + 1):
                    if t == 0 and s == 0:
                        alpha[t, s] = 0.0
                        continue
                    a = alpha[t - 1, s] + blank[t - 1, s] if t > 0 else -math.inf
                    e = alpha[t, s - 1] + emit[t, s - 1] if s > 0 else -math.inf
                    alpha[t, s] = torch.logaddexp(torch.as_tensor(a), torch.as_tensor(e))
            losses.append(-(alpha[T - 1, S] + blank[T - 1, S]))
    return torch.stack(losses)

"""icefall.ctc_loss against brute force: the sum over every frame-level path."""

import itertools
import math

import pytest
import torch

from icefall.ctc_loss import ctc_loss


def brute_force(log_probs: torch.Tensor, y, blank: int) -> float:
    """-log of the summed probability of every path of T symbols that
    collapses (merge repeats, then drop blanks) to y."""
    T, V = log_probs.shape
    total = 0.0
    for path in itertools.product(range(V), repeat=T):
        merged = [s for i, s in enumerate(path) if i == 0 or s != path[i - 1]]
        if [s for s in merged if s != blank] == list(y):
            total += math.exp(sum(float(log_probs[t, s]) for t, s in enumerate(path)))
    return -math.log(total) if total > 0 else math.inf


@pytest.mark.parametrize("blank", [0, 2])
def test_matches_brute_force(blank):
    torch.manual_seed(blank)
    lens = torch.tensor([5, 3, 4, 2])
    log_probs = torch.randn(4, 5, 4).log_softmax(-1)
    y = [[1, 3, 1], [1, 1], [3], [1, 3]] if blank == 0 else [[1, 3, 1], [1, 1], [3], [0, 3]]
    got = ctc_loss(log_probs, lens, y, blank_id=blank, reduction="none")
    want = [brute_force(log_probs[i, :lens[i]], y[i], blank) for i in range(4)]
    # [1, 1] in 3 frames needs a blank between the repeats: feasible (1 path).
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    total = ctc_loss(log_probs, lens, y, blank_id=blank, reduction="sum")
    assert total.shape == () and abs(float(total) - sum(want)) < 1e-4


def test_too_few_frames_is_infinite_and_bfloat16_is_computed_in_float32():
    log_probs = torch.randn(2, 3, 5).log_softmax(-1)
    # [2, 2, 2] needs 5 frames (blanks between repeats); 3 are not enough.
    got = ctc_loss(log_probs, torch.tensor([3, 3]), [[2, 2, 2], [1, 2]], reduction="none")
    assert math.isinf(float(got[0])) and math.isfinite(float(got[1]))
    low = ctc_loss(log_probs.bfloat16(), torch.tensor([3, 3]), [[4], [1, 2]], reduction="none")
    assert low.dtype == torch.float32
    want = [brute_force(log_probs[0].bfloat16().float(), [4], 0),
            brute_force(log_probs[1].bfloat16().float(), [1, 2], 0)]
    torch.testing.assert_close(low.double(), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-4, atol=1e-4)

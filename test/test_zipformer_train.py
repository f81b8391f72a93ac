"""zipformer/train.py (icefall/trainer.py with the Zipformer recipe) on the
tiny synth corpus: the loss falls, resume is exact, DDP runs."""

import re

from icefall.checkpoint import load_file
from recipe_fixture import zipformer_train_args

LOSS_LINE = re.compile(r"\(global (\d+)\), batch size \d+, loss per frame: loss ([\d.e+-]+), "
                       r"simple_loss ([\d.e+-]+), pruned_loss ([\d.e+-]+), ctc_loss ([\d.e+-]+)")
VALID_LINE = re.compile(r"Epoch (\d+), validation: loss ([\d.e+-]+), simple_loss ([\d.e+-]+), "
                        r"pruned_loss ([\d.e+-]+), ctc_loss ([\d.e+-]+)")


def losses(pattern, output: str) -> dict:
    return {int(m[0]): tuple(map(float, m[1:])) for m in pattern.findall(output)}


def close(a, b) -> bool:
    return all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(a, b))


def test_loss_falls_and_resume_from_an_epoch_gives_the_same_losses(tiny_recipe):
    common = ["--log-interval", "1"]
    full = tiny_recipe.run(zipformer_train_args(tiny_recipe, "exp_zip_full", "--num-epochs", "2", *common))
    valid = losses(VALID_LINE, full.stderr)
    assert sorted(valid) == [1, 2]
    for k in range(4):  # the total and each of simple, pruned and CTC losses fall
        assert valid[2][k] < valid[1][k], valid
    train = losses(LOSS_LINE, full.stderr)
    first, last = sorted(train)[:3], sorted(train)[-3:]
    assert sum(train[i][0] for i in last) < sum(train[i][0] for i in first), train

    tiny_recipe.run(zipformer_train_args(tiny_recipe, "exp_zip_part", "--num-epochs", "1", *common))
    resumed = tiny_recipe.run(zipformer_train_args(tiny_recipe, "exp_zip_part", "--num-epochs", "2",
                                                   "--start-epoch", "2", *common))
    b = losses(LOSS_LINE, resumed.stderr)
    assert b and min(b) > 1 and set(b) <= set(train)
    for i in b:
        assert close(train[i], b[i]), (i, train[i], b[i])
    assert close(valid[2], losses(VALID_LINE, resumed.stderr)[2])
    ckpt = load_file(tiny_recipe.workdir / "exp_zip_part/epoch-2.pt")
    assert ckpt["config"]["use_ctc"] and ckpt["config"]["encoder_dim"] == [32, 32]
    assert "optimizer" in ckpt and "model_avg" in ckpt


def test_ddp_with_two_cpu_processes(tiny_recipe):
    out = tiny_recipe.run(zipformer_train_args(tiny_recipe, "exp_zip_ddp", "--world-size", "2", "--num-epochs", "1",
                                               "--max-batches", "2", "--log-interval", "1", "--save-every-n", "2"))
    assert "with 2 process(es)" in out.stderr
    assert sorted(losses(LOSS_LINE, out.stderr)) == [1, 2]
    ckpt = load_file(tiny_recipe.workdir / "exp_zip_ddp/checkpoint-2.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["batch_idx_train"] == 2

"""Checkpoints: atomic writes, loading, averaging and the --epoch/--avg flags."""

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from icefall.checkpoint import (
    CheckpointError,
    atomic_save,
    average_checkpoints,
    average_checkpoints_with_averaged_model,
    find_checkpoints,
    load_checkpoint,
    load_file,
    remove_checkpoints,
    save_checkpoint,
    select_checkpoints,
    update_averaged_model,
)

REPO = Path(__file__).resolve().parent.parent


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))


def _model(seed: int) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def test_average_of_two_checkpoints_is_their_exact_mean(tmp_path):
    a, b = _model(0), _model(1)
    a.count.fill_(3)
    b.count.fill_(7)
    save_checkpoint(tmp_path / "epoch-1.pt", a)
    save_checkpoint(tmp_path / "epoch-2.pt", b)
    avg = average_checkpoints([tmp_path / "epoch-1.pt", tmp_path / "epoch-2.pt"])
    for k in ("lin.weight", "lin.bias"):
        exact = (a.state_dict()[k].double() + b.state_dict()[k].double()) / 2
        assert avg[k].dtype == torch.float32
        assert torch.equal(avg[k], exact.float())
    # Integer buffers are copied from the last file, never averaged to 5.
    assert avg["count"].item() == 7


def test_averaging_an_empty_list_is_a_clear_error():
    with pytest.raises(CheckpointError, match="empty"):
        average_checkpoints([])


def test_averaged_model_formula_matches_direct_average_over_a_run(tmp_path):
    """Simulate training: weights change every batch, the running average is
    updated every `period` batches, and checkpoints are saved at two points.
    The formula must give the mean of the snapshots taken in between."""
    period, b_start, b_end = 3, 12, 30
    model = _model(0)
    model_avg = _model(0).double()
    snapshots = {}
    gen = torch.Generator().manual_seed(5)
    for batch in range(1, b_end + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        if batch % period == 0:
            snapshots[batch] = {k: v.double().clone() for k, v in model.state_dict().items()}
            update_averaged_model(period, batch, model, model_avg)
        for b in (b_start, b_end):
            if batch == b:
                save_checkpoint(
                    tmp_path / f"checkpoint-{b}.pt",
                    model,
                    params={"batch_idx_train": b, "average_period": period},
                    model_avg=model_avg,
                )
    # The running average itself is the mean of all snapshots so far.
    direct_all = torch.stack([s["lin.weight"] for s in snapshots.values()]).mean(0)
    assert torch.allclose(model_avg.lin.weight, direct_all, atol=1e-12)

    got = average_checkpoints_with_averaged_model(
        tmp_path / f"checkpoint-{b_start}.pt", tmp_path / f"checkpoint-{b_end}.pt"
    )
    between = [s for b, s in snapshots.items() if b_start < b <= b_end]
    for k in ("lin.weight", "lin.bias"):
        direct = torch.stack([s[k] for s in between]).mean(0)
        assert torch.allclose(got[k].double(), direct, atol=1e-5)
        assert got[k].dtype == torch.float32


def test_save_killed_mid_write_leaves_previous_checkpoint_loadable(tmp_path):
    target = tmp_path / "epoch-1.pt"
    first = _model(0)
    save_checkpoint(target, first, params={"epoch": 1})
    # A second process starts overwriting the file and is killed (SIGKILL)
    # after writing part of it.
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        import icefall.checkpoint as ck
        from torch import nn

        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        ck.torch.save = dying_save
        ck.save_checkpoint({str(target)!r}, nn.Linear(3, 2), params={{"epoch": 2}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    ckpt = load_checkpoint(target, _model(1))
    assert ckpt["epoch"] == 1
    assert torch.equal(ckpt["model"]["lin.weight"], first.lin.weight)


def test_checkpoint_and_export_load_with_weights_only(tmp_path):
    model = _model(0)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(
        tmp_path / "epoch-1.pt",
        model,
        params={"epoch": 1, "batch_idx_train": 10, "best_train_loss": float("inf"), "exp_dir": tmp_path},
        optimizer=opt,
        config={"d_model": 4},
    )
    ckpt = torch.load(tmp_path / "epoch-1.pt", weights_only=True)
    assert ckpt["config"] == {"d_model": 4} and ckpt["exp_dir"] == str(tmp_path)
    torch.save({"model": model.state_dict()}, tmp_path / "pretrained.pt")
    assert set(torch.load(tmp_path / "pretrained.pt", weights_only=True)["model"]) == {
        "lin.weight", "lin.bias", "count"
    }


def test_checkpoint_refuses_host_identity(tmp_path):
    with pytest.raises(ValueError, match="hostname"):
        save_checkpoint(tmp_path / "x.pt", _model(0), params={"env_info": {"hostname": "box"}})
    assert not (tmp_path / "x.pt").exists()


def test_load_strips_ddp_prefix(tmp_path):
    src = _model(0)
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "a.pt")
    dst = _model(1)
    load_checkpoint(tmp_path / "a.pt", dst)
    assert torch.equal(dst.lin.weight, src.lin.weight)


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), (b"", "empty"), (b"garbage, not a zip", "truncated or corrupt")],
)
def test_bad_checkpoint_files_give_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "epoch-3.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_file(path)
    assert str(path) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "epoch-1.pt"
    save_checkpoint(path, _model(0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="epoch-1.pt"):
        load_file(path)


def test_find_and_remove_checkpoints(tmp_path):
    for b in (100, 200, 300, 400):
        (tmp_path / f"checkpoint-{b}.pt").write_bytes(b"x")
    (tmp_path / "epoch-1.pt").write_bytes(b"x")
    names = lambda ps: [p.name for p in ps]
    assert names(find_checkpoints(tmp_path)) == [f"checkpoint-{b}.pt" for b in (400, 300, 200, 100)]
    assert names(find_checkpoints(tmp_path, iteration=-250)) == ["checkpoint-200.pt", "checkpoint-100.pt"]
    assert names(find_checkpoints(tmp_path, iteration=300)) == ["checkpoint-400.pt", "checkpoint-300.pt"]
    removed = remove_checkpoints(tmp_path, keep_last_k=2)
    assert names(removed) == ["checkpoint-200.pt", "checkpoint-100.pt"]
    assert names(find_checkpoints(tmp_path)) == ["checkpoint-400.pt", "checkpoint-300.pt"]


def test_select_checkpoints_from_flags(tmp_path):
    sel = select_checkpoints(tmp_path, epoch=5, avg=3)
    assert sel.mode == "average" and [p.name for p in sel.files] == ["epoch-3.pt", "epoch-4.pt", "epoch-5.pt"]
    sel = select_checkpoints(tmp_path, epoch=5, avg=2, use_averaged_model=True)
    assert sel.mode == "averaged_model" and [p.name for p in sel.files] == ["epoch-3.pt", "epoch-5.pt"]
    assert select_checkpoints(tmp_path, epoch=9999, avg=1).mode == "single"
    for b in (10, 20, 30):
        save_checkpoint(tmp_path / f"checkpoint-{b}.pt", _model(b))
    sel = select_checkpoints(tmp_path, epoch=0, iter=25, avg=2)
    assert [p.name for p in sel.files] == ["checkpoint-20.pt", "checkpoint-10.pt"]
    with pytest.raises(CheckpointError, match="needs 3"):
        select_checkpoints(tmp_path, epoch=0, iter=25, avg=2, use_averaged_model=True)


def test_missing_epoch_for_averaged_model_suggests_the_flag(tmp_path):
    torch.save({"model": _model(0).state_dict()}, tmp_path / "pretrained.pt")
    (tmp_path / "epoch-9999.pt").symlink_to("pretrained.pt")
    sel = select_checkpoints(tmp_path, epoch=9999, avg=1, use_averaged_model=True)
    with pytest.raises(CheckpointError) as e:
        sel.load_state_dict()
    assert "epoch-9998.pt" in str(e.value) and "--use-averaged-model False" in str(e.value)
    # The way the guide says to do it works.
    sd = select_checkpoints(tmp_path, epoch=9999, avg=1).load_state_dict()
    assert torch.equal(sd["lin.weight"], _model(0).lin.weight)


def test_atomic_save_gives_the_files_mode_open_would(tmp_path):
    """Exports are shared: not the private 0600 of a temporary file."""
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    saved = tmp_path / "saved.pt"
    atomic_save({"a": torch.zeros(1)}, saved)
    assert stat.S_IMODE(saved.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)

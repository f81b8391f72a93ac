"""The load side of icefall/checkpoint.py: CRC checks, icefall's own
training checkpoints, refused pickles and strict-load messages."""

import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from icefall.checkpoint import (CheckpointError, load_checkpoint, load_file, state_dict_mismatch,
                                verify_zip_crc)
from icefall.utils import AttributeDict  # pickled as icefall.utils.AttributeDict, as icefall's is


def _icefall_style_checkpoint(path: Path) -> nn.Module:
    """What icefall's save_checkpoint writes: model, optimizer, scheduler,
    grad_scaler, sampler, then every item of params (an AttributeDict with
    PosixPath values) at the top level."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    params = AttributeDict(
        exp_dir=Path("/home/someone/exp"), lang_dir=Path("data/lang_bpe_500"),
        best_train_epoch=3, batch_idx_train=1234, env_info={"torch-version": "2.0"},
        extra=AttributeDict(feature_dim=80),
    )
    checkpoint = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                  "scheduler": sched.state_dict(), "grad_scaler": None,
                  "sampler": {"epoch": 3, "world_size": 1}}
    for k, v in params.items():
        checkpoint[k] = v
    checkpoint["params"] = params
    torch.save(checkpoint, path)
    return model


def test_icefall_training_checkpoint_loads_with_weights_only(tmp_path):
    path = tmp_path / "epoch-3.pt"
    model = _icefall_style_checkpoint(path)
    with pytest.raises(Exception):  # what torch alone does
        torch.load(path, weights_only=True)
    ckpt = load_file(path)
    assert ckpt["exp_dir"] == Path("/home/someone/exp") and ckpt["batch_idx_train"] == 1234
    assert ckpt["params"]["lang_dir"] == Path("data/lang_bpe_500")
    assert ckpt["params"]["extra"] == {"feature_dim": 80}
    fresh = nn.Linear(4, 3)
    load_checkpoint(path, fresh)
    assert torch.equal(fresh.weight, model.weight)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class _Custom:
    pass


@pytest.mark.parametrize("payload, name", [(_Evil(), "posix.system"), (_Custom(), "_Custom"),
                                           ({"x": eval}, "eval")],
                         ids=["os.system", "custom-class", "builtin-function"])
def test_other_objects_are_still_refused(tmp_path, payload, name):
    path = tmp_path / "bad.pt"
    torch.save({"model": {}, "payload": payload}, path)
    with pytest.raises(CheckpointError) as e:
        load_file(path)
    msg = str(e.value)
    assert str(path) in msg and "refuses" in msg and "\n" not in msg
    assert f"{name})" in msg  # the refused global, named


def _flip_bit_in_tensor_data(path: Path, member_suffix: str = "data/0") -> None:
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    with open(path, "r+b") as f:
        # the data begins after the 30-byte local header, the name and the extra field
        f.seek(info.header_offset + 26)
        n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        pos = info.header_offset + 30 + n + m + 5
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ 0x10]))


def test_a_flipped_bit_is_reported_naming_the_file(tmp_path):
    path = tmp_path / "pretrained.pt"
    torch.save({"model": {"w": torch.arange(100.0)}, "config": {}}, path)
    load_file(path)
    _flip_bit_in_tensor_data(path)
    # torch alone loads the damaged tensor silently
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.arange(100.0))
    with pytest.raises(CheckpointError) as e:
        load_file(path)
    assert str(path) in str(e.value) and "CRC" in str(e.value) and "data/0" in str(e.value)
    with pytest.raises(CheckpointError):
        verify_zip_crc(path)


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_file(tmp_path)


def test_strict_load_names_the_first_differing_keys(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"model": {"0.weight": torch.zeros(5, 4), "0.bias": torch.zeros(3), "2.weight": torch.zeros(1)}}, path)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, model)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert "1 missing: 2.bias" in msg
    assert "0.weight [5, 4] (model: [3, 4])" in msg and "2.weight [1] (model: [2, 3])" in msg


def test_mismatch_lists_at_most_three_keys_of_each_kind():
    expected = {f"k{i}": torch.zeros(1) for i in range(5)}
    msg = state_dict_mismatch(expected, {"x": torch.zeros(1)})
    assert msg == "5 missing: k0, k1, k2 and 2 more; 1 unexpected: x"
    assert state_dict_mismatch(expected, dict(expected)) == ""

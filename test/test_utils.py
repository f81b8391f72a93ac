"""Flags, logging, metrics, env info, and import hygiene."""

import argparse
import json
import logging
import socket
import subprocess
import sys

import pytest
import torch

from icefall.utils import AttributeDict, MetricsTracker, get_env_info, make_pad_mask, setup_logger, str2bool


def test_attribute_dict():
    d = AttributeDict({"a": 1})
    d.b = 2
    assert d.a == 1 and d["b"] == 2
    with pytest.raises(AttributeError):
        d.c


@pytest.mark.parametrize("s, v", [("True", True), ("yes", True), ("1", True), ("false", False), ("N", False)])
def test_str2bool(s, v):
    assert str2bool(s) is v


def test_str2bool_rejects_other_text():
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def test_metrics_tracker_normalises_by_frames():
    a, b = MetricsTracker(), MetricsTracker()
    a["frames"], a["loss"] = 100, 50.0
    b["frames"], b["loss"] = 300, 30.0
    total = a + b
    assert total.norm_items() == {"loss": 80.0 / 400}
    decayed = total * 0.5
    assert decayed["frames"] == 200 and decayed["loss"] == 40.0
    assert "loss=0.2" in str(total)


def test_setup_logger_writes_a_timestamped_file(tmp_path):
    path = setup_logger(tmp_path / "log" / "log-train", use_console=False)
    logging.info("hello from the test")
    for h in logging.getLogger().handlers:
        h.flush()
    assert path.parent == tmp_path / "log" and path.name.startswith("log-train-")
    assert "hello from the test" in path.read_text()
    logging.basicConfig(force=True, handlers=[logging.StreamHandler()])


def test_env_info_has_versions_but_no_host_identity():
    info = get_env_info()
    assert info["torch-version"] == torch.__version__
    text = json.dumps(info).lower()
    assert "host" not in text and "ip" not in " ".join(info).lower()
    assert socket.gethostname().lower() not in text


def test_make_pad_mask():
    mask = make_pad_mask(torch.tensor([1, 3]))
    assert mask.tolist() == [[False, True, True], [False, False, False]]


def _modules_after(statement: str) -> set:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


HEAVY = {"k2", "kaldifeat", "torchaudio", "lhotse", "sentencepiece", "tensorboard", "kaldialign"}


def test_import_icefall_loads_nothing_heavy():
    mods = _modules_after("import icefall")
    assert not mods & (HEAVY | {"torch"})


def test_importing_one_module_does_not_import_the_others():
    assert not _modules_after("import icefall.checkpoint") & HEAVY
    assert not _modules_after("import icefall.tokens") & (HEAVY | {"torch"})
    assert not _modules_after("import icefall.utils") & HEAVY


def test_metrics_tracker_sum_keeps_the_order_of_the_keys():
    # The loss line of train.py prints the entries in this order.
    a = MetricsTracker()
    for k in ("frames", "loss", "simple_loss", "pruned_loss", "ctc_loss"):
        a[k] = 1.0
    b = MetricsTracker()
    b["extra"] = 2.0
    for total in (MetricsTracker() + a, a * 0.5 + a, a + b):
        assert list(total)[:5] == ["frames", "loss", "simple_loss", "pruned_loss", "ctc_loss"]
    assert list(a + b) == list(a) + ["extra"]


def test_cpu_bf16_detection_reads_the_flags():
    from icefall.precision import cpu_has_bf16

    base = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 avx2 avx512f avx512bw"
    assert cpu_has_bf16(base) is False  # AVX512 alone: bfloat16 would be emulated
    assert cpu_has_bf16(base + " avx512_bf16\n") is True
    assert cpu_has_bf16(base + " amx_tile amx_bf16\n") is True
    assert cpu_has_bf16(base.replace("flags", "bugs") + " amx_bf16") is False
    assert cpu_has_bf16("") is False

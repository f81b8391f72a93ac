"""icefall/model_loading.py with the pts3 recipe's model.py: configs that do
not fit their weights, strict-load messages, icefall-style files without a config."""

import argparse
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "pruned_transducer_stateless3"
for p in (str(ROOT), str(RECIPE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import model as pts3  # noqa: E402
from icefall.checkpoint import CheckpointError  # noqa: E402
from icefall.model_loading import load_model  # noqa: E402
from icefall.tokens import SymbolTable  # noqa: E402

SMALL = dict(encoder_dim=32, nhead=2, dim_feedforward=32, num_encoder_layers=1,
             vocab_size=20, decoder_dim=16, joiner_dim=16)


def _tokens(n: int = 20) -> SymbolTable:
    return SymbolTable.from_pairs([("<blk>", 0), ("<unk>", 1)] + [(f"t{i}", i) for i in range(2, n)])


def _args(checkpoint: Path, **sizes) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pts3.add_model_arguments(parser)
    args = parser.parse_args([])
    for k, v in sizes.items():
        setattr(args, k, v)
    args.checkpoint = checkpoint
    return args


def _small_model(**overrides):
    torch.manual_seed(0)
    return pts3.build_model({**pts3.default_config(), **SMALL, **overrides})


def test_a_config_that_does_not_match_its_weights_is_refused_before_allocating(tmp_path):
    model = _small_model()
    path = tmp_path / "pretrained.pt"
    # The real build of this config would need about 30 TB.
    crafted = {**model.config, "encoder_dim": 2**18, "dim_feedforward": 2**20, "num_encoder_layers": 12}
    torch.save({"model": model.state_dict(), "config": crafted}, path)
    with pytest.raises(CheckpointError) as e:
        load_model(pts3, _args(path), _tokens(), "tokens.txt")
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "do not fit" in msg
    assert "encoder.encoder_embed" in msg and "unexpected" not in msg.split(";")[0]


def test_strict_mismatch_names_keys_and_shapes(tmp_path):
    model = _small_model()
    state = model.state_dict()
    del state["joiner.output_linear.bias"]
    state["simple_am_proj.weight"] = torch.zeros(3, 3)
    state["stray.weight"] = torch.zeros(1)
    path = tmp_path / "pretrained.pt"
    torch.save({"model": state, "config": model.config}, path)
    with pytest.raises(CheckpointError) as e:
        load_model(pts3, _args(path), _tokens(), "tokens.txt")
    msg = str(e.value)
    assert "1 missing: joiner.output_linear.bias" in msg
    assert "1 unexpected: stray.weight" in msg
    assert "simple_am_proj.weight [3, 3] (model: [20, 32])" in msg


def test_icefall_file_without_config_uses_the_size_flags(tmp_path):
    model = _small_model()
    path = tmp_path / "pretrained.pt"
    torch.save({"model": model.state_dict()}, path)
    sizes = {k: v for k, v in SMALL.items() if k != "vocab_size"}
    loaded = load_model(pts3, _args(path, **sizes), _tokens(), "tokens.txt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert loaded.unk_id == 1 and not loaded.training
    with pytest.raises(CheckpointError, match="encoder_dim|shape mismatch"):
        load_model(pts3, _args(path), _tokens(), "tokens.txt")  # icefall's default sizes


@pytest.mark.parametrize("factor", [4, 6])
@pytest.mark.parametrize("num_frames", [7, 8, 9, 10, 11, 12, 13, 14, 19, 40, 101])
def test_frames_after_subsampling_is_what_the_encoder_gives(num_frames, factor):
    """The length rule against the shape the convolutions actually produce."""
    model = _small_model(subsampling_factor=factor).eval()
    out, lens = model.forward_encoder(torch.randn(1, num_frames, 80), torch.tensor([num_frames]))
    assert out.shape[1] == lens.item() == pts3.frames_after_subsampling(num_frames, factor)
    assert model.frames_after_subsampling(num_frames) == out.shape[1]
    assert pts3.frames_after_subsampling(6, factor) == 0
    # about one frame per `factor` fbank frames
    assert abs(pts3.frames_after_subsampling(6001, factor) - 6000 / factor) <= 1


def test_a_subsampling_factor_other_than_4_or_6_is_refused():
    with pytest.raises(ValueError, match="subsampling_factor must be 4 or 6, got 8"):
        _small_model(subsampling_factor=8)
    parser = argparse.ArgumentParser()
    pts3.add_model_arguments(parser)
    assert parser.parse_args(["--subsampling-factor", "6"]).subsampling_factor == 6
    with pytest.raises(SystemExit):
        parser.parse_args(["--subsampling-factor", "8"])

"""zipformer/export.py, pretrained.py and decode.py on a tiny synth training,
and icefall's own Zipformer files (pretrained.pt and training checkpoints).

One tiny Zipformer with both heads (--use-ctc 1) is trained for 3 epochs on
the tiny corpus; everything else decodes it.
"""

import sys
from pathlib import Path

import pytest
import torch

from recipe_fixture import add_too_short_test_cut, prepare_tiny_recipe, zipformer_train_args

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "test" / "data" / "icefall_zipformer_small.pt"
EPOCHS = 3
METHODS = ("greedy_search", "modified_beam_search", "ctc-greedy-search", "ctc-prefix-beam-search")


@pytest.fixture(scope="module")
def zr(tmp_path_factory):
    """The prepared tiny recipe with zipformer/exp trained for EPOCHS epochs."""
    r = prepare_tiny_recipe(tmp_path_factory.mktemp("zrecipe"))
    r.run(zipformer_train_args(r, "zipformer/exp", "--num-epochs", str(EPOCHS),
                               "--average-period", "1"))
    return r


def _recipe_modules():
    """The zipformer recipe's model.py, loaded without disturbing pts3's modules
    of the same names."""
    names = ("model", "scaling", "scaling_grad", "scaling_schedule", "subsampling",
             "zipformer", "decoder", "joiner")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(ROOT / "egs/librispeech/ASR/zipformer"))
    try:
        import model

        return model
    finally:
        sys.path.pop(0)
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def _printed(stdout: str):
    """pretrained.py's output -> {file: transcript}."""
    lines = stdout.split("\n")
    return {lines[i][:-1]: lines[i + 1] for i in range(0, len(lines) - 1, 3) if lines[i].endswith(":")}


@torch.no_grad()
def _direct(model, wavs, method):
    """Token ids of each wav by calling the model and the searches directly
    (one padded batch, as pretrained.py decodes a few short files)."""
    import math

    from torch.nn.utils.rnn import pad_sequence

    from icefall.audio import read_audio
    from icefall.beam_search import greedy_search_batch, modified_beam_search
    from icefall.ctc_decode import ctc_greedy_search, ctc_prefix_beam_search
    from icefall.features import compute_fbank

    feats = compute_fbank([read_audio(w) for w in wavs])
    x = pad_sequence(feats, batch_first=True, padding_value=math.log(1e-10))
    x_lens = torch.tensor([f.size(0) for f in feats])
    enc, enc_lens = model.forward_encoder(x, x_lens)
    if method == "greedy_search":
        return greedy_search_batch(model, enc, enc_lens)
    if method == "modified_beam_search":
        return modified_beam_search(model, enc, enc_lens, beam=4)
    log_probs = model.ctc_output(enc)
    if method == "ctc-greedy-search":
        return ctc_greedy_search(log_probs, enc_lens)
    return ctc_prefix_beam_search(log_probs, enc_lens, beam=4)


def _export(r) -> Path:
    r.run(["zipformer/export.py", "--exp-dir", "zipformer/exp", "--tokens", r.lang_dir / "tokens.txt",
           "--epoch", EPOCHS, "--avg", 2])
    return r.workdir / "zipformer/exp/pretrained.pt"


def test_pretrained_transcribes_with_each_method_as_the_averaged_model(zr):
    from icefall.checkpoint import select_checkpoints
    from icefall.tokens import read_tokens

    path = _export(zr)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"model", "config"} and ckpt["config"]["use_ctc"]

    M = _recipe_modules()
    exp = zr.workdir / "zipformer/exp"
    model = M.build_model(torch.load(exp / f"epoch-{EPOCHS}.pt", weights_only=True)["config"])
    model.load_state_dict(select_checkpoints(exp, EPOCHS, avg=2, use_averaged_model=True).load_state_dict())
    model.eval()
    tokens = read_tokens(zr.workdir / zr.lang_dir / "tokens.txt")
    wavs = zr.test_wavs(4)
    emitted = 0
    for method in METHODS:
        out = zr.run(["zipformer/pretrained.py", "--checkpoint", path, "--tokens", zr.lang_dir / "tokens.txt",
                      "--method", method, *wavs])
        printed = _printed(out.stdout)
        assert list(printed) == [str(w) for w in wavs], out.stdout
        want = [tokens.decode(h) for h in _direct(model, wavs, method)]
        assert [printed[str(w)] for w in wavs] == want, method
        emitted += sum(len(t) for t in want)
    assert emitted > 0  # the trained model says something


def _result_files(res: Path, key: str, suffix: str):
    return {prefix: (res / f"{prefix}-test-{key}-{suffix}.txt").read_text()
            for prefix in ("recogs", "errs", "wer-summary")}


@pytest.mark.parametrize("method,key", [("greedy_search", "greedy_search"),
                                        ("ctc-prefix-beam-search", "prefix-beam-search_beam_size_4")])
def test_decode_through_the_symlink_reproduces_the_averaged_checkpoints(zr, method, key):
    _export(zr)
    exp = zr.workdir / "zipformer/exp"
    link = exp / "epoch-9999.pt"
    link.unlink(missing_ok=True)
    link.symlink_to("pretrained.pt")
    common = ["zipformer/decode.py", "--exp-dir", "zipformer/exp", "--lang-dir", zr.lang_dir,
              "--max-duration", "100", "--num-workers", "0", "--decoding-method", method]
    direct = zr.run([*common, "--epoch", EPOCHS, "--avg", 2, "--use-averaged-model", "True"])
    exported = zr.run([*common, "--epoch", 9999, "--avg", 1, "--use-averaged-model", "False"])
    res = exp / method
    want = _result_files(res, key, f"epoch-{EPOCHS}-avg-2-use-averaged-model")
    assert _result_files(res, key, "epoch-9999-avg-1") == want
    assert want["recogs"].count("ref=") == 8  # every test cut
    assert direct.stdout == exported.stdout and direct.stdout.startswith(f"test\t{method}\t")


def test_decode_drops_too_short_cuts_with_a_count(zr):
    manifest_dir, num_cuts = add_too_short_test_cut(zr.workdir)
    proc = zr.run(["zipformer/decode.py", "--epoch", EPOCHS, "--avg", 1, "--use-averaged-model", "False",
                   "--exp-dir", "zipformer/exp", "--lang-dir", zr.lang_dir, "--manifest-dir", manifest_dir,
                   "--max-duration", "100", "--num-workers", "0", "--decoding-method", "ctc-greedy-search"])
    assert "dropped 1 cut(s) too short" in proc.stderr and "too-short" in proc.stderr
    assert f"over {num_cuts} utterances" in proc.stderr


# ----------------------------------------------------- icefall's own files


def _icefall_files(tmp: Path):
    """icefall's small Zipformer (test/data) written as icefall writes files:
    a pretrained.pt ({"model"} only) and a training checkpoint as its
    save_checkpoint writes one (model, optimizer, scheduler, grad_scaler,
    sampler, then every item of params, an AttributeDict with PosixPath
    values); plus a tokens.txt of its 50 ids and its argv flags."""
    from icefall.utils import AttributeDict  # pickled as icefall.utils.AttributeDict, like icefall's

    ref = torch.load(REFERENCE, weights_only=True)
    weights = ref["model"]
    torch.save({"model": weights}, tmp / "icefall-pretrained.pt")
    params = AttributeDict(exp_dir=Path("/home/someone/zipformer/exp"), bpe_model=Path("data/lang_bpe_500/bpe.model"),
                           best_train_epoch=3, batch_idx_train=1234, vocab_size=50, blank_id=0,
                           env_info=AttributeDict({"torch-version": "2.0.0"}))
    ckpt = {"model": weights, "optimizer": None, "scheduler": None, "grad_scaler": None,
            "sampler": {"epoch": 3, "world_size": 1}, **params, "params": params}
    torch.save(ckpt, tmp / "epoch-3.pt")
    # No <unk>: then neither icefall's greedy search nor ours skips id 2.
    symbols = ["<blk>", "<sos/eos>"] + [("\u2581" if i % 3 == 0 else "") + f"t{i}" for i in range(2, 50)]
    (tmp / "tokens.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)), encoding="utf-8")
    return ref, ref["config"]["argv"]


def test_icefall_files_load_through_the_size_flags_and_decode(zr, tmp_path):
    import argparse

    from icefall.checkpoint import add_checkpoint_arguments
    from icefall.decoding import decode_encoder_output
    from icefall.model_loading import load_model
    from icefall.tokens import read_tokens

    ref, argv = _icefall_files(tmp_path)
    flags = argv if isinstance(argv, list) else str(argv).split()
    M = _recipe_modules()
    tokens = read_tokens(tmp_path / "tokens.txt")

    # Both files through the loader the scripts use: icefall's outputs, strict.
    for name in ("icefall-pretrained.pt", "epoch-3.pt"):
        parser = argparse.ArgumentParser()
        parser.add_argument("--checkpoint", type=Path)
        parser.add_argument("--tokens", type=Path)
        add_checkpoint_arguments(parser)
        M.add_model_arguments(parser)
        args = parser.parse_args(["--checkpoint", str(tmp_path / name), *flags])
        model = load_model(M, args, tokens, tmp_path / "tokens.txt")
        x, x_lens = ref["inputs"]["x"], ref["inputs"]["x_lens"]
        with torch.no_grad():
            enc, enc_lens = model.forward_encoder(x, x_lens)
        torch.testing.assert_close(enc, ref["outputs"]["encoder_out"], rtol=1e-4, atol=1e-4)
        assert enc_lens.tolist() == ref["outputs"]["encoder_out_lens"].tolist()
        # the searches the scripts call give icefall's greedy results
        out = ref["outputs"]
        assert decode_encoder_output(model, enc, enc_lens, "greedy_search") == \
            [list(map(int, h)) for h in out["greedy_search_batch_hyps"]]
        assert decode_encoder_output(model, enc, enc_lens, "ctc-greedy-search") == \
            [list(map(int, h)) for h in out["ctc_greedy_search_hyps"]]

    # The scripts: pretrained.py on icefall's training checkpoint, every method.
    wavs = zr.test_wavs(3)
    for method in METHODS:
        out = zr.run(["zipformer/pretrained.py", "--checkpoint", tmp_path / "epoch-3.pt",
                      "--tokens", tmp_path / "tokens.txt", "--method", method, *flags, *wavs])
        printed = _printed(out.stdout)
        assert [printed[str(w)] for w in wavs] == [tokens.decode(h) for h in _direct(model, wavs, method)]

    # decode.py through the epoch-9999.pt symlink to icefall's pretrained.pt,
    # the same transcripts as through icefall's training checkpoint.
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "epoch-9999.pt").symlink_to(tmp_path / "icefall-pretrained.pt")
    (exp / "epoch-3.pt").symlink_to(tmp_path / "epoch-3.pt")
    common = ["zipformer/decode.py", "--exp-dir", exp, "--tokens", tmp_path / "tokens.txt", "--avg", 1,
              "--use-averaged-model", "False", "--max-duration", "100", "--num-workers", "0", *flags]
    zr.run([*common, "--epoch", 9999])
    zr.run([*common, "--epoch", 3])
    res = exp / "greedy_search"
    assert _result_files(res, "greedy_search", "epoch-9999-avg-1") == \
        _result_files(res, "greedy_search", "epoch-3-avg-1")


# ----------------------------------------------------- one-line errors


def _one_error_line(proc, code=2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_bad_input_gives_one_line_errors(zr, tmp_path):
    path = _export(zr)
    tokens = zr.lang_dir / "tokens.txt"
    wav = zr.test_wavs(1)[0]
    missing = tmp_path / "nope.pt"
    for cmd in (["zipformer/pretrained.py", "--checkpoint", missing, "--tokens", tokens, wav],
                ["zipformer/export.py", "--exp-dir", tmp_path, "--tokens", tokens, "--epoch", 1, "--avg", 1,
                 "--use-averaged-model", "False"],
                ["zipformer/decode.py", "--exp-dir", tmp_path, "--lang-dir", zr.lang_dir, "--epoch", 1,
                 "--avg", 1, "--use-averaged-model", "False", "--num-workers", "0"]):
        line = _one_error_line(zr.run(cmd, check=False))
        assert str(tmp_path) in line and "not found" in line, (cmd[0], line)

    lines = (zr.workdir / tokens).read_text().splitlines()
    short = tmp_path / "tokens.txt"
    short.write_text("\n".join(lines[:50]) + "\n")
    proc = zr.run(["zipformer/pretrained.py", "--checkpoint", path, "--tokens", short, wav], check=False)
    assert f"{short}: has 50 tokens but the model's vocabulary size is 100" in _one_error_line(proc)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes((zr.workdir / tokens).read_bytes().replace("\u2581".encode(), b"\xe9"))
    proc = zr.run(["zipformer/pretrained.py", "--checkpoint", path, "--tokens", latin1, wav], check=False)
    assert f"{latin1}:" in _one_error_line(proc) and "not UTF-8" in proc.stderr

    # A CTC method asked of a transducer-only model.
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["use_ctc"] = False
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("ctc_output.")}
    no_ctc = tmp_path / "no-ctc.pt"
    torch.save(ckpt, no_ctc)
    proc = zr.run(["zipformer/pretrained.py", "--checkpoint", no_ctc, "--tokens", tokens,
                   "--method", "ctc-greedy-search", wav], check=False)
    assert "--method ctc-greedy-search" in _one_error_line(proc) and "CTC head" in proc.stderr


def test_scripts_start_and_show_every_default_in_help():
    import re
    import subprocess

    from recipe_fixture import env

    for script in ("decode.py", "export.py", "pretrained.py"):
        out = subprocess.run([sys.executable, str(ROOT / "egs/synth/ASR/zipformer" / script), "--help"],
                             env=env(), capture_output=True, text=True, check=True).stdout
        entries = re.split(r"\n  (?=--)", out.split("options:", 1)[1])[1:]
        assert len(entries) > 20 and any(e.startswith("--num-encoder-layers") for e in entries), script
        no_default = [e.split()[0] for e in entries if "(default:" not in e]
        assert no_default == [], (script, no_default)
        if script != "export.py":
            assert "ctc-prefix-beam-search" in out, script


def test_a_causal_model_decodes_with_the_one_chunk_size_given(zr, tmp_path):
    import argparse

    from icefall.checkpoint import atomic_save

    from recipe_fixture import TINY_ZIPFORMER

    from icefall.tokens import read_tokens

    M = _recipe_modules()
    parser = argparse.ArgumentParser()
    M.add_model_arguments(parser)
    config = M.config_from_args(parser.parse_args([*TINY_ZIPFORMER, "--causal", "1", "--use-ctc", "1"]),
                                vocab_size=100, blank_id=0)
    torch.manual_seed(0)
    model = M.build_model(config).eval()
    path = tmp_path / "causal.pt"
    atomic_save({"model": model.state_dict(), "config": config}, path)
    tokens = zr.workdir / zr.lang_dir / "tokens.txt"
    wavs = zr.test_wavs(2)
    proc = zr.run(["zipformer/pretrained.py", "--checkpoint", path, "--tokens", tokens, *wavs], check=False)
    assert "--chunk-size 16,32,64,-1" in _one_error_line(proc)

    model.encoder.chunk_size, model.encoder.left_context_frames = (16,), (32,)
    want = [read_tokens(tokens).decode(h) for h in _direct(model, wavs, "ctc-greedy-search")]
    for _ in range(2):  # the same each time: no chunk size drawn at random
        out = zr.run(["zipformer/pretrained.py", "--checkpoint", path, "--tokens", tokens, "--chunk-size", "16",
                      "--left-context-frames", "32", "--method", "ctc-greedy-search", *wavs])
        assert [_printed(out.stdout)[str(w)] for w in wavs] == want
    # and the chunking matters: full attention gives another encoder output
    x = torch.randn(1, 200, 80)
    with torch.no_grad():
        chunked = model.forward_encoder(x, torch.tensor([200]))[0]
        model.encoder.chunk_size = (-1,)
        full = model.forward_encoder(x, torch.tensor([200]))[0]
    assert not torch.allclose(chunked, full, atol=1e-3)

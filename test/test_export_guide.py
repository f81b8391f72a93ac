"""Run the commands of docs/export.md on the tiny recipe, so the guide cannot drift."""

import re
import subprocess

import torch

from recipe_fixture import REPO, VOCAB, env


def guide_blocks():
    text = (REPO / "docs/export.md").read_text()
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_the_guide_has_the_four_steps():
    joined = "\n".join(guide_blocks())
    for needle in ("export.py", "pretrained.py", "ln -sf pretrained.pt epoch-9999.pt",
                   "--use-averaged-model False"):
        assert needle in joined


def test_guide_commands_run(tiny_recipe):
    r = tiny_recipe
    for block in guide_blocks():
        # The guide is written for the default corpus (BPE 256); the tiny one has fewer tokens.
        script = block.replace("lang_bpe_256", f"lang_bpe_{VOCAB}")
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=r.root, env=env(),
                             capture_output=True, text=True)
        assert out.returncode == 0, f"{block}\n{out.stdout}\n{out.stderr[-3000:]}"
        if "pretrained.py" in block:
            assert out.stdout.startswith("data/audio/synth/test/synth-test-000000.flac:\n")
    exp = r.workdir / r.exp_dir
    assert (exp / "epoch-9999.pt").resolve() == (exp / "pretrained.pt").resolve()
    assert torch.load(exp / "pretrained.pt", weights_only=True)["config"]
    assert list((exp / "greedy_search").glob("wer-summary-test-greedy_search-epoch-9999-avg-1.txt"))

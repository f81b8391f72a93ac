"""A tiny copy of the synth recipe, prepared and trained once per test session.

The whole ``egs/`` tree is copied (``cp -r`` semantics, symlinks kept), so the
tests also check that a copied recipe runs without edits.
"""

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
VOCAB = 100
NUM_EPOCHS = 8
TINY_MODEL = [
    "--num-encoder-layers", "2", "--encoder-dim", "64", "--nhead", "2",
    "--dim-feedforward", "128", "--decoder-dim", "64", "--joiner-dim", "64",
]


@dataclass
class TinyRecipe:
    root: Path  # holds egs/
    workdir: Path  # egs/synth/ASR
    exp_dir: Path  # relative to workdir
    lang_dir: Path  # relative to workdir

    def run(self, args: List[str], check: bool = True, cwd: Optional[Path] = None,
            **kw) -> subprocess.CompletedProcess:
        """Run a recipe script (``pruned_transducer_stateless3/<name>.py ...``) in workdir
        (or in ``cwd``)."""
        proc = subprocess.run(
            [sys.executable, *map(str, args)], cwd=cwd or self.workdir, env=env(), capture_output=True,
            text=True, **kw,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
        return proc

    def train_args(self, exp_dir: str, *extra: str) -> List[str]:
        return ["pruned_transducer_stateless3/train.py", "--exp-dir", exp_dir,
                "--bpe-model", str(self.lang_dir / "bpe.model"), "--max-duration", "40",
                "--num-buckets", "2", "--num-workers", "0", "--model-warm-step", "4",
                "--lr-batches", "50", "--lr-epochs", "2", *TINY_MODEL, *extra]

    def train(self, exp_dir: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(self.train_args(exp_dir, *extra), check=check)

    def test_wavs(self, n: int) -> List[Path]:
        return sorted((self.workdir / "data/audio/synth/test").glob("*.flac"))[:n]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["PYTHON"] = sys.executable
    # Scripts run as ./script.py use "#!/usr/bin/env python3": the one running the tests.
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e.setdefault("OMP_WAIT_POLICY", "passive")
    return e


def ignore_outputs(folder: str, names: List[str]) -> List[str]:
    """What a recipe run writes (data, downloads, experiment dirs), not the recipe."""
    return [
        n for n in names
        if n in ("data", "download", "__pycache__") or (n.startswith("exp") and (Path(folder) / n).is_dir())
    ]


def make_tiny_recipe(root: Path) -> TinyRecipe:
    """The tiny corpus with pts3 trained on it (NUM_EPOCHS epochs)."""
    recipe = prepare_tiny_recipe(root)
    recipe.train(str(recipe.exp_dir), "--num-epochs", str(NUM_EPOCHS), "--average-period", "1",
                 "--save-every-n", "4", "--keep-last-k", "3")
    return recipe


def prepare_tiny_recipe(root: Path) -> TinyRecipe:
    """The copied recipe with its tiny corpus prepared (no training)."""
    shutil.copytree(REPO / "egs", root / "egs", symlinks=True, ignore=ignore_outputs)
    workdir = root / "egs/synth/ASR"
    subprocess.run(
        ["bash", "prepare.sh", "--num-train", "60", "--num-dev", "8", "--num-test", "8",
         "--vocab-size", str(VOCAB)],
        cwd=workdir, env=env(), check=True, capture_output=True,
    )
    return TinyRecipe(
        root=root, workdir=workdir, exp_dir=Path("pruned_transducer_stateless3/exp"),
        lang_dir=Path(f"data/lang_bpe_{VOCAB}"),
    )


# A tiny Zipformer (two stacks of one layer) for the zipformer recipe's tests.
TINY_ZIPFORMER = [
    "--num-encoder-layers", "1,1", "--downsampling-factor", "1,2", "--feedforward-dim", "64,64",
    "--num-heads", "2", "--encoder-dim", "32,32", "--encoder-unmasked-dim", "24,24",
    "--query-head-dim", "8", "--value-head-dim", "4", "--pos-head-dim", "2", "--pos-dim", "16",
    "--cnn-module-kernel", "15,15", "--decoder-dim", "32", "--joiner-dim", "32",
]


def zipformer_train_args(recipe: TinyRecipe, exp_dir: str, *extra: str) -> List[str]:
    """zipformer/train.py on the tiny corpus: both heads, the loss weights
    already warm (--warm-step 1) so that losses of different batches compare."""
    return ["zipformer/train.py", "--exp-dir", exp_dir, "--bpe-model", str(recipe.lang_dir / "bpe.model"),
            "--max-duration", "40", "--num-buckets", "2", "--num-workers", "0", "--warm-step", "1",
            "--use-ctc", "1", "--base-lr", "0.3", "--lr-batches", "50", "--lr-epochs", "2",
            "--tensorboard", "False", *TINY_ZIPFORMER, *extra]


def import_recipe(recipe: Path, modules: Sequence[str],
                  scripts: Optional[Dict[str, str]] = None) -> SimpleNamespace:
    """A recipe's `modules` (and its `scripts`, {attribute: file name}, whose
    names `import` cannot take), imported without clashing with another
    recipe's modules of the same names (model, scaling, ...): sys.modules is
    restored afterwards."""
    saved = {n: sys.modules.pop(n) for n in modules if n in sys.modules}
    sys.path.insert(0, str(recipe))
    try:
        mods = {n: importlib.import_module(n) for n in modules}
        for name, file in (scripts or {}).items():
            spec = importlib.util.spec_from_file_location(f"{recipe.name}_{name}", recipe / file)
            mods[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mods[name])
        return SimpleNamespace(**mods)
    finally:
        sys.path.remove(str(recipe))
        for n in modules:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def add_too_short_test_cut(workdir: Path) -> Tuple[str, int]:
    """Copy of data/fbank (links) as data/fbank_short whose test manifest has
    one more cut, "too-short" (50 ms, too short for the subsampling).
    Returns ("data/fbank_short", the number of the other test cuts)."""
    from lhotse import CutSet

    fbank = workdir / "data/fbank"
    short_dir = workdir / "data/fbank_short"
    short_dir.mkdir(exist_ok=True)
    for f in fbank.iterdir():
        if not (short_dir / f.name).exists() and "cuts_test" not in f.name:
            (short_dir / f.name).symlink_to(f)
    cuts = list(CutSet.from_file(fbank / "synth_cuts_test.jsonl.gz"))
    tiny = cuts[0].truncate(duration=0.05).with_id("too-short")
    CutSet.from_cuts(cuts + [tiny]).to_file(short_dir / "synth_cuts_test.jsonl.gz")
    return "data/fbank_short", len(cuts)

"""Recipe folders: the synth recipe links every file of the LibriSpeech one,
and a copied recipe runs without edits from any directory."""

import shutil
import subprocess
import sys

from recipe_fixture import REPO, env, ignore_outputs

LIBRI = REPO / "egs/librispeech/ASR/pruned_transducer_stateless3"
SYNTH = REPO / "egs/synth/ASR/pruned_transducer_stateless3"


def test_synth_recipe_links_every_file_of_the_librispeech_recipe():
    libri = sorted(p.name for p in LIBRI.glob("*.py"))
    synth = sorted(p.name for p in SYNTH.glob("*.py"))
    assert libri == synth
    for name in synth:
        assert (SYNTH / name).is_symlink() and (SYNTH / name).resolve() == (LIBRI / name).resolve()


def test_a_copied_recipe_runs_from_another_directory(tmp_path):
    copy = tmp_path / "my_model"
    shutil.copytree(LIBRI, copy, ignore=ignore_outputs)
    elsewhere = tmp_path / "somewhere_else"
    elsewhere.mkdir()
    for script in ("train.py", "decode.py", "export.py", "pretrained.py", "export-onnx.py"):
        out = subprocess.run([sys.executable, str(copy / script), "--help"], cwd=elsewhere, env=env(),
                             capture_output=True, text=True)
        assert out.returncode == 0, (script, out.stderr[-2000:])
        assert "usage:" in out.stdout
    # The copy imports its own files, not the original's.
    (copy / "model.py").write_text((copy / "model.py").read_text() + "\nMARK = 'copied'\n")
    out = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['x']; import runpy; "
                          f"g = runpy.run_path({str(copy / 'export.py')!r}); "
                          "import model; print(model.MARK)"],
                         cwd=elsewhere, env=env(), capture_output=True, text=True)
    assert out.stdout.strip() == "copied", out.stderr[-2000:]


def test_scripts_with_a_shebang_are_executable():
    for path in list((REPO / "egs").rglob("*.py")) + list((REPO / "egs").rglob("*.sh")):
        if path.read_text().startswith("#!"):
            assert path.stat().st_mode & 0o111, f"{path} has a #! line but is not executable"

"""--help of the decoding and export scripts: every flag has help text and shows its default."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "ASR" / "pruned_transducer_stateless3"
SCRIPTS = ["decode.py", "export.py", "export-onnx.py", "pretrained.py", "onnx_pretrained.py"]


def _parser(script: str):
    sys.path[:0] = [str(ROOT), str(RECIPE)]
    try:
        spec = importlib.util.spec_from_file_location(script.replace("-", "_")[:-3] + "_help", RECIPE / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_parser()
    finally:
        del sys.path[:2]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_help_and_shows_its_default(script):
    parser = _parser(script)
    formatter = parser._get_formatter()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 5
    no_help = [a.option_strings[0] for a in flags if not a.help]
    assert no_help == []
    no_default = [a.option_strings[0] for a in flags if "(default: " not in formatter._get_help_string(a)]
    assert no_default == []
    text = parser.format_help()
    assert "Usage" in text and "(default: " in text

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

from recipe_fixture import REPO, TinyRecipe, make_tiny_recipe

SYNTH_SMALL = REPO / "test" / "data" / "synth_small"


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory) -> TinyRecipe:
    """The synth recipe with a tiny corpus and a tiny model trained for 8 epochs."""
    return make_tiny_recipe(tmp_path_factory.mktemp("recipe"))


@dataclass
class SynthSmallTestSet:
    audio_dir: Path  # <id>.flac files
    utts: List  # icefall.synth_corpus utterance plans, with .id and .text


@pytest.fixture(scope="session")
def synth_small_test_set(tmp_path_factory) -> SynthSmallTestSet:
    """The held-out test split of the corpus the committed model
    (test/data/synth_small) was trained on, synthesised again (the corpus is
    deterministic): audio that model is meant to recognise."""
    from icefall.synth_corpus import SynthConfig, read_plan, synthesize_corpus

    tmp = tmp_path_factory.mktemp("synth_small")
    fields = json.loads((SYNTH_SMALL / "synth.json").read_text())
    config = SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    synthesize_corpus(config, tmp / "audio", num_jobs=2, progress=False, splits=("test",))
    utts = read_plan(tmp / "audio", "test")
    assert len(utts) == config.num_test
    return SynthSmallTestSet(tmp / "audio" / "test", utts)

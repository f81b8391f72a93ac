import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

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
def synth_small_splits(tmp_path_factory) -> Dict[str, SynthSmallTestSet]:
    """The test split and the held-out sentences of the corpus the committed
    model (test/data/synth_small) was trained on, synthesised again (the
    corpus is deterministic): voices, and for "heldout" sentences, that model
    never heard.  synth.json names the held-out file relative to the repository."""
    from icefall.synth_corpus import SynthConfig, read_plan, synthesize_corpus

    tmp = tmp_path_factory.mktemp("synth_small")
    fields = json.loads((SYNTH_SMALL / "synth.json").read_text())
    fields["heldout"] = str(REPO / fields["heldout"])
    config = SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    splits = ("test", "heldout")
    synthesize_corpus(config, tmp / "audio", num_jobs=2, progress=False, splits=splits)
    out = {split: SynthSmallTestSet(tmp / "audio" / split, read_plan(tmp / "audio", split))
           for split in splits}
    assert len(out["test"].utts) == config.num_test
    return out


@pytest.fixture(scope="session")
def synth_small_test_set(synth_small_splits) -> SynthSmallTestSet:
    """The committed model's test split (voices never heard in training)."""
    return synth_small_splits["test"]

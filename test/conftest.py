import pytest

from recipe_fixture import TinyRecipe, make_tiny_recipe


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory) -> TinyRecipe:
    """The synth recipe with a tiny corpus and a tiny model trained for 8 epochs."""
    return make_tiny_recipe(tmp_path_factory.mktemp("recipe"))

"""Hostile translator folders: a config.json that disagrees with its weights is refused before any allocation."""

from __future__ import annotations

import json
import shutil

import pytest

from diffgap_search.diffusion.network import Denoiser, NetworkConfig
from diffgap_search.diffusion.normalize import SpaceNorm
from diffgap_search.diffusion.translator import Space, Translator, TranslatorConfig
from diffgap_search.errors import DiffgapError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "model"
    network = NetworkConfig(dim_a=12, dim_b=8, hidden=16, emb=16, blocks=2)
    config = TranslatorConfig(space_a=Space("a", 12, "audio"), space_b=Space("b", 8, "text"), network=network)
    Translator(config, Denoiser(network), SpaceNorm(12), SpaceNorm(8)).save(root)
    return root


@pytest.mark.parametrize("path, value, fragment", [
    (("network", "hidden"), 1_000_000_000, "config.json implies"),
    (("network", "emb"), 1_000_000_000, "config.json implies"),
    (("network", "blocks"), 1_000_000_000, "network.blocks = 1000000000"),
    (("network", "blocks"), 3, "the weights hold 2 blocks"),
    (("schedule", "train_timesteps"), 1_000_000_000, "train_timesteps = 1000000000 is not an integer in 2..100000"),
    (("spaces", "a", "dim"), 1_000_000_000, "spaces.a.dim = 1000000000 but network.dim_a = 12"),
])
def test_a_tampered_config_is_one_line_and_allocates_nothing(model, tmp_path, path, value, fragment):
    bad = tmp_path / "model"
    shutil.copytree(model, bad)
    config = json.loads((bad / "config.json").read_text())
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(DiffgapError) as err:
        Translator.load(bad)
    message = str(err.value)
    assert fragment in message and "\n" not in message, message
    assert Translator.load(model).config.network.hidden == 16  # the good folder still loads

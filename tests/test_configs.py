"""The example configs shipped in configs/ stay valid."""

from pathlib import Path

import pytest

from fined.cli.app import load_settings
from fined.data.schema import load_prepare_config, parse_model
from fined.knowledge.base import KBConfig
from fined.models import model_config
from fined.train.trainer import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_top_level_configs_validate(path: Path) -> None:
    if path.name == "kb.yaml":
        kb, train = load_settings(path, [])
        parse_model(KBConfig, kb, path.name)
        parse_model(TrainConfig, train, path.name)
    else:
        assert load_prepare_config(path).dataset


@pytest.mark.parametrize("path", sorted((CONFIGS / "models").glob("*.yaml")), ids=lambda p: p.name)
def test_model_configs_validate(path: Path) -> None:
    model, train = load_settings(path, [])
    assert model_config(path.stem, model).embedding_dim >= 1
    parse_model(TrainConfig, train, path.name)

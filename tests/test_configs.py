"""The example configs shipped in configs/ stay valid."""

from pathlib import Path

import pytest

from fined.cli.app import load_settings
from fined.config import parse_model
from fined.data.schema import load_prepare_config
from fined.knowledge.knowledge_base import KBConfig
from fined.models import model_config
from fined.protocol.config import load_run_config
from fined.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_kb_config_validates() -> None:
    kb, train = load_settings(CONFIGS / "kb.yaml", [])
    parse_model(KBConfig, kb, "kb.yaml")
    parse_model(TrainConfig, train, "kb.yaml")


@pytest.mark.parametrize("path", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_prepare_configs_validate(path: Path) -> None:
    assert load_prepare_config(path).dataset


RUNS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "kb.yaml")


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.name)
@pytest.mark.parametrize("quick", [False, True])
def test_run_configs_validate(path: Path, quick: bool) -> None:
    config = load_run_config(path, quick=quick)
    assert config.strategies and config.models
    if quick:
        assert config.quick  # every run config says what --quick means


@pytest.mark.parametrize("path", sorted((CONFIGS / "models").glob("*.yaml")), ids=lambda p: p.name)
def test_model_configs_validate(path: Path) -> None:
    model, train = load_settings(path, [])
    assert model_config(path.stem, model).embedding_dim >= 1
    parse_model(TrainConfig, train, path.name)


def test_kb_yaml_states_the_defaults() -> None:
    """configs/kb.yaml documents the KB defaults: it must not drift from the code."""
    kb, _ = load_settings(CONFIGS / "kb.yaml", [])
    defaults = KBConfig().model_dump()
    assert {k: defaults[k] for k in kb} == kb


def test_a_strategy_overrides_the_run_adaptor_only_where_it_says_so() -> None:
    config = load_run_config(CONFIGS / "synthetic_ablations.yaml")
    adaptors = {s.label: config.adaptor_config(s) for s in config.strategies}
    assert adaptors["fined"].kb_distill == 0.2  # the adaptor's default
    assert adaptors["fined_no_kb_distill"].kb_distill == 0.0  # the strategy's own setting
    assert adaptors["fined"].finetune_lr is None

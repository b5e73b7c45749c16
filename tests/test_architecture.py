"""The shape of the code: packages import one way (data < models < knowledge < artifacts <
train < report < protocol < cli, above a bottom of plumbing), without import cycles; a run
config is validated whole at load; and a new model or strategy needs no edit of fined."""

from __future__ import annotations

import ast
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from conftest import write_run_config
from fined.cli import main
from fined.config import parse_model
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.errors import FinedError
from fined.models.ctr_model import MODELS, CTRModel, ModelConfig, register_model
from fined.protocol.config import RunConfig, load_run_config
from fined.protocol.strategies import STRATEGIES, Strategy, StrategySpec, register_strategy

SRC = Path(__file__).resolve().parents[1] / "src" / "fined"
BOTTOM = {"__init__", "errors", "config", "io", "outputs", "registry", "distributed", "devices"}
LAYERS = ["data", "models", "knowledge", "artifacts", "train", "report", "protocol", "tune", "cli"]


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return -1 if top in BOTTOM else LAYERS.index(top)


def _imports(path: Path) -> set[str]:
    """Every fined module a file imports, at any depth of the file (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "fined":
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fined"}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def test_packages_import_one_way(graph) -> None:
    upward = [
        f"{m} imports {i}"
        for m, imported in graph.items()
        for i in imported
        if _layer(i) > _layer(m) and not m.startswith(i + ".")  # a package's own __init__
    ]
    assert not upward, upward


def test_no_import_cycles(graph) -> None:
    """Depth-first search for a cycle in the module graph (package __init__s included)."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for i in sorted(graph[m]):
            if m.startswith(i + ".") or i.startswith(m + "."):
                continue  # a module and its package
            if state.get(i) == 1:
                cycles.append([*path[path.index(i) :], i] if i in path else [m, i])
            elif i not in state:
                visit(i, [*path, i])
        state[m] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "data"
    options = {"n_rows": 4000, "n_periods": 4, "n_fields": 4, "cardinality": 30, "seed": 2}
    prepare(PrepareConfig(dataset="synthetic", options=options), out)
    return out


@pytest.mark.parametrize(
    "section, key",
    [
        ({"strategies": ["incremental", {"kind": "incremental", "label": "x", "kd_weight": 1}]},
         "strategies.1.kd_weight"),
        ({"strategies": ["incremental", {"kind": "kd", "window": 3}]}, "strategies.1.window"),
        ({"model_settings": {"deepfm": {"embeding_dim": 8}}}, "model_settings.deepfm.embeding_dim"),
        ({"model_settings": {"dcn": {"cross_layer": 2}}}, "model_settings.dcn.cross_layer"),
        ({"train": {"batchsize": 64}}, "train.batchsize"),
        ({"kb": {"slot": 4}}, "kb.slot"),
    ],
)  # fmt: skip
def test_a_misplaced_or_misspelt_key_fails_at_load(tmp_path, capsys, section, key) -> None:
    """Before any data work: the run directory is not even created."""
    config = write_run_config(tmp_path / "run.yaml", tmp_path / "absent", ["incremental"])
    doc = {**yaml.safe_load(config.read_text()), **section}
    config.write_text(yaml.safe_dump(doc))
    with pytest.raises(FinedError, match=key.replace(".", r"\.")):
        load_run_config(config)
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_config_is_typed_whole_with_every_default(tmp_path) -> None:
    config = write_run_config(tmp_path / "run.yaml", tmp_path, ["incremental", "fined"])
    doc = yaml.safe_load(config.read_text())
    doc["model_settings"] = {"dcn": {"cross_layers": 2}}
    run = parse_model(RunConfig, {**doc, "models": ["dcn"]}, "run")
    dcn = run.model_settings["dcn"]
    assert dcn.cross_layers == 2 and dcn.version == "v1" and dcn.embedding_dim == 16
    assert run.kb_train.batch_size == 512 and run.kb_train.lr == 3e-3  # file < KB defaults
    assert [type(s).__name__ for s in run.strategies] == ["StrategySpec", "FinedSpec"]


class ToyConfig(ModelConfig):
    scale: float = 1.0


class ToyLinear(CTRModel):
    """Logistic regression over the ids: a model in one short file, nothing else."""

    config_class = ToyConfig
    uses_linear = True

    def interact(self, fields: torch.Tensor, batch) -> torch.Tensor:
        return self.config.scale * self.embedding.linear_logit(batch)


class ForgetSpec(StrategySpec):
    keep_last: bool = True


class Forget(Strategy):
    """Retrain from scratch on the current period only (a toy strategy)."""

    spec_class = ForgetSpec
    warm_by_default = False


def test_a_new_model_and_strategy_need_no_edit_of_fined(data, tmp_path, capsys) -> None:
    register_model("toy_linear")(ToyLinear)
    register_strategy("toy_forget")(Forget)
    try:
        strategies = ["incremental", {"kind": "toy_forget", "keep_last": False}]
        config = write_run_config(
            tmp_path / "run.yaml", data, strategies, models=["toy_linear", "deepfm"],
            model_settings={"toy_linear": {"scale": 0.5}},
        )  # fmt: skip
        assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    finally:
        MODELS.unregister("toy_linear")
        STRATEGIES.unregister("toy_forget")
    results = pl.read_csv(tmp_path / "out" / "results.csv")
    toy = results.filter((pl.col("model") == "toy_linear") & (pl.col("strategy") == "toy_forget"))
    assert toy.height == 2 and toy["auc"].min() > 0.5  # it learned something of the ids

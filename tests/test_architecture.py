"""The shape of the code: packages import one way (data < models < knowledge < artifacts <
train < report < protocol < cli, above a bottom of plumbing), without import cycles; a run
config is validated whole at load; and a new model or strategy needs no edit of fined."""

from __future__ import annotations

import ast
import re
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
BOTTOM = {
    "__init__",
    "errors",
    "config",
    "io",
    "outputs",
    "workers",
    "limits",
    "registry",
    "distributed",
    "devices",
}
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


def _self_assignments(cls: ast.ClassDef) -> list[str]:
    """``self.x = ...`` (or ``+=``, annotated) in the methods of ``cls`` but ``__init__``."""
    found = []
    for method in cls.body:
        if not isinstance(method, ast.FunctionDef) or method.name == "__init__":
            continue
        for node in ast.walk(method):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            while targets:  # unpacked: a, self.x = ...
                t = targets.pop()
                if isinstance(t, ast.Tuple | ast.List):
                    targets.extend(t.elts)
                elif isinstance(t, ast.Starred):
                    targets.append(t.value)
                elif isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self":
                    found.append(f"{cls.name}.{method.name} sets self.{t.attr}")
    return found


def test_the_runner_is_whole_when_built_and_its_opened_run_never_changes() -> None:
    """``Runner`` sets its attributes in ``__init__`` only; ``open()`` returns the opened
    run, frozen."""
    import dataclasses

    from fined.protocol.opened_run import OpenedRun

    tree = ast.parse((SRC / "protocol" / "runner.py").read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert "Runner" in {c.name for c in classes}
    late = [x for c in classes for x in _self_assignments(c)]
    assert not late, late
    assert dataclasses.is_dataclass(OpenedRun) and OpenedRun.__dataclass_params__.frozen  # type: ignore[attr-defined]


# FINED's own types may be told apart only where FINED lives (and where models are stored):
# the generic layers ask a strategy or a model through their interfaces instead.
FINED_HOMES = ("knowledge/", "protocol/strategies/", "artifacts/")


def _fined_types() -> set[str]:
    files = [*(SRC / "knowledge").rglob("*.py"), SRC / "protocol" / "strategies" / "fined.py"]
    return {
        node.name
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    }


def _isinstance_types(path: Path) -> set[str]:
    """The names of the classes a file tests with ``isinstance``/``issubclass``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            for t in ast.walk(node.args[1]):
                if isinstance(t, ast.Name):
                    found.add(t.id)
                elif isinstance(t, ast.Attribute):
                    found.add(t.attr)
    return found


def test_fined_types_are_told_apart_only_where_fined_lives() -> None:
    fined = _fined_types()
    assert {"FinedSpec", "FinedModel", "KnowledgeBase", "AdaptorConfig"} <= fined
    found = {}
    for path in SRC.rglob("*.py"):
        name = path.relative_to(SRC).as_posix()
        if name.startswith(FINED_HOMES):
            continue
        tested = _isinstance_types(path) & fined
        if tested:
            found[name] = sorted(tested)
    assert not found, found


# -- typed seams: a training pass's parts are fields; the trainer owns every optimizer ----------
def _string_keyed_parts(node: ast.AST) -> bool:
    """``x.parts["..."]`` or ``x.parts.get("...")`` with ``x`` not ``self`` (a class's own
    dict): a string key crossing from one object to another."""
    if isinstance(node, ast.Subscript):
        target, key = node.value, node.slice
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and node.args
    ):
        target, key = node.func.value, node.args[0]
    else:
        return False
    return (
        isinstance(target, ast.Attribute)
        and target.attr == "parts"
        and ast.unparse(target.value) != "self"
        and isinstance(key, ast.Constant)
        and isinstance(key.value, str)
    )


def test_a_model_is_known_by_its_description_not_its_class() -> None:
    """What keeps, exports or trains a model types it as a ``ScoringModel`` and asks its
    ``describe()``: no union of model classes (``CTRModel | FinedModel``) anywhere."""
    from fined.knowledge.fined_model import FinedModel
    from fined.models.ctr_model import CTRModel
    from fined.models.scoring import ScoringModel

    assert issubclass(CTRModel, ScoringModel) and issubclass(FinedModel, ScoringModel)
    unions = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.BitOr)
        and {"CTRModel", "FinedModel"} <= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    ]
    assert not unions, unions


def test_training_passes_are_typed_not_string_keyed() -> None:
    """What a loss reads of a training pass (the KB's knowledge and verdict, the teacher's
    probabilities) is a field of a frozen dataclass: a renamed or missing one fails at once
    (an AttributeError; mypy before), never as a silently absent key."""
    import dataclasses

    from fined.knowledge.fined_model import FinedForward, KBVerdict
    from fined.knowledge.knowledge_base import KBForward, Knowledge
    from fined.models.trainable import Forward, Teacher

    for cls in (Forward, KBForward, FinedForward, Knowledge, KBVerdict, Teacher):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        untyped = [
            f.name for f in dataclasses.fields(cls) if re.search(r"\b(dict|Mapping)\b", str(f.type))
        ]
        assert not untyped, (cls.__name__, untyped)
    with pytest.raises(AttributeError):
        Forward(logits=torch.zeros(2)).parts  # type: ignore[attr-defined]  # noqa: B018
    keyed = [
        f"{path.relative_to(SRC)}:{node.lineno}"  # type: ignore[attr-defined]
        for path in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if _string_keyed_parts(node)
    ]
    assert not keyed, keyed


def test_the_trainer_owns_every_optimizer() -> None:
    """No optimizer is built outside ``fined.train``: a module declares the parameters it
    trains apart and their loss (``Trainable.auxiliary_groups``); the trainer builds, steps,
    averages (DDP) and checkpoints their optimizers."""
    found = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "train":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            uses = (
                isinstance(node, ast.Attribute)
                and node.attr == "optim"
                and ast.unparse(node.value) == "torch"
            ) or (
                isinstance(node, ast.ImportFrom)
                and node.module is not None
                and (
                    node.module.startswith("torch.optim")
                    or (node.module == "torch" and any(a.name == "optim" for a in node.names))
                )
            )
            if uses:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")  # type: ignore[attr-defined]
    assert not found, found


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

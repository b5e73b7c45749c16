"""The training step: nothing in it waits for the device, the optimizer fused where PyTorch
can, and (on a GPU only) the step replayed as a CUDA graph trains as eager steps do."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.knowledge.adaptor import AdaptorConfig
from fined.knowledge.fined_model import FinedModel
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase
from fined.models import build_model
from fined.models.trainable import AuxiliaryGroup, Trainable
from fined.protocol.distill import Distilled
from fined.train.config import TrainConfig
from fined.train.optim import AuxiliaryOptimizers, DenseSparseAdam, build_optimizer
from fined.train.step import EpochSums, TrainingPass, TrainStep, graph_blocker
from fined.train.trainer import Trainer

SMALL = {"embedding_dim": 8, "mlp": [32]}
BASES = {
    "deepfm": {},
    "dcn": {"version": "v2", "cross_layers": 2},
    "pnn": {"product": "outer"},
    "xdeepfm": {"cin_layers": [8]},
    "autoint": {"attention_layers": 2, "attention_dim": 8, "layer_norm": True},
    "din": {"attention_mlp": [16], "attention_softmax": True},
}
KB = {"slots": 4, "dim": 8, "l0_warmup_steps": 4}


@pytest.fixture(scope="module")
def movielens(tmp_path_factory) -> PeriodStore:
    """MovieLens-100K: every model (DIN reads its behaviour histories)."""
    out = tmp_path_factory.mktemp("ml") / "data"
    prepare(PrepareConfig(dataset="movielens100k"), out)
    return PeriodStore(out)


def trainable(kind: str, store: PeriodStore) -> Trainable:
    """A model of each kind the trainer steps: the six bases, FINED on two of them (with a
    model of t-1 to trust the KB by), a student distilled from its earlier self, and
    knowledge bases (both MI estimators)."""
    fmap = store.feature_map
    torch.manual_seed(0)
    if kind in BASES:
        return build_model(kind, fmap, SMALL, BASES[kind])
    if kind.startswith("fined_"):  # as the fined strategy trains it: distilled from t-1
        base = kind.removeprefix("fined_")
        kb = KnowledgeBase(fmap, KBConfig(**KB), 0).eval()
        fined = [FinedModel(build_model(base, fmap, SMALL, BASES[base], knowledge_tokens=2), kb,
                            AdaptorConfig(kb_trust="agreement")) for _ in range(2)]  # fmt: skip
        return Distilled(fined[0], 1.0, fined[1])
    if kind == "kd":
        return Distilled(build_model("deepfm", fmap, SMALL), 1, build_model("deepfm", fmap, SMALL))
    estimator = kind.removeprefix("kb_")
    return KnowledgeBase(fmap, KBConfig(**KB, mi_estimator=estimator), 0)


KINDS = [*BASES, "fined_deepfm", "fined_din", "kd", "kb_club", "kb_hsic"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_training_step_never_reads_a_value_back_from_the_device(kind, movielens) -> None:
    """The whole step on PyTorch's ``meta`` device, which holds shapes and no values: any
    read of a value on the host (``.item()``, ``float()``, ``if tensor:``, a boolean mask's
    size) fails there, as it would make a GPU's every step wait. (HSIC's bandwidth did: a
    masked median.)"""
    model = trainable(kind, movielens).to("meta")
    batch = movielens.load([0], "train").slice(0, 256).to(torch.device("meta"))
    optimizer = build_optimizer(model.parameter_groups(), "adam", 1e-3, 0.0, set())
    sums = EpochSums(torch.zeros((), dtype=torch.float64, device="meta"))
    config = TrainConfig(embedding_l2=1e-6)
    step = TrainStep(TrainingPass(model), model, optimizer, config, contextlib.nullcontext, sums)
    model.train()
    step(batch)
    step(batch)  # the optimizer's state exists from here on
    assert sums.loss.device.type == "meta"


def test_the_optimizer_is_fused_where_pytorch_can(movielens) -> None:
    """One fused Adam kernel over the dense parameters (on 2 CPU cores DeepFM's step of
    4.7 M parameters: 3 ms instead of 21); sparse tables keep their own SparseAdam."""
    model = trainable("deepfm", movielens)
    dense = build_optimizer(model.parameter_groups(), "adam", 1e-3, 0.0, set())
    assert dense.defaults["fused"] is True
    table = {id(model.embedding.table.weight)}
    mixed = build_optimizer(model.parameter_groups(), "adamw", 1e-3, 0.0, table)
    assert isinstance(mixed, DenseSparseAdam) and mixed.parts["dense"].defaults["fused"] is True
    on_meta = build_optimizer(model.to("meta").parameter_groups(), "adam", 1e-3, 0.0, set())
    assert not on_meta.defaults["fused"]  # a device fused Adam does not run on: the default


def test_the_trainer_steps_and_checkpoints_the_groups_a_model_trains_apart() -> None:
    """An auxiliary group's Adam steps on the group's own loss and round-trips through a
    checkpoint by the group's name; a saved optimizer that never stepped, of a group not
    declared now, is no obstacle; one that did step is."""
    weight = torch.nn.Parameter(torch.ones(3))
    group = AuxiliaryGroup("q", [weight], 0.1, lambda out: (weight * out).sum())
    aux = AuxiliaryOptimizers([group])
    aux.step(torch.ones(3))
    assert torch.allclose(weight.detach(), torch.full((3,), 0.9)) and weight.grad is None
    saved = aux.state_dict()
    again = AuxiliaryOptimizers([AuxiliaryGroup("q", [torch.nn.Parameter(torch.ones(3))], 0.1,
                                                group.loss)])  # fmt: skip
    again.load_state_dict({**saved, "idle": {"state": {}, "param_groups": []}})
    assert again.state_dict()["q"]["state"][0]["step"] == 1
    with pytest.raises(KeyError, match="expected"):
        again.load_state_dict({"other": saved["q"]})


def test_what_keeps_a_step_from_a_cuda_graph(movielens) -> None:
    cuda = torch.device("cuda")
    assert graph_blocker(trainable("fined_din", movielens), cuda, False) is None
    assert graph_blocker(trainable("kd", movielens), cuda, False) is None
    assert "CUDA device" in graph_blocker(trainable("deepfm", movielens), torch.device("cpu"),
                                          False)  # fmt: skip
    assert "ranks" in graph_blocker(trainable("deepfm", movielens), cuda, True)
    sparse = build_model("deepfm", movielens.feature_map, {**SMALL, "sparse_embedding": True})
    assert "sparse" in graph_blocker(sparse, cuda, False)
    assert "optimizers of their own" in graph_blocker(trainable("kb_club", movielens), cuda, False)


def _fit(store: PeriodStore, kind: str, device: str, **train) -> tuple[list, np.ndarray]:
    lines: list[str] = []
    config = TrainConfig(batch_size=1000, epochs=2, patience=2, progress=False, **train)
    trainer = Trainer(trainable(kind, store), config, lines.append, device=device)
    fit = trainer.fit(store.load([0], "train"), store.load([0], "holdout"))
    return [(h["train_loss"], h["valid_auc"]) for h in fit.history], lines


def test_cuda_graphs_on_a_cpu_take_eager_steps_and_say_so(movielens) -> None:
    eager, _ = _fit(movielens, "deepfm", "cpu")
    asked, lines = _fit(movielens, "deepfm", "cpu", cuda_graphs=True)
    assert asked == eager
    assert sum("train.cuda_graphs: eager steps (CUDA graphs need a CUDA device" in line
               for line in lines) == 1  # fmt: skip


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["deepfm", "din", "fined_deepfm", "kd"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_step_replayed_as_a_cuda_graph_trains_as_eager_steps(kind, precision,
                                                               movielens) -> None:  # fmt: skip
    """Every full batch through the graph, the last short one eager, two epochs (the second
    captures afresh): the losses and validation AUCs of eager steps, to float order."""
    eager, _ = _fit(movielens, kind, "cuda", precision=precision)
    graphed, lines = _fit(movielens, kind, "cuda", precision=precision, cuda_graphs=True)
    assert not any("eager steps" in line for line in lines)
    np.testing.assert_allclose(np.array(graphed), np.array(eager), atol=2e-3 if precision ==
                               "bf16" else 2e-4)  # fmt: skip


def test_the_short_layer_norm_is_pytorchs() -> None:
    """The GPU's layer norm over short rows (``ShortLayerNorm`` off the CPU) computes
    ``F.layer_norm``, in fp32 and, for a bf16 input, to bf16's precision."""
    from fined.models.layers import short_layer_norm

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(4096, 39, 16) * 3 + 1
    with torch.no_grad():
        expected = torch.nn.functional.layer_norm(x, (16,), norm.weight, norm.bias, norm.eps)
        ours = short_layer_norm(x, norm.weight, norm.bias, norm.eps)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        half = short_layer_norm(x.bfloat16(), norm.weight, norm.bias, norm.eps)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), expected, atol=0.1, rtol=0.02)

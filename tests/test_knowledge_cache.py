"""A frozen KB's knowledge of the rows of a fit, computed once: the same fit as computing it
at every step, with the KB queried once per row instead of once per row and epoch."""

from __future__ import annotations

import pytest
import torch

from fined.data.batch import Batch
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.knowledge.adaptor import AdaptorConfig
from fined.knowledge.fined_model import FinedModel
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase
from fined.models import build_model
from fined.protocol.distill import Distilled
from fined.train.config import TrainConfig
from fined.train.trainer import Trainer

SMALL = {"embedding_dim": 8, "mlp": [32]}
# Tokens open and trusted from the start, so that the knowledge reaches the logits at once.
OPEN = AdaptorConfig(tokens=2, start_closed=False, kb_earned=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> PeriodStore:
    out = tmp_path_factory.mktemp("cache") / "data"
    prepare(PrepareConfig(dataset="synthetic", options={"n_rows": 12_000, "n_periods": 3}), out)
    return PeriodStore(out)


def _fined(store: PeriodStore, adaptor: AdaptorConfig = OPEN) -> tuple[FinedModel, list[int]]:
    """A FINED model of a random frozen KB, distilled from its own copy (as the protocol
    trains it), and a counter of the KB's queries."""
    torch.manual_seed(0)
    kb = KnowledgeBase(store.feature_map, KBConfig(slots=4, dim=8), 1).eval()
    net = FinedModel(build_model("deepfm", store.feature_map, SMALL, knowledge_tokens=2), kb,
                     adaptor)  # fmt: skip
    calls = [0]
    query = kb.query

    def counted(batch: Batch):
        calls[0] += 1
        return query(batch)

    kb.query = counted  # type: ignore[method-assign]
    return net, calls


def _fit(store: PeriodStore, cache_mb: float, log: list[str] | None = None):
    net, calls = _fined(store)
    config = TrainConfig(batch_size=512, epochs=3, patience=3, knowledge_cache_mb=cache_mb,
                         progress=False, seed=5)  # fmt: skip
    trainer = Trainer(Distilled(net, 0.5), config, log=None if log is None else log.append)
    fit = trainer.fit(store.load([1], "train", known_through=1),
                      store.load([1], "holdout", known_through=1))  # fmt: skip
    return net, fit, calls[0]


def test_knowledge_computed_once_gives_the_fit_of_knowledge_computed_every_step(store) -> None:
    once, fit_once, queries_once = _fit(store, cache_mb=2048)
    each, fit_each, queries_each = _fit(store, cache_mb=0)
    assert [h["valid_auc"] for h in fit_once.history] == pytest.approx(
        [h["valid_auc"] for h in fit_each.history], abs=1e-6
    )
    assert fit_once.best_epoch == fit_each.best_epoch
    for name, value in each.state_dict().items():
        assert torch.allclose(once.state_dict()[name], value, atol=1e-5), name
    # Once a row (one pass over the train and one over the held-out rows), against the
    # student's and the teacher's query at every step and every validation.
    train_rows, valid_rows = len(store.load([1], "train")), len(store.load([1], "holdout"))
    eval_batch = TrainConfig().eval_batch_size
    assert queries_once == -(-train_rows // eval_batch) + -(-valid_rows // eval_batch)
    assert queries_each > 3 * 2 * (train_rows // 512)


def test_knowledge_past_its_budget_is_computed_batch_by_batch_and_said(store) -> None:
    said: list[str] = []
    _, fit, queries = _fit(store, cache_mb=0.01, log=said)
    assert queries > 3 * 2 * (len(store.load([1], "train")) // 512)  # student and teacher
    assert any("knowledge_cache_mb" in line for line in said), said
    assert len(fit.history) == 3


def test_a_fine_tuned_kb_computes_its_knowledge_every_step(store) -> None:
    net, _ = _fined(store, OPEN.model_copy(update={"finetune_lr": 1e-4}))
    assert net.row_knowledge() is None and Distilled(net, 0.5).row_knowledge() is None
    rows = store.load([1], "holdout", known_through=1)
    assert Trainer(net, TrainConfig(progress=False)).with_knowledge(rows).knowledge is None


def test_rows_carry_their_knowledge_through_every_batch_operation(store) -> None:
    net, _ = _fined(store)
    rows = Trainer(net, TrainConfig(progress=False)).with_knowledge(
        store.load([1], "holdout", known_through=1)
    )
    assert rows.knowledge is not None
    v = rows.knowledge.v
    assert v.shape == (len(rows), 4, 8)
    index = torch.tensor([5, 0, 3])
    assert torch.equal(rows.take(index).knowledge.v, v[index])
    assert torch.equal(rows.slice(2, 4).knowledge.v, v[2:4])
    assert torch.equal(Batch.concat([rows.slice(0, 2), rows.slice(2, 4)]).knowledge.v, v[:4])
    bare = store.load([1], "holdout")
    assert Batch.concat([rows.slice(0, 2), bare.slice(0, 2)]).knowledge is None
    assert rows.nbytes > bare.nbytes
    # A dtype move (the path of a device move) reaches the knowledge with the rows, and a
    # model moved alike reads it.
    part = rows.slice(0, 64)
    moved = Batch(part.ids, part.floats.double(), part.sequences, part.label, part.time,
                  part.group, part.knowledge.map(lambda t: t.double()))  # fmt: skip
    double = net.double().eval()
    with torch.no_grad():
        assert double(moved).dtype == torch.float64
    wrong = Batch(moved.ids, moved.floats, moved.sequences, moved.label, moved.time,
                  moved.group, moved.knowledge.map(lambda t: t[:, :3]))  # fmt: skip
    with pytest.raises(ValueError, match="knowledge of shape"):
        double(wrong)

"""Every CTR model, one parametrized test per property: shapes and the knowledge-token hook,
learning a planted signal (better than logistic regression), save/load, clear config errors.

Learning data:
- Synthetic drift source, two periods, all four planted patterns (products of +-1 signs over
  2-3 fields: invisible to a linear model, each field alone has no effect) active in both.
  Train on period 0 (its held-out tail selects the epoch), test on period 1.
- DIN needs behaviour histories, which the synthetic source has none of; it gets a planted
  signal of its own, built in memory: the click probability is high when the target item
  occurs in the user's history (an interaction of the target and the history that a linear
  model on one-hot ids plus a multi-hot history cannot express).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from fined.artifacts.model_store import load_model, save_model
from fined.data.batch import Batch
from fined.data.feature_map import FeatureInfo, FeatureMap
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.errors import FinedError
from fined.knowledge.adaptor import AdaptorConfig
from fined.knowledge.fined_model import FinedModel
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase
from fined.models import build_model
from fined.models.scoring import KnowledgeDescription
from fined.models.warm_start import load_overlapping
from fined.train.config import TrainConfig
from fined.train.metrics import auc
from fined.train.trainer import Trainer

# name -> (registry name, overrides). Small sizes keep the whole file fast on 2 CPU cores.
SMALL = {"embedding_dim": 8, "mlp": [64, 64]}
VARIANTS: dict[str, tuple[str, dict]] = {
    "deepfm": ("deepfm", {}),
    "dcn": ("dcn", {"cross_layers": 2}),
    "dcn_v2": ("dcn", {"version": "v2", "cross_layers": 2}),
    "pnn": ("pnn", {"product": "inner"}),
    "pnn_outer": ("pnn", {"product": "outer"}),
    "xdeepfm": ("xdeepfm", {"cin_layers": [16, 16]}),
    # Without LayerNorm the attention-only AutoInt reaches only ~0.68 here (LR: 0.667).
    "autoint": (
        "autoint",
        {"attention_layers": 2, "attention_dim": 16, "layer_norm": True, "use_mlp": False},
    ),
    "autoint_plus": ("autoint", {"attention_layers": 2, "attention_dim": 16, "use_mlp": True}),
    "din": ("din", {"attention_mlp": [32]}),
    "din_softmax": ("din", {"attention_mlp": [32], "attention_softmax": True}),
}
NAMES = list(VARIANTS)

# Test AUC floors: the lowest test AUC measured with this file's settings over training seeds
# 1-4 (in brackets), minus a margin of about 0.03. Logistic regression on the same splits:
# 0.667 (synthetic), 0.52 (DIN data).
FLOORS = {
    "deepfm": 0.73,  # [0.759]
    "dcn": 0.72,  # [0.749]
    "dcn_v2": 0.745,  # [0.774]
    "pnn": 0.77,  # [0.795]
    "pnn_outer": 0.735,  # [0.764]
    "xdeepfm": 0.755,  # [0.785]
    "autoint": 0.69,  # [0.720]
    "autoint_plus": 0.74,  # [0.767]
    "din": 0.71,  # [0.741]
    "din_softmax": 0.77,  # [0.798]
}
TRAIN = TrainConfig(batch_size=512, lr=2e-3, epochs=6, patience=1, progress=False)
# The history signal needs the item embeddings to separate first: more, smaller steps.
TRAIN_DIN = TrainConfig(batch_size=256, lr=5e-3, epochs=8, patience=2, progress=False)


def build(variant: str, fmap: FeatureMap, knowledge_tokens: int = 0, seed: int = 0):
    name, overrides = VARIANTS[variant]
    torch.manual_seed(seed)
    return build_model(name, fmap, SMALL, overrides, knowledge_tokens=knowledge_tokens)


# -- data ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def movielens(tmp_path_factory) -> tuple[FeatureMap, Batch]:
    """MovieLens-100K (with behaviour histories); 512 rows of its first month."""
    out = tmp_path_factory.mktemp("ml") / "data"
    fmap = prepare(PrepareConfig(dataset="movielens100k"), out)
    return fmap, PeriodStore(out).load([0]).slice(0, 512)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[FeatureMap, Batch, Batch, Batch]:
    """``(fmap, train, valid, test)``: period 0 without / with its held-out tail, period 1."""
    out = tmp_path_factory.mktemp("syn") / "data"
    options = {"n_rows": 60_000, "n_periods": 2, "seed": 0}
    fmap = prepare(PrepareConfig(dataset="synthetic", options=options), out)
    store = PeriodStore(out)
    return fmap, store.load([0], "train"), store.load([0], "holdout"), store.load([1])


def history_data(n: int, seed: int, items: int = 50, users: int = 500, max_len: int = 10):
    """``(fmap, batch)``: rows whose click depends on the target item being in the history."""
    rng = np.random.default_rng(seed)
    hist = rng.integers(2, items + 2, size=(n, max_len))
    length = rng.integers(3, max_len + 1, size=n)
    hist[np.arange(max_len) >= length[:, None]] = 0  # right padding
    from_hist = rng.random(n) < 0.5
    pick = hist[np.arange(n), (rng.random(n) * length).astype(int)]
    target = np.where(from_hist, pick, rng.integers(2, items + 2, size=n))
    member = (hist == target[:, None]).any(1)
    logit = np.where(member, 1.5, -1.5) + rng.normal(0, 0.3, items + 2)[target]
    label = rng.random(n) < 1 / (1 + np.exp(-logit))
    user = rng.integers(2, users + 2, size=n)
    cate = target % 20 + 2
    hist_cate = np.where(hist > 0, hist % 20 + 2, 0)

    def f(name, kind, source, vocab, size, max_len=1):
        return FeatureInfo(name, kind, source, vocab, size, max_len=max_len)

    fmap = FeatureMap(
        dataset="history_toy",
        features=[
            f("user_id", "categorical", "user", "user_id", users + 2),
            f("item_id", "categorical", "item", "item_id", items + 2),
            f("cate", "categorical", "item", "cate", 22),
            f("hist_items", "sequence", "user", "item_id", items + 2, max_len),
            f("hist_cates", "sequence", "user", "cate", 22, max_len),
        ],
        periods=[],
    )
    batch = Batch(
        ids=torch.tensor(np.stack([user, target, cate], 1), dtype=torch.int32),
        floats=torch.zeros(n, 0),
        sequences={
            "hist_items": torch.tensor(hist, dtype=torch.int32),
            "hist_cates": torch.tensor(hist_cate, dtype=torch.int32),
        },
        label=torch.tensor(label, dtype=torch.float32),
        time=torch.arange(n),
    )
    return fmap, batch


@pytest.fixture(scope="module")
def histories() -> tuple[FeatureMap, Batch, Batch, Batch]:
    fmap, data = history_data(40_000, seed=0)
    return fmap, data.slice(0, 25_000), data.slice(25_000, 30_000), data.slice(30_000, 40_000)


def is_din(variant: str) -> bool:
    return VARIANTS[variant][0] == "din"


def learning_split(variant: str, synthetic, histories):
    return histories if is_din(variant) else synthetic


def logistic_regression_auc(train: Batch, test: Batch) -> float:
    """LR on one-hot ids plus a multi-hot bag of every sequence."""

    bag_width = 4096  # above every id of these data sets

    def design(b: Batch, enc: OneHotEncoder) -> sp.csr_matrix:
        parts = [enc.transform(b.ids.numpy())]
        for seq in b.sequences.values():
            ids = seq.numpy()
            rows = np.repeat(np.arange(len(ids)), ids.shape[1])
            values = (np.ones(ids.size), (rows, ids.ravel()))
            bag = sp.csr_matrix(values, shape=(len(ids), bag_width))
            parts.append(bag[:, 1:])  # column 0 is padding
        return sp.hstack(parts).tocsr()

    enc = OneHotEncoder(handle_unknown="ignore").fit(train.ids.numpy())
    lr = LogisticRegression(max_iter=1000).fit(design(train, enc), train.label.numpy())
    return auc(test.label.numpy(), lr.predict_proba(design(test, enc))[:, 1])


@pytest.fixture(scope="module")
def lr_auc(synthetic, histories) -> dict[str, float]:
    return {
        "synthetic": logistic_regression_auc(synthetic[1], synthetic[3]),
        "din": logistic_regression_auc(histories[1], histories[3]),
    }


def shapes_data(variant: str, movielens, synthetic) -> tuple[FeatureMap, Batch]:
    return movielens if is_din(variant) else (synthetic[0], synthetic[1].slice(0, 512))


# -- forward and the knowledge hook ----------------------------------------------------------
@pytest.mark.parametrize("variant", NAMES)
def test_forward_and_knowledge_tokens(variant, movielens, synthetic) -> None:
    fmap, batch = shapes_data(variant, movielens, synthetic)
    model = build(variant, fmap, knowledge_tokens=3)
    model.eval()  # BatchNorm (Dice) in inference mode: rows do not affect each other
    d = model.config.embedding_dim
    knowledge = torch.randn(len(batch), 3, d, requires_grad=True)
    out = model(batch, knowledge)
    assert out.shape == (len(batch),) and torch.isfinite(out).all()

    other = knowledge.detach().clone()
    other[:, :, 0] += 1.0
    assert not torch.allclose(model(batch, other), out.detach())  # the tokens are interacted
    out.sum().backward()
    assert knowledge.grad is not None and knowledge.grad.abs().sum() > 0

    with pytest.raises(ValueError, match="knowledge tokens"):
        model(batch)
    with pytest.raises(ValueError, match=r"expected \[B, 3, "):  # the one path, checked
        model.append_tokens(model.embedding(batch), other[:, :2])
    plain = build(variant, fmap)
    assert plain.num_fields == model.num_fields - 3
    assert plain(batch).shape == (len(batch),)


# -- learning a planted signal ---------------------------------------------------------------
@pytest.mark.parametrize("variant", NAMES)
def test_learns_planted_signal(variant, synthetic, histories, lr_auc) -> None:
    fmap, train, valid, test = learning_split(variant, synthetic, histories)
    model = build(variant, fmap, seed=1)
    trainer = Trainer(model, TRAIN_DIN if is_din(variant) else TRAIN)
    trainer.fit(train, valid)
    got = auc(test.label.numpy(), trainer.predict(test))
    baseline = lr_auc["din" if is_din(variant) else "synthetic"]
    assert got > FLOORS[variant], f"{variant}: test AUC {got:.4f} below {FLOORS[variant]}"
    assert got > baseline + 0.02, f"{variant}: test AUC {got:.4f}, LR {baseline:.4f}"


# -- save and load ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", NAMES)
def test_save_load_same_predictions(variant, movielens, synthetic, tmp_path) -> None:
    fmap, batch = shapes_data(variant, movielens, synthetic)
    model = build(variant, fmap)
    model.train()
    for p in model.parameters():  # move away from the initialization, incl. BN statistics
        p.data.add_(torch.randn_like(p) * 0.05)
    model(batch)
    model.eval()
    with torch.no_grad():
        before = model(batch)
    save_model(tmp_path, model, {})
    loaded, _ = load_model(tmp_path, fmap)
    with torch.no_grad():
        assert torch.equal(loaded(batch), before)


def test_a_model_describes_itself_as_its_store_rebuilds_it(synthetic, tmp_path) -> None:
    """A plain and a FINED model say what they are through ``describe()`` (all the store and
    export ask of them): each reloads with the same description, the FINED one with its
    KB's and adaptor's settings."""
    fmap = synthetic[0]
    adaptor = AdaptorConfig()
    kb = KnowledgeBase(fmap, KBConfig(slots=3, dim=8), known_through=0)
    plain = build("deepfm", fmap)
    fined = FinedModel(build("deepfm", fmap, knowledge_tokens=adaptor.tokens), kb, adaptor)
    for name, model in [("plain", plain), ("fined", fined)]:
        (tmp_path / name).mkdir()
        save_model(tmp_path / name, model, {})
        loaded, _ = load_model(tmp_path / name, fmap)
        assert loaded.describe() == model.describe()
    assert plain.describe().knowledge is None
    assert fined.describe().knowledge == KnowledgeDescription(kb.config, 0, adaptor)


# -- configuration errors --------------------------------------------------------------------
def test_unknown_model_name(synthetic) -> None:
    with pytest.raises(FinedError, match="unknown model 'dnc'"):
        build_model("dnc", synthetic[0])


@pytest.mark.parametrize(
    ("name", "overrides", "key"),
    [
        ("dcn", {"cross_layers": -1}, "cross_layers"),
        ("dcn", {"version": "v3"}, "version"),
        ("pnn", {"product": "cosine"}, "product"),
        ("xdeepfm", {"cin_layers": [3, 4], "cin_split_half": True}, "cin_layers"),
        ("autoint", {"attention_dim": 15, "num_heads": 2}, "attention_dim"),
        ("din", {"attention_activation": "swish"}, "attention_activation"),
        ("deepfm", {"dropout": 1.5}, "dropout"),
        ("dcn", {"cross_layer": 2}, "cross_layer"),  # a typo is an unknown key, not ignored
    ],
)
def test_bad_hyper_parameter_names_the_key(name, overrides, key, synthetic) -> None:
    with pytest.raises(FinedError, match=key):
        build_model(name, synthetic[0], overrides)


def test_din_needs_behaviour_sequences(synthetic, movielens) -> None:
    with pytest.raises(FinedError, match="behaviour sequence"):
        build_model("din", synthetic[0])
    with pytest.raises(FinedError, match="not a sequence feature"):
        build_model("din", movielens[0], {"behaviour": {"hist_clicks": "item_id"}})
    with pytest.raises(FinedError, match="does not share its vocabulary"):
        build_model("din", movielens[0], {"behaviour": {"hist_items": "genre"}})


def test_din_infers_behaviour_pairs(movielens) -> None:
    model = build_model("din", movielens[0], SMALL)
    # User histories pair with the item features of their vocabulary; an item's own genre
    # list describes the target and stays a pooled field.
    assert model.raw_sequences == ("hist_items", "hist_genres")
    ids = [f.name for f in movielens[0].id_features]
    assert model.targets.tolist() == [ids.index("item_id"), ids.index("genre")]
    assert "genres" in model.embedding.pooled


SMALL_WARM = {"embedding_dim": 8, "mlp": [32]}


@pytest.mark.parametrize("name", ["deepfm", "dcn", "din"])
def test_warm_start_with_knowledge_tokens_preserves_the_function(
    name, movielens, synthetic
) -> None:
    """Copied into a model with 2 more (knowledge) fields, the warm-up model computes the same
    function while the knowledge tokens are zero: the new inputs start with no effect. (PNN,
    xDeepFM and AutoInt mix the new fields into every product or attention score: they get a
    partial warm start only.)"""
    fmap, batch = shapes_data(name, movielens, synthetic)
    torch.manual_seed(0)
    old = build_model(name, fmap, SMALL_WARM).eval()
    new = build_model(name, fmap, SMALL_WARM, knowledge_tokens=2).eval()
    assert load_overlapping(new, old.state_dict()) == len(old.state_dict())
    zeros = torch.zeros(len(batch), 2, SMALL_WARM["embedding_dim"])
    with torch.no_grad():
        fields = new.embedding(batch)
        got = new.interact(torch.cat([fields, zeros], 1), batch)
        assert torch.allclose(got, old(batch), atol=1e-5)
    # Non-zero tokens give the zero-started weights a gradient: they can learn to use them.
    tokens = torch.full_like(zeros, 0.5)
    new.interact(torch.cat([new.embedding(batch), tokens], 1), batch).sum().backward()
    before = old.state_dict()
    widened = [
        (p.grad, before[n].shape)
        for n, p in new.named_parameters()
        if n in before and before[n].shape != p.shape
    ]
    assert widened
    new_part = []
    for grad, shape in widened:
        mask = torch.ones_like(grad, dtype=torch.bool)
        mask[tuple(slice(0, k) for k in shape)] = False
        new_part.append(grad[mask].abs().sum())
    assert sum(new_part) > 0

"""The knowledge base's parts against closed forms: Hard Concrete gates, the VIB KL, and the
MI estimators on correlated Gaussians (true MI = -0.5 * d * log(1 - rho^2))."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.knowledge.adaptor import AdaptorConfig, KnowledgeAdaptor
from fined.knowledge.attention import FieldAttentionBlock
from fined.knowledge.encoder import KnowledgeEncoder
from fined.knowledge.fined_model import FinedModel
from fined.knowledge.gates import HardConcreteGate
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase
from fined.knowledge.regularizers import (
    CLUB,
    HSIC,
    SlotMI,
    gaussian_kl,
    gaussian_mi,
)
from fined.models import build_model
from fined.models.layers import short_softmax, short_softmax_
from fined.models.trainable import embedding_penalty


def test_hard_concrete_closed_forms() -> None:
    gate = HardConcreteGate()
    zero = torch.zeros(1)
    assert gate.expected_l0(zero).item() == pytest.approx(0.832, abs=5e-4)  # P(z != 0)
    gate.eval()
    assert gate(zero).item() == pytest.approx(0.5)  # sigmoid(0) * 1.2 - 0.1
    assert gate(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]  # clipped: exactly 0 or 1


def test_hard_concrete_samples_match_the_expected_l0() -> None:
    torch.manual_seed(0)
    gate = HardConcreteGate().train()
    for la in (-2.0, 0.0, 1.5):
        z = gate(torch.full((200_000,), la))
        assert ((z >= 0) & (z <= 1)).all()
        assert (z == 0).any() and (z == 1).any()  # the stretch makes exact zeros and ones
        assert (z > 0).float().mean().item() == pytest.approx(
            gate.expected_l0(torch.tensor(la)).item(), abs=0.005
        )


def test_vib_kl_is_the_closed_form_for_diagonal_gaussians() -> None:
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-5)
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0


D = 4


def correlated(rho: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, D)
    return x, rho * x + math.sqrt(1 - rho * rho) * torch.randn(n, D)


def true_gaussian_mi(rho: float, dim: int) -> float:
    """I(X; Y) of standard Gaussians correlated by ``rho`` in each of ``dim`` dimensions."""
    return -0.5 * dim * math.log(1.0 - rho * rho)


def club_estimate(rho: float) -> float:
    torch.manual_seed(1)
    club = CLUB(D, D, hidden=32)
    opt = torch.optim.Adam(club.parameters(), lr=5e-3)
    for _ in range(400):  # train q(y | x) on its own, as in the KB's alternation
        opt.zero_grad()
        club.learning_loss(*correlated(rho, 512)).backward()
        opt.step()
    with torch.no_grad():
        return sum(float(club(*correlated(rho, 4096))) for _ in range(5)) / 5


def test_club_orders_correlations_and_bounds_the_true_mi() -> None:
    """Measured (d = 4): rho 0 -> 0.00, rho 0.5 -> 1.37 (true MI 0.58; with the exact
    conditional CLUB gives d*rho^2/(1-rho^2) = 1.33), rho 0.9 -> 8.7 (true 3.32; the
    q-network's log-variance is bounded by tanh, so the bound here is d*rho^2*e = 8.8)."""
    est = {rho: club_estimate(rho) for rho in (0.0, 0.5, 0.9)}
    assert est[0.0] < est[0.5] < est[0.9]
    assert abs(est[0.0]) < 0.02
    assert est[0.5] == pytest.approx(D * 0.25 / 0.75, rel=0.1)
    assert est[0.9] == pytest.approx(D * 0.81 * math.e, rel=0.1)
    for rho in (0.5, 0.9):
        assert est[rho] >= true_gaussian_mi(rho, D) - 0.05  # an upper bound, up to noise


def test_hsic_orders_correlations_and_vanishes_for_independence() -> None:
    """Measured (512 rows, d = 4): rho 0 -> 0.0003, 0.5 -> 0.005, 0.9 -> 0.017."""
    torch.manual_seed(2)
    hsic = HSIC(max_rows=512)
    est = {
        rho: sum(float(hsic(*correlated(rho, 512))) for _ in range(5)) / 5
        for rho in (0.0, 0.5, 0.9)
    }
    assert est[0.0] < est[0.5] < est[0.9]
    assert est[0.0] < 0.001
    assert est[0.5] == pytest.approx(0.005, rel=0.25) and est[0.9] == pytest.approx(0.017, rel=0.25)


def test_gaussian_mi_reporting_estimate_is_close_to_the_truth() -> None:
    torch.manual_seed(3)
    for rho in (0.0, 0.5, 0.9):
        assert gaussian_mi(*correlated(rho, 20_000)) == pytest.approx(
            true_gaussian_mi(rho, D), abs=0.02
        )


def test_slot_mi_pairs_different_slots_and_is_differentiable() -> None:
    torch.manual_seed(4)
    for estimator in ("club", "hsic"):
        mi = SlotMI(estimator, slots=4, dim=D, pairs=5)
        first, second = mi._pairs(torch.device("cpu"))
        assert (first != second).all()
        v = torch.randn(64, 4, D, requires_grad=True)
        mi(v).backward()
        assert v.grad is not None and v.grad.abs().sum() > 0


@pytest.mark.parametrize("length", [12, 16, 39])  # its own passes, and PyTorch's kernel
def test_short_softmax_is_the_softmax_with_its_gradient(length: int) -> None:
    torch.manual_seed(0)
    scores = torch.randn(64, 2, 12, length) * 30  # large scores: the max shift must hold
    mine, theirs = scores.clone().requires_grad_(), scores.clone().requires_grad_()
    out, expected = short_softmax(mine), torch.softmax(theirs, -1)
    assert torch.allclose(out, expected, atol=1e-6)
    weights = torch.randn_like(scores)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(mine.grad, theirs.grad, atol=1e-5)
    assert torch.autograd.gradcheck(
        short_softmax, torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    )


def test_field_attention_block_is_a_pre_norm_transformer_layer() -> None:
    """Same weights, same outputs as PyTorch's layer (norm first, ReLU, no dropout): the
    hand-written block changes the speed, not the function."""
    torch.manual_seed(0)
    block = FieldAttentionBlock(16, 2, 32).eval()
    reference = torch.nn.TransformerEncoderLayer(
        16, 2, 32, dropout=0.0, batch_first=True, norm_first=True
    ).eval()
    with torch.no_grad():
        reference.self_attn.in_proj_weight.copy_(block.qkv.weight)
        reference.self_attn.in_proj_bias.copy_(block.qkv.bias)
        reference.self_attn.out_proj.weight.copy_(block.out.weight)
        reference.self_attn.out_proj.bias.copy_(block.out.bias)
        norms = ((block.attention_norm, reference.norm1), (block.ffn_norm, reference.norm2))
        for ours, theirs in norms:  # non-trivial norm weights, the same on both sides
            ours.weight.add_(torch.randn(16) * 0.1)
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
        reference.linear1.load_state_dict(block.ffn[0].state_dict())
        reference.linear2.load_state_dict(block.ffn[2].state_dict())
        x = torch.randn(32, 12, 16)
        assert torch.allclose(block(x), reference(x), atol=1e-5)


def test_kb_distillation_pulls_towards_the_kbs_own_predictions(tmp_path) -> None:
    """The adaptor's ``kb_distill`` term is the BCE between the model's logits and the frozen
    KB's stage-1 click probabilities for the same rows, times its weight and times how far
    the KB has earned its place (``kb_earned``: 0 at the start, nothing pulls)."""
    prepare(PrepareConfig(dataset="synthetic", options={"n_rows": 2000, "n_periods": 2}), tmp_path)
    store = PeriodStore(tmp_path)
    torch.manual_seed(0)
    kb = KnowledgeBase(store.feature_map, KBConfig(slots=3), known_through=0).eval()
    adaptor = AdaptorConfig(kb_distill=0.3)
    net = FinedModel(build_model("deepfm", store.feature_map, {}, knowledge_tokens=2), kb, adaptor)
    batch = store.load([1]).slice(0, 256)
    net.train()
    out = net.forward_train(batch)
    assert float(net.own_loss(batch, out).value) == 0.0  # the KB has earned nothing yet
    net.kb_earned.fill_(0.5)
    out = net.forward_train(batch)
    logits = out.logits
    with torch.no_grad():
        expected = 0.15 * F.binary_cross_entropy_with_logits(logits, torch.sigmoid(kb(batch)))
    assert torch.allclose(net.own_loss(batch, out).value, expected, atol=1e-6)
    assert net.own_loss(batch, out).value.requires_grad  # it trains the model
    net.eval()
    out = net.forward_train(batch)
    assert float(net.own_loss(batch, out).value) == 0.0  # evaluation adds nothing


def test_encoder_is_an_mlp_over_pattern_and_slot() -> None:
    """The encoder's first layer takes the slot's share once per call: the result must equal
    the MLP applied to ``[mean, second order, slot]`` concatenated for every row."""
    torch.manual_seed(0)
    encoder = KnowledgeEncoder(8, slots=3, hidden=[16, 12]).eval()
    fields, z = torch.randn(5, 4, 8), (torch.rand(5, 4, 3) > 0.5).float()
    summed = torch.einsum("bfk,bfd->bkd", z, fields)
    mean = summed / z.sum(1).unsqueeze(-1).clamp_min(1e-6)
    second = 0.5 * (summed.pow(2) - torch.einsum("bfk,bfd->bkd", z, fields.pow(2)))
    inputs = torch.cat([mean, second, encoder.slot.expand(5, -1, -1)], -1)
    expected = encoder.mu(encoder.body(inputs))
    assert torch.allclose(encoder.frozen_means(fields, z), expected, atol=1e-6)
    assert torch.allclose(encoder(fields, z)[1], expected, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_frozen_attention_block_is_the_block(heads: int) -> None:
    torch.manual_seed(heads)
    block = FieldAttentionBlock(16, heads, 32)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.4)  # away from the init: every part must matter
    x = torch.randn(64, 12, 16)
    with torch.no_grad():
        assert torch.allclose(block.forward_frozen_(x.clone()), block(x), atol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [{}, {"attention_layers": 2, "heads": 4, "encoder_hidden": [32, 24]}, {"dense_gates": True}],
)
def test_frozen_query_is_the_evaluation_mode_encoding(tmp_path, settings: dict) -> None:
    """``KnowledgeBase.query`` (the fast path) gives what ``encode`` gives in evaluation mode,
    for a KB whose gates are partly fractional (so the attention shapes them) and with ids
    beyond the KB's vocabularies (mapped to OOV on both paths)."""
    prepare(PrepareConfig(dataset="synthetic", options={"n_rows": 3000, "n_periods": 3}), tmp_path)
    store = PeriodStore(tmp_path)
    torch.manual_seed(0)
    kb = KnowledgeBase(store.feature_map, KBConfig(slots=5, **settings), known_through=0)
    with torch.no_grad():
        for name, p in kb.named_parameters():
            if not name.startswith("mi."):
                p.normal_(0.0, 0.5 if p.dim() > 1 else 0.2)
        kb.extractor.gate_logits.weight.normal_(0.0, 40.0)  # large shifts: gates vary by row
    batch = store.load([2]).slice(0, 512)
    v, z = kb.query(batch)
    kb.eval()
    expected = kb.encode(batch)
    assert torch.allclose(z, expected.z, atol=1e-5)
    assert torch.allclose(v, expected.mu, atol=1e-4, rtol=1e-4)
    if not settings.get("dense_gates"):
        fractional = ((z > 0) & (z < 1)).float().mean()
        assert 0.05 < fractional < 0.95  # the test exercises instance-wise gates
        assert (z.std(0) > 0).any()


def test_adaptor_is_multi_head_attention_over_the_knowledge() -> None:
    """The adaptor scores the knowledge in its own space; it must equal attention with the
    K keys and values projected explicitly (biases included), and train the same way."""
    torch.manual_seed(0)
    adaptor = KnowledgeAdaptor(num_fields=5, dim=8, kb_dim=6, tokens=3, attention_dim=4)
    for p in adaptor.parameters():
        torch.nn.init.normal_(p, std=0.5)
    fields, knowledge = torch.randn(7, 5, 8), torch.randn(7, 9, 6)
    q = adaptor.query(fields.flatten(1))
    keys = adaptor.key(knowledge).view(7, 9, 3, 4).transpose(1, 2)  # [B, m, K, a]
    values = adaptor.value(knowledge).view(7, 9, 3, 8).transpose(1, 2)  # [B, m, K, d]
    scores = (keys @ q.view(7, 3, 4, 1)).squeeze(-1) / 2.0
    expected = (torch.softmax(scores, -1).unsqueeze(2) @ values).squeeze(2)
    expected = expected * (torch.sigmoid(adaptor.gate(q)) * adaptor.opening).unsqueeze(-1)
    tokens = adaptor(fields, knowledge)
    assert torch.allclose(tokens, expected, atol=1e-5)
    weights = [adaptor.query.weight, adaptor.key.weight, adaptor.value.weight, adaptor.opening]
    grads = torch.autograd.grad(tokens.square().sum(), weights)
    reference = torch.autograd.grad(expected.square().sum(), weights)
    for g, r in zip(grads, reference, strict=True):
        assert torch.allclose(g, r, atol=1e-4)


def test_frozen_softmax_is_the_softmax_for_small_and_large_scores() -> None:
    """In place; the shift by the row maximum is skipped only where exp cannot overflow."""
    torch.manual_seed(0)
    for scale, length in [(1.0, 12), (60.0, 12), (500.0, 12), (500.0, 20)]:  # safe, near, far
        scores = torch.randn(64, 2, 12, length) * scale
        expected = torch.softmax(scores, -1)
        result = short_softmax_(scores)
        assert result.data_ptr() == scores.data_ptr()
        assert torch.allclose(result, expected, atol=1e-6) and not result.isnan().any()
    assert short_softmax_(torch.empty(0, 12)).shape == (0, 12)


def test_a_fine_tuned_kb_is_queried_like_a_frozen_one_in_evaluation(tmp_path) -> None:
    """Training a fine-tuned KB differentiates through ``encode``; evaluation takes the fast
    frozen path, which must give the same predictions."""
    prepare(PrepareConfig(dataset="synthetic", options={"n_rows": 2000, "n_periods": 2}), tmp_path)
    store = PeriodStore(tmp_path)
    torch.manual_seed(0)
    kb = KnowledgeBase(store.feature_map, KBConfig(slots=3), known_through=0)
    adaptor = AdaptorConfig(finetune_lr=1e-3)
    net = FinedModel(build_model("deepfm", store.feature_map, {}, knowledge_tokens=2), kb, adaptor)
    batch = store.load([1]).slice(0, 256)
    net.train()
    assert net.knowledge(batch)[0].requires_grad  # trained through the KB
    net.eval()
    with torch.no_grad():
        fields = net.base.embedding(batch)
        tokens = net.adaptor(fields, kb.encode(batch).mu)
        expected = net.base.interact(torch.cat([fields, tokens], 1), batch)
        assert torch.allclose(net(batch), expected, atol=1e-5)


def test_kb_takes_the_trainers_embedding_penalty(tmp_path) -> None:
    """``train.embedding_l2`` applies to a KB build too: the squared norm of the KB's own
    looked-up field vectors per row (before, the trainer found no hook and skipped it)."""
    prepare(PrepareConfig(dataset="synthetic", options={"n_rows": 2000, "n_periods": 2}), tmp_path)
    store = PeriodStore(tmp_path)
    kb = KnowledgeBase(store.feature_map, KBConfig(slots=3), known_through=0)
    batch = store.load([0]).slice(0, 128)
    out = kb.forward_train(batch)
    fields = kb.extractor.embedding(kb._known(batch))
    assert torch.allclose(embedding_penalty(out.fields), fields.pow(2).sum() / 128)
    assert embedding_penalty(out.fields).requires_grad


def test_the_slot_mi_gradient_is_the_same_on_every_call() -> None:
    """The pairs' vectors are gathered all at once (no pair is read on the host); their
    gradient must add up in a fixed order: with ``v[:, pairs]`` (an accumulating put on the
    CPU) the same seed gave other gradients, and a KB build other gates, run to run."""
    mi = SlotMI("club", slots=12, dim=16, pairs=32)
    v = torch.randn(4096, 12, 16, requires_grad=True)
    grads = []
    for _ in range(4):
        torch.manual_seed(3)
        (grad,) = torch.autograd.grad(mi(v), v)
        grads.append(grad)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])

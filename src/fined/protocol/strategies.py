"""What each strategy trains on at period t, how its model starts, and what it keeps.

Every strategy sees the same periods, models and seeds. At period t it builds its model
(warm-started from its own model of t-1, or from the shared warm-up model trained on the KB's
periods when t is the first step), picks its training rows, may wrap the model for training
(``kd``), and reports the bytes of the past it keeps. Selection is always on P_t's held-out
slice and happens in the runner, the same for all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fined.artifacts.kb_store import kb_bytes
from fined.data.batch import Batch
from fined.knowledge.fined_model import FinedModel
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.protocol.config import StrategySpec
from fined.protocol.data import ProtocolData, batch_bytes
from fined.protocol.distill import Distilled

if TYPE_CHECKING:
    from fined.protocol.runner import Runner


def load_overlapping(module: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Warm-start ``module`` from a model with fewer inputs (a base model gaining knowledge
    tokens): equal shapes are copied; a larger tensor gets the old one in its leading block
    and zeros elsewhere, so the new inputs (the tokens) start with no effect; the rest keeps
    its initialization. Returns how many tensors were copied whole or in part."""
    copied = 0
    own = module.state_dict()
    with torch.no_grad():
        for name, target in own.items():
            source = state.get(name)
            if source is None or source.dim() != target.dim():
                continue
            if source.shape == target.shape:
                target.copy_(source)
            elif all(s <= t for s, t in zip(source.shape, target.shape, strict=True)):
                target.zero_()
                target[tuple(slice(0, s) for s in source.shape)].copy_(source)
            else:
                continue
            copied += 1
    return copied


class Strategy:
    """``incremental``: warm start, train on the current period only (the forgetting baseline)."""

    def __init__(self, spec: StrategySpec, run: Runner, model: str, seed: int) -> None:
        self.spec, self.run, self.model, self.seed = spec, run, model, seed
        self.data: ProtocolData = run.data

    def fresh(self, t: int) -> nn.Module:
        return self.run.base_model(self.model)

    def build(self, t: int, previous: dict[str, torch.Tensor], from_warmup: bool) -> nn.Module:
        net = self.fresh(t)
        if self.spec.warm:
            net.load_state_dict(previous)
        return net

    def periods(self, t: int) -> list[int]:
        return [t]

    def rows(self, t: int) -> Batch:
        return self.data.train(self.periods(t), t)

    def trainable(self, net: nn.Module) -> nn.Module:
        return net

    def bytes_kept(self, net: nn.Module, t: int) -> int:
        return 0

    def after_period(self, net: nn.Module, t: int) -> None:
        pass


class Window(Strategy):
    """``window``: train on the last w periods (retrained from scratch by default)."""

    def periods(self, t: int) -> list[int]:
        return list(range(max(0, t - self.spec.window + 1), t + 1))

    def bytes_kept(self, net: nn.Module, t: int) -> int:
        past = self.periods(t)[:-1]
        return batch_bytes(self.data.train(past, t)) if past else 0


class Full(Window):
    """``full``: train on every period so far (the storage-hungry upper reference)."""

    def periods(self, t: int) -> list[int]:
        return list(range(t + 1))


class Replay(Strategy):
    """``replay``: the current period plus a reservoir sample of past rows, within a byte
    budget (by default the size of the knowledge base)."""

    _kept: tuple[int, Batch] | None = None  # (t, the reservoir at t): trained on, then sized

    def reservoir(self, t: int) -> Batch:
        if self._kept is None or self._kept[0] != t:
            one = self.data.train([t], t)
            row_bytes = batch_bytes(one) / max(len(one), 1)
            budget = self.spec.budget_bytes or self.run.default_kb_bytes
            rows = int(budget // row_bytes)
            self._kept = (t, self.data.reservoir(list(range(t)), t, rows, self.seed))
        return self._kept[1]

    def rows(self, t: int) -> Batch:
        return Batch.concat([self.data.train([t], t), self.reservoir(t)])

    def bytes_kept(self, net: nn.Module, t: int) -> int:
        return batch_bytes(self.reservoir(t))


class KnowledgeDistillation(Strategy):
    """``kd``: warm start, and a distillation term towards the model of t-1 (IncCTR-style)."""

    def trainable(self, net: nn.Module) -> nn.Module:
        return Distilled(net, net, self.spec.kd_weight)  # net still equals the model of t-1


class Fined(Strategy):
    """``fined``: the base model fed by a frozen KB of the first s periods."""

    def kb(self, t: int) -> KnowledgeBase:
        return self.run.knowledge_base(self.spec, self.seed)

    def fresh(self, t: int) -> nn.Module:
        adaptor = self.run.config.adaptor_config(self.spec)
        return FinedModel(self.run.base_model(self.model, adaptor.tokens), self.kb(t), adaptor)

    def build(self, t: int, previous: dict[str, torch.Tensor], from_warmup: bool) -> nn.Module:
        net = self.fresh(t)
        if from_warmup:  # the shared warm-up model has no knowledge tokens yet
            if self.spec.warmup_base:
                load_overlapping(net.base, previous)
        elif self.spec.warm:
            net.load_state_dict(previous)
        return net

    def bytes_kept(self, net: nn.Module, t: int) -> int:
        return kb_bytes(net.kb)  # the KB the model was trained with


class FinedStreaming(Fined):
    """``fined_streaming``: after each period the KB absorbs it (a few epochs on its rows,
    distilled towards its previous snapshot); its size stays fixed and no raw row is kept."""

    def kb(self, t: int) -> KnowledgeBase:
        kb = self.run.knowledge_base(self.spec, self.seed)
        # The KB inside the model of t-1 has absorbed the periods through t-1.
        kb.set_known_through(max(t - 1, kb.known_through))
        return kb

    def after_period(self, net: nn.Module, t: int) -> None:
        from fined.train.trainer import Trainer

        kb = net.kb
        student = Distilled(kb, kb, self.spec.absorb_weight)  # the teacher: a copy taken now
        kb.set_known_through(t)
        kb.requires_grad_(True)
        epochs = self.spec.absorb_epochs
        config = self.run.config.kb_train_config(
            epochs=epochs,
            patience=epochs,
            select_after=0,
            seed=self.seed * 1000 + t,
            progress=False,
        )
        Trainer(student, config).fit(self.data.train([t], t), self.data.holdout([t], t))
        kb.requires_grad_(net.adaptor_config.finetune_lr is not None)
        kb.eval()


class FinedRebuild(Fined):
    """``fined_rebuild``: the reference for streaming: after each period the KB is rebuilt
    from all the raw past (which must therefore be kept), and swapped in under the adaptor."""

    def kb(self, t: int) -> KnowledgeBase:
        return self.run.knowledge_base(self.spec, self.seed, through=t - 1)

    def build(self, t: int, previous: dict[str, torch.Tensor], from_warmup: bool) -> nn.Module:
        if from_warmup:
            return super().build(t, previous, from_warmup)
        net = self.fresh(t)
        own = {k: v for k, v in previous.items() if not k.startswith("kb.")}
        net.load_state_dict({**net.state_dict(), **own})  # the new KB, the rest warm
        return net

    def bytes_kept(self, net: nn.Module, t: int) -> int:
        return kb_bytes(net.kb) + batch_bytes(self.data.train(list(range(t)), t))


STRATEGIES: dict[str, type[Strategy]] = {
    "incremental": Strategy,
    "window": Window,
    "full": Full,
    "replay": Replay,
    "kd": KnowledgeDistillation,
    "fined": Fined,
    "fined_streaming": FinedStreaming,
    "fined_rebuild": FinedRebuild,
}

"""One training step, and the same step replayed as a CUDA graph.

``TrainStep`` is the step the trainer takes for every batch: the model's training pass, its
auxiliary step, a step of each of its auxiliary groups' optimizers, its own loss, the click
BCE and embedding penalty, backward, clipping, the optimizer's step, and the epoch's sums,
all on the device. Nothing in it reads a value back
to the host or branches on one (``tests/test_step.py`` runs it on PyTorch's ``meta`` device,
where any such read fails), so a GPU never waits inside a step.

``GraphedStep`` (``train.cuda_graphs``) captures that step once a fit as a CUDA graph and
replays it for every full batch: one launch instead of hundreds, which at a few milliseconds a
step is most of the time of a small CTR model on a large GPU. The batch is copied into the
graph's fixed input tensors first; a last, shorter batch takes the same step uncaptured, so
the results are those of eager steps up to floating-point order. Capture follows PyTorch's
whole-network recipe (``torch.cuda.graphs``): warm-up steps on a side stream (lazy
allocations, the optimizer's state, library handles), gradients set to None, then capture.
The learning rate is read when the graph is captured: the step is captured again when the
rate has decayed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from fined.data.batch import Batch
from fined.errors import FinedError
from fined.models.trainable import Forward, Trainable, embedding_penalty
from fined.train.config import TrainConfig
from fined.train.optim import AuxiliaryOptimizers, clip_gradients, sparse_parameters

WARMUP_STEPS = 3  # eager steps before capture, as in PyTorch's whole-network example


@dataclass
class EpochSums:
    """The epoch's loss and the model's own terms, each summed over rows on the device in
    float64 (what Python floats would give) and read once, at the end of the epoch."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: int = 0
    steps: torch.Tensor = field(init=False)  # steps taken this epoch
    first_nonfinite: torch.Tensor = field(init=False)  # the first with a non-finite loss, or -1

    def __post_init__(self) -> None:
        self.steps = torch.zeros((), dtype=torch.int64, device=self.loss.device)
        self.first_nonfinite = torch.full((), -1, dtype=torch.int64, device=self.loss.device)

    def reset(self) -> None:
        """Zero, in place: a captured step adds to these very tensors."""
        self.loss.zero_()
        for term in self.terms.values():
            term.zero_()
        self.steps.zero_()
        self.first_nonfinite.fill_(-1)
        self.rows = 0

    def count(self, loss: torch.Tensor) -> None:
        """One more step, remembering the first whose loss was not finite (on the device)."""
        first = (self.first_nonfinite < 0) & ~torch.isfinite(loss)
        self.first_nonfinite.copy_(torch.where(first, self.steps, self.first_nonfinite))
        self.steps.add_(1)

    def means(self) -> tuple[float, dict[str, float]]:
        rows = max(self.rows, 1)
        return float(self.loss) / rows, {k: float(v) / rows for k, v in self.terms.items()}


class TrainingPass(nn.Module):
    """The model's ``forward_train`` as a module's forward, so that DDP wraps the training
    pass (it only hooks ``forward``); the parameters are the model's own."""

    def __init__(self, model: Trainable) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Forward:
        return self.model.forward_train(batch)


class TrainStep:
    """The trainer's step for one batch (see the module's docstring)."""

    def __init__(
        self,
        net: nn.Module,
        model: Trainable,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        autocast: Callable[[], AbstractContextManager],
        sums: EpochSums,
        auxiliary: AuxiliaryOptimizers | None = None,
    ) -> None:
        """``net``: what runs the training pass (``TrainingPass(model)``, or a DDP wrapper
        of it); ``auxiliary``: the optimizers of the model's auxiliary groups (None: new
        ones)."""
        self.net, self.model, self.optimizer = net, model, optimizer
        self.config, self.autocast, self.sums = config, autocast, sums
        if auxiliary is None:
            auxiliary = AuxiliaryOptimizers(model.auxiliary_groups())
        self.auxiliary = auxiliary
        self.params = list(model.parameters())
        self.sparse = bool(sparse_parameters(model))  # torch's clip_grad_norm_ takes dense only

    def __call__(self, batch: Batch) -> None:
        c, model = self.config, self.model
        with self.autocast():
            out: Forward = self.net(batch)
            model.auxiliary_step(out)
            self.auxiliary.step(out)
            own = model.own_loss(batch, out)
        logits = out.logits.float()  # the loss in fp32, whatever the precision
        loss = F.binary_cross_entropy_with_logits(logits, batch.label) + own.value.float()
        if c.embedding_l2 > 0:
            if out.fields is None:
                raise FinedError(
                    f"train.embedding_l2 is set but {type(model).__name__} has no "
                    "embedding penalty (its training pass gives no field vectors)"
                )
            loss = loss + c.embedding_l2 * embedding_penalty(out.fields.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip and self.sparse:
            clip_gradients(self.params, c.grad_clip)
        elif c.grad_clip:
            nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        n, loss = len(batch), loss.detach()
        self.sums.count(loss)
        self.sums.loss.add_(loss.double() * n)
        for k, v in own.terms.items():
            if k in self.sums.terms:  # in place: a captured step adds to the same tensors
                self.sums.terms[k].add_(v.double() * n)
            else:
                self.sums.terms[k] = v.double() * n


def graph_blocker(model: Trainable, device: torch.device, distributed: bool) -> str | None:
    """Why the step of ``model`` cannot be captured as a CUDA graph here, or None."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if distributed:
        return "several ranks (DDP's gradient hooks are not captured)"
    if sparse_parameters(model):
        return "sparse embedding gradients (their size changes each step)"
    if model.auxiliary_groups():
        return f"{type(model).__name__} trains parameters apart, with optimizers of their own"
    return None


class GraphedStep:
    """``TrainStep`` replayed as a CUDA graph for every batch of ``rows`` rows, for one fit."""

    def __init__(self, step: TrainStep, rows: int) -> None:
        self.step, self.rows = step, rows
        # PyTorch's optimizers refuse capture unless told they may be captured (their step
        # counts then live on the device, as the fused Adam's already do).
        for group in step.optimizer.param_groups:
            group["capturable"] = True
        self.warmed = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: Batch | None = None  # the graph reads its batch from these tensors
        self.rates: list[float] = []  # the learning rates the graph was captured with
        self.grads: list[torch.Tensor | None] = []  # what the graph writes the gradients to

    def _rates(self) -> list[float]:
        return [float(g["lr"]) for g in self.step.optimizer.param_groups]

    def __call__(self, batch: Batch) -> None:
        if len(batch) != self.rows:  # a last, shorter batch: the same step, not captured
            self.step(batch)
            return
        if self.warmed < WARMUP_STEPS:
            device = batch.device
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                self.step(batch)
            torch.cuda.current_stream(device).wait_stream(side)
            self.warmed += 1
            return
        if self.graph is None or self._rates() != self.rates:  # the rate is baked in: anew
            self._capture(batch)
        else:
            assert self.inputs is not None
            self.inputs.copy_(batch)
        self.graph.replay()  # type: ignore[union-attr]

    def _capture(self, batch: Batch) -> None:
        self.graph = None  # the previous graph's memory goes back first
        self.inputs, self.rates = batch.clone(), self._rates()
        graph = torch.cuda.CUDAGraph()
        self.step.optimizer.zero_grad(set_to_none=True)  # gradients allocated by the graph
        with torch.cuda.graph(graph):
            self.step(self.inputs)
        # Held, so that an eager step in between (which sets gradients to None) never hands
        # the graph's gradient memory back.
        self.grads = [p.grad for p in self.step.params]
        self.graph = graph

"""The trainer: fits any model that maps a ``Batch`` to click logits.

It knows nothing of any one model. A model may add terms to the loss by defining
``extra_loss(batch, logits) -> Tensor`` (the knowledge base and distillation do) and report
them in a ``loss_terms`` dict, choose what the optimizer updates with
``optimizer_parameters()`` (parameters or parameter groups), and gets an L2 penalty on its
looked-up embeddings through ``embedding_l2()``.

Selection is on the validation set only: early stopping and learning-rate decay watch the
validation AUC, the best epoch's weights are restored at the end, and a test set is never
seen here. Every epoch ends with an atomic checkpoint (weights, optimizer, scheduler, RNG,
history), so ``fit(..., resume=True)`` after a crash ends with exactly the result of an
uninterrupted run with the same seed.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from fined.data.loader import Batch, BatchLoader
from fined.data.schema import StrictModel
from fined.errors import FinedError
from fined.io import atomic_write_text
from fined.train import distributed
from fined.train.checkpoint import load_checkpoint, save_checkpoint
from fined.train.metrics import score_metrics
from fined.train.optim import build_optimizer, clip_gradients, sparse_parameters

LAST = "last.safetensors"


class TrainConfig(StrictModel):
    """Trainer settings (the ``train:`` section of a config)."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    embedding_l2: float = Field(0.0, ge=0)  # on the embeddings looked up in each batch
    batch_size: int = Field(4096, ge=1)
    eval_batch_size: int = Field(16384, ge=1)
    epochs: int = Field(50, ge=1)  # at most; early stopping usually ends sooner
    patience: int = Field(2, ge=1)  # epochs without validation improvement before stopping
    lr_patience: int = Field(1, ge=0)  # epochs without improvement before the lr decays
    lr_factor: float = Field(0.1, gt=0, le=1)
    min_lr: float = Field(1e-6, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)
    monitor: Literal["auc", "logloss"] = "auc"
    select_after: int = Field(0, ge=0)  # epochs before this one are never selected or counted
    seed: int = 1
    deterministic: bool = False
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    tensorboard: bool = False


@dataclass
class FitResult:
    best_epoch: int
    best: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    train_samples_per_second: float = 0.0


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


class Trainer:
    """Fits, evaluates and predicts with one model."""

    def __init__(self, model: nn.Module, config: TrainConfig | None = None) -> None:
        self.model = model
        self.config = config or TrainConfig()
        self.dist = distributed.context()  # several ranks under torchrun, else one
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, data: Batch) -> np.ndarray:
        """Click probabilities for every row, in order."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for batch in BatchLoader(data, self.config.eval_batch_size):
            out.append(torch.sigmoid(self.model(batch)).float())
        self.model.train(was_training)
        return torch.cat(out).numpy() if out else np.empty(0, dtype=np.float32)

    def evaluate(self, data: Batch) -> dict[str, float]:
        """Metrics of ``data``; with several ranks, of every rank's share together."""
        prob = torch.from_numpy(self.predict(data))
        label, group = data.label, data.group
        if self.dist.active:  # every rank scores its share; the metrics need them all
            prob, label = distributed.gather(prob), distributed.gather(label)
            group = distributed.gather(group) if group is not None else None
        metrics = score_metrics(
            label.numpy(), prob.numpy(), group.numpy() if group is not None else None
        )
        return distributed.broadcast_metrics(metrics)

    # -- training --------------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        chooser = getattr(self.model, "optimizer_parameters", None)
        params = chooser() if chooser else [p for p in self.model.parameters() if p.requires_grad]
        sparse = sparse_parameters(self.model)
        return build_optimizer(params, c.optimizer, c.lr, c.weight_decay, sparse)

    def _score(self, metrics: dict[str, float]) -> float:
        """Higher is better."""
        value = metrics[self.config.monitor]
        value = -value if self.config.monitor == "logloss" else value
        return -math.inf if math.isnan(value) else value

    def fit(
        self,
        train: Batch,
        valid: Batch,
        run_dir: str | Path | None = None,
        resume: bool = False,
    ) -> FitResult:
        """Train with early stopping on ``valid``; the best epoch's weights are kept."""
        c = self.config
        run_dir = Path(run_dir) if run_dir is not None else None
        seed_everything(c.seed, c.deterministic)
        optimizer = self._optimizer()
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=c.lr_factor, patience=c.lr_patience, min_lr=c.min_lr
        )
        state = {
            "epoch": 0,
            "best_epoch": -1,
            "best_score": -math.inf,
            "bad_epochs": 0,
            "history": [],
            "best_weights": None,
            "seconds": 0.0,
        }
        auxiliary = self._auxiliary_optimizers()
        if resume and run_dir is not None and (run_dir / LAST).is_file():
            state = self._restore(run_dir / LAST, optimizer, scheduler, auxiliary)
        net, batch_size = self._parallel()
        loader = BatchLoader(train, batch_size, shuffle=True, seed=c.seed)
        steps = distributed.min_int(len(loader))  # every rank takes as many steps
        board = self._tensorboard(run_dir) if self.dist.main else None
        trained_rows = 0
        train_seconds = 0.0
        stopped = state["bad_epochs"] >= c.patience
        while state["epoch"] < c.epochs and not stopped:
            epoch = state["epoch"]
            loader.set_epoch(epoch)
            t0 = time.perf_counter()
            loss, terms = self._train_epoch(net, loader, steps, optimizer, epoch)
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            trained_rows += min(len(train), steps * batch_size) * self.dist.world
            metrics = self.evaluate(valid)
            score = self._score(metrics)
            row = {
                "epoch": epoch,
                "train_loss": loss,
                **{f"train_{k}": v for k, v in terms.items()},
                **{f"valid_{k}": v for k, v in metrics.items()},
                "lr": optimizer.param_groups[0]["lr"],
                "train_seconds": seconds,
            }
            state["history"].append(row)
            if epoch < c.select_after:
                pass  # e.g. a knowledge base whose L0 penalty is still ramping up
            elif score > state["best_score"]:
                state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
                state["best_weights"] = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
            else:
                state["bad_epochs"] += 1
            scheduler.step(score)
            state["epoch"] = epoch + 1
            state["seconds"] += seconds
            stopped = state["bad_epochs"] >= c.patience
            if run_dir is not None and self.dist.main:
                self._checkpoint(run_dir, optimizer, scheduler, auxiliary, state)
            distributed.barrier()  # no rank runs ahead of the checkpoint
            if board is not None:
                for k, v in row.items():
                    if isinstance(v, float) and not math.isnan(v):
                        board.add_scalar(k, v, epoch)
        if state["best_weights"] is not None:
            self.model.load_state_dict(state["best_weights"])
        best = state["history"][state["best_epoch"]] if state["best_epoch"] >= 0 else {}
        return FitResult(
            best_epoch=state["best_epoch"],
            best={k[len("valid_") :]: v for k, v in best.items() if k.startswith("valid_")},
            history=state["history"],
            seconds=state["seconds"],
            train_samples_per_second=trained_rows / train_seconds if train_seconds else 0.0,
        )

    def _parallel(self) -> tuple[nn.Module, int]:
        """The module to train (a DDP wrapper with several ranks) and the per-rank batch size
        (``batch_size`` stays the global batch, split over the ranks)."""
        c, world = self.config, self.dist.world
        if not self.dist.active:
            return self.model, c.batch_size
        if c.batch_size % world:
            raise FinedError(f"train.batch_size {c.batch_size} must be divisible by {world} ranks")
        from torch.nn.parallel import DistributedDataParallel

        ignored = getattr(self.model, "ddp_ignored_parameters", lambda: [])()
        if ignored:  # parameters trained apart (with their gradients averaged by hand)
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ignored)
        # Unused parameters exist (e.g. the gates of the dense-gate ablation): let DDP find them.
        return DistributedDataParallel(
            self.model, find_unused_parameters=True
        ), c.batch_size // world

    def _train_epoch(
        self,
        net: nn.Module,
        loader: BatchLoader,
        steps: int,
        optimizer: torch.optim.Optimizer,
        epoch: int,
    ) -> float:
        c = self.config
        model = self.model
        net.train()
        extra = getattr(model, "extra_loss", None)
        params = list(model.parameters())
        sparse = bool(sparse_parameters(model))  # torch's clip_grad_norm_ takes dense only
        l2 = getattr(model, "embedding_l2", None) if c.embedding_l2 > 0 else None
        if c.embedding_l2 > 0 and l2 is None:
            raise FinedError(
                f"train.embedding_l2 is set but {type(model).__name__} has no embedding penalty"
            )
        total, rows = 0.0, 0
        term_sums: dict[str, float] = {}
        with _Progress(steps, f"epoch {epoch}", c.progress and self.dist.main) as bar:
            for step, batch in enumerate(loader):
                if step == steps:
                    break
                logits = net(batch)
                loss = F.binary_cross_entropy_with_logits(logits, batch.label)
                if extra is not None:
                    loss = loss + extra(batch, logits)
                if l2 is not None:
                    loss = loss + c.embedding_l2 * l2()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip and sparse:
                    clip_gradients(params, c.grad_clip)
                elif c.grad_clip:
                    nn.utils.clip_grad_norm_(params, c.grad_clip)
                optimizer.step()
                n = len(batch)
                total += float(loss.detach()) * n
                rows += n
                for k, v in getattr(model, "loss_terms", {}).items():
                    term_sums[k] = term_sums.get(k, 0.0) + v * n
                bar.advance(total / rows, {k: v / rows for k, v in term_sums.items()})
        return total / max(rows, 1), {k: v / max(rows, 1) for k, v in term_sums.items()}

    def _auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers the model steps itself (e.g. CLUB's q-network): checkpointed too."""
        own = getattr(self.model, "auxiliary_optimizers", None)
        return own() if own is not None else {}

    def _checkpoint(
        self, run_dir: Path, optimizer, scheduler, auxiliary, state: dict[str, Any]
    ) -> None:
        trainer_state = {k: v for k, v in state.items() if k != "best_weights"}
        save_checkpoint(
            run_dir / LAST,
            {
                "model": self.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "auxiliary": {k: opt.state_dict() for k, opt in auxiliary.items()},
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "trainer": trainer_state,
                "best_weights": state["best_weights"],
                "config": self.config.model_dump(),
            },
        )
        lines = "".join(json.dumps(row) + "\n" for row in state["history"])
        atomic_write_text(run_dir / "metrics.jsonl", lines)

    def _restore(self, path: Path, optimizer, scheduler, auxiliary) -> dict[str, Any]:
        """Everything a checkpoint holds back in place; returns the trainer's state. A
        checkpoint that does not fit (edited, or from another run) is a FinedError."""
        ckpt = load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            saved = ckpt.get("auxiliary", {})
            if set(saved) != set(auxiliary):
                raise KeyError(f"optimizers {sorted(saved)}, expected {sorted(auxiliary)}")
            for name, opt in auxiliary.items():
                opt.load_state_dict(saved[name])
            scheduler.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"])
            state = dict(ckpt["trainer"])
            state["best_weights"] = ckpt["best_weights"]
            needed = {"epoch", "best_epoch", "best_score", "bad_epochs", "history", "seconds"}
            missing = needed - set(state)
            if missing:
                raise KeyError(f"trainer state without {sorted(missing)}")
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
            raise FinedError(
                f"{path}: not a checkpoint of this run ({err}); it cannot be resumed from"
            ) from None
        return state

    def _tensorboard(self, run_dir: Path | None):
        if not self.config.tensorboard or run_dir is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from fined.errors import FinedError

            raise FinedError("train.tensorboard: install the `tensorboard` package first") from None
        return SummaryWriter(str(run_dir / "tensorboard"))


class _Progress:
    """A rich progress bar with the running loss, only on an interactive terminal."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total, self.label = total, label

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total, loss=float("nan"), terms="")
        return self

    def advance(self, loss: float, terms: dict[str, float]) -> None:
        if self.enabled:
            text = " ".join(f"{k} {v:.4g}" for k, v in terms.items())
            self.bar.update(self.task, advance=1, loss=loss, terms=text)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()

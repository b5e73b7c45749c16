"""The trainer: fits anything that follows the trainer contract (``fined.models.trainable``).

It knows nothing of any one model. Each step it calls the model's ``forward_train``, its
``auxiliary_step`` and its ``own_loss``, once each, adds the click BCE and the embedding
penalty, and steps one optimizer built from the model's declared ``parameter_groups``. It
owns every optimizer: the groups a model trains apart (``auxiliary_groups``) get theirs
here too, stepped, averaged over the ranks and checkpointed by the trainer.

Selection is on the validation set only (``TrainerState.observe``): early stopping and
learning-rate decay watch the validation AUC, the best epoch's weights are restored at the
end, and a test set is never seen here. Every epoch ends with an atomic checkpoint
(weights, every optimizer, scheduler, RNG, the trainer's state) and the epoch log, so
``fit(..., resume=True)`` after a crash ends with exactly the result of an uninterrupted run
with the same seed.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fined import distributed
from fined.artifacts.checkpoint import load_checkpoint, save_checkpoint
from fined.data.batch import Batch, RowKnowledge
from fined.devices import resolve_precision
from fined.errors import FinedError, TrainingDiverged
from fined.models.frozen import frozen_tensors
from fined.models.trainable import Trainable
from fined.train.config import TrainConfig
from fined.train.epoch_log import EpochLog
from fined.train.feed import DeviceFeed
from fined.train.metrics import one_class, score_metrics
from fined.train.optim import AuxiliaryOptimizers, build_optimizer, sparse_parameters
from fined.train.progress import EpochProgress
from fined.train.state import TrainerState
from fined.train.step import EpochSums, GraphedStep, TrainingPass, TrainStep, graph_blocker

LAST = "last.safetensors"


@dataclass
class FitResult:
    best_epoch: int
    best: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    train_samples_per_second: float = 0.0


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every generator (CUDA's too). ``deterministic``: PyTorch's deterministic
    algorithms, and on CUDA the cuBLAS workspace setting they need; it costs speed where an
    op has a faster non-deterministic kernel (scatter-adds of embedding gradients)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # all devices
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """Whatever runs inside leaves every generator (Python's, NumPy's, PyTorch's on the CPU
    and each GPU) as it found it. A KB build seeds and draws for itself; a KB loaded from
    disk draws initial weights it then overwrites: either way the caller's next draw (a
    FINED adaptor's initial weights) must not depend on which happened."""
    python, numpy = random.getstate(), np.random.get_state()
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=gpus):
        yield
    random.setstate(python)
    np.random.set_state(numpy)


class Trainer:
    """Fits, evaluates and predicts with one model."""

    def __init__(
        self,
        model: Trainable,
        config: TrainConfig | None = None,
        log: Callable[[str], None] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        """``log``: where to say each epoch's line (loss, validation AUC, time); ``device``:
        where the model and every batch are put (``fined.devices.resolve_device``)."""
        if not isinstance(model, Trainable):
            raise TypeError(f"the trainer trains a fined Trainable, not {type(model).__name__}")
        self.device = torch.device(device)
        self.model, self.log = model.to(self.device), log
        self.config = config or TrainConfig()
        # (the precision every pass runs in: ``auto`` decided here, once, for this device)
        self.precision, self.precision_why = resolve_precision(self.config.precision, self.device)
        self.dist = distributed.context()  # several ranks under torchrun, else one
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.config.tf32
            torch.backends.cudnn.allow_tf32 = self.config.tf32

    def _autocast(self) -> Any:
        """bf16 autocast when ``train.precision`` says so (fp32 master weights)."""
        enabled = self.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # -- what the model reads of each row but never trains -----------------------------------
    @torch.no_grad()
    def with_knowledge(self, rows: Batch) -> Batch:
        """``rows`` with what the model reads of each row but never trains (a frozen KB's
        knowledge: ``Trainable.row_knowledge``) computed once, where it fits in
        ``train.knowledge_cache_mb``; else ``rows`` as they are, and the model computes it
        batch by batch. The same function of each row either way, in the fit's precision."""
        compute = self.model.row_knowledge()
        if compute is None or rows.knowledge is not None or not len(rows):
            return rows
        was_training = self.model.training
        self.model.eval()
        budget = self.config.knowledge_cache_mb * 2**20
        parts: list[RowKnowledge] = []
        feed = DeviceFeed(rows, self.config.eval_batch_size, self.device,
                          resident_share=self.config.resident_share)  # fmt: skip
        with self._autocast():
            for batch in feed:
                part = compute(batch)
                if not parts and part.nbytes / len(batch) * len(rows) > budget:
                    if self.log is not None and self.dist.main:
                        self.log(
                            f"the KB's knowledge of {len(rows):,} rows would take more than "
                            f"train.knowledge_cache_mb={self.config.knowledge_cache_mb:g}: "
                            "computed batch by batch"
                        )
                    self.model.train(was_training)
                    return rows
                parts.append(part)
        self.model.train(was_training)
        knowledge = RowKnowledge.concat(parts).map(lambda t: t.to(rows.device))
        return replace(rows, knowledge=knowledge)

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, data: Batch) -> np.ndarray:
        """Click probabilities for every row, in order."""
        was_training = self.model.training
        self.model.eval()
        out = []
        feed = DeviceFeed(data, self.config.eval_batch_size, self.device,
                          resident_share=self.config.resident_share)  # fmt: skip
        with self._autocast():
            for batch in feed:
                out.append(torch.sigmoid(self.model(batch).float()))
        self.model.train(was_training)
        # Gathered on the device, copied to the host once.
        return torch.cat(out).cpu().numpy() if out else np.empty(0, dtype=np.float32)

    def evaluate(self, data: Batch) -> dict[str, float]:
        """Metrics of ``data``; with several ranks, of every rank's share together."""
        prob = torch.from_numpy(self.predict(data))
        broken = int((~torch.isfinite(prob)).sum())
        if broken:  # weights still finite, but too large to compute with (inf - inf in a layer)
            raise TrainingDiverged(
                f"training diverged: the model's scores were not finite on {broken:,} of "
                f"{len(prob):,} rows (train.lr {self.config.lr:g}; a lower rate, or "
                "train.grad_clip, may hold it)"
            )
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
        sparse = sparse_parameters(self.model)
        return build_optimizer(
            self.model.parameter_groups(), c.optimizer, c.lr, c.weight_decay, sparse
        )

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
        undefined = one_class(valid.label) if len(valid) else None
        if c.monitor == "auc" and not self.dist.active and undefined is not None:
            raise FinedError(
                f"the validation rows are {undefined}: the AUC that selects epochs is not "
                "defined on them (train.monitor=logloss selects by log loss)"
            )
        run_dir = Path(run_dir) if run_dir is not None else None
        if self.log is not None and self.dist.main:
            self.log(f"precision {self.precision} ({self.precision_why})")
        # Computed once for every epoch and validation (a frozen KB's knowledge), before the
        # seed: it draws nothing, and the fit then draws as it would without it.
        train, valid = self.with_knowledge(train), self.with_knowledge(valid)
        seed_everything(c.seed, c.deterministic)
        optimizer = self._optimizer()
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=c.lr_factor, patience=c.lr_patience, min_lr=c.min_lr,
            threshold=c.min_delta, threshold_mode="abs",
        )  # fmt: skip
        auxiliary = AuxiliaryOptimizers(self.model.auxiliary_groups())
        state = TrainerState()
        if resume and run_dir is not None and (run_dir / LAST).is_file():
            state = self._restore(run_dir / LAST, optimizer, scheduler, auxiliary)
        net, batch_size = self._parallel(auxiliary)
        loader = DeviceFeed(train, batch_size, self.device, shuffle=True, seed=c.seed,
                            resident_share=c.resident_share)  # fmt: skip
        steps = distributed.min_int(len(loader))  # every rank takes as many steps
        log = EpochLog(
            run_dir if self.dist.main else None, c.tensorboard, self.log if self.dist.main else None
        )
        if state.history:  # resumed: a kill between the checkpoint and its log lost the log
            log.write(state.history, state.best_epoch)
        sums = EpochSums(torch.zeros((), dtype=torch.float64, device=self.device))
        step = self._step(net, optimizer, auxiliary, sums, batch_size)
        trained_rows = 0
        train_seconds = 0.0
        while state.epoch < c.epochs and not state.stopped(c.patience):
            loader.set_epoch(state.epoch)
            t0 = time.perf_counter()
            net.train()
            loss, terms = self._train_epoch(step, sums, loader, steps, state.epoch)
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            trained_rows += min(len(train), steps * batch_size) * self.dist.world
            metrics = self.evaluate(valid)
            score = self._score(metrics)
            state.history.append(
                {
                    "epoch": state.epoch,
                    "train_loss": loss,
                    **{f"train_{k}": v for k, v in terms.items()},
                    **{f"valid_{k}": v for k, v in metrics.items()},
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_seconds": seconds,
                }
            )
            state.observe(score, self.model, c.select_after, c.min_delta)
            scheduler.step(score)
            state.epoch += 1
            state.seconds += seconds
            if run_dir is not None and self.dist.main:
                self._checkpoint(run_dir, optimizer, scheduler, auxiliary, state)
            log.epoch_done(state.history, state.best_epoch)
            distributed.barrier()  # no rank runs ahead of the checkpoint
        if state.best_weights is not None:
            self.model.load_state_dict(state.best_weights)
        return FitResult(
            best_epoch=state.best_epoch,
            best=state.best,
            history=state.history,
            seconds=state.seconds,
            train_samples_per_second=trained_rows / train_seconds if train_seconds else 0.0,
        )

    def _parallel(self, auxiliary: AuxiliaryOptimizers) -> tuple[nn.Module, int]:
        """The module that runs the training pass (a DDP wrapper with several ranks) and the
        per-rank batch size (``batch_size`` stays the global batch, split over the ranks)."""
        c, world = self.config, self.dist.world
        training_pass = TrainingPass(self.model)
        if not self.dist.active:
            return training_pass, c.batch_size
        if c.batch_size % world:
            raise FinedError(f"train.batch_size {c.batch_size} must be divisible by {world} ranks")
        from torch.nn.parallel import DistributedDataParallel

        # Left to themselves: the auxiliary groups (their gradients are averaged by their own
        # step) and a teacher's tensors (the same snapshot on every rank, which DDP would
        # otherwise broadcast as buffers at every step).
        apart = {id(p) for p in auxiliary.parameters()}
        ignored = [n for n, p in training_pass.named_parameters() if id(p) in apart]
        ignored += frozen_tensors(training_pass)
        if ignored:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                training_pass, ignored
            )
        # Unused parameters exist (e.g. the gates of the dense-gate ablation): let DDP find them.
        ids = [self.device.index] if self.device.type == "cuda" else None
        group = distributed.sparse_group() if sparse_parameters(self.model) else None
        ddp = DistributedDataParallel(training_pass, device_ids=ids, find_unused_parameters=True,
                                      process_group=group)  # fmt: skip
        return ddp, c.batch_size // world

    def _step(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        auxiliary: AuxiliaryOptimizers,
        sums: EpochSums,
        rows: int,
    ) -> TrainStep | GraphedStep:
        """The fit's training step; replayed as a CUDA graph where asked and possible."""
        step = TrainStep(net, self.model, optimizer, self.config, self._autocast, sums, auxiliary)
        if not self.config.cuda_graphs:
            return step
        blocker = graph_blocker(self.model, self.device, self.dist.active)
        if blocker is None:
            return GraphedStep(step, rows)
        if self.log is not None and self.dist.main:
            self.log(f"train.cuda_graphs: eager steps ({blocker})")
        return step

    def _train_epoch(
        self,
        step: TrainStep | GraphedStep,
        sums: EpochSums,
        loader: DeviceFeed,
        steps: int,
        epoch: int,
    ) -> tuple[float, dict[str, float]]:
        sums.reset()
        progress = self.config.progress and self.dist.main
        with EpochProgress(steps, f"epoch {epoch}", progress) as bar:
            for i, batch in enumerate(loader):
                if i == steps:
                    break
                step(batch)
                sums.rows += len(batch)
                bar.advance(sums)
        # Read once an epoch, as the loss is: the first step whose loss was not finite, and
        # whether the weights still are (a last step can break them with a finite loss).
        bad = int(sums.first_nonfinite)
        finite = bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all())
        if bad >= 0 or not finite:
            where = (f"the loss was not finite at step {bad + 1} of epoch {epoch}" if bad >= 0
                     else f"the weights were not finite after epoch {epoch}")  # fmt: skip
            raise TrainingDiverged(
                f"training diverged: {where} (train.lr {self.config.lr:g}; a lower rate, or "
                "train.grad_clip, may hold it); the last finished epoch's checkpoint is kept"
            )
        return sums.means()

    # -- checkpoints -------------------------------------------------------------------------
    def _checkpoint(
        self,
        run_dir: Path,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        auxiliary: AuxiliaryOptimizers,
        state: TrainerState,
    ) -> None:
        checkpoint = {
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "auxiliary": auxiliary.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "trainer": state.to_checkpoint(),
            "best_weights": state.best_weights,
            "config": self.config.model_dump(),
        }
        if self.device.type == "cuda":  # dropout, gates and noise there draw from its generator
            checkpoint["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(run_dir / LAST, checkpoint)

    def _restore(
        self,
        path: Path,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        auxiliary: AuxiliaryOptimizers,
    ) -> TrainerState:
        """Everything a checkpoint holds back in place; returns the trainer's state. A
        checkpoint that does not fit (edited, or from another run) is a FinedError."""
        ckpt = load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            auxiliary.load_state_dict(ckpt.get("auxiliary", {}))
            scheduler.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"])
            if self.device.type == "cuda" and "cuda_rng" in ckpt:
                torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)
            return TrainerState.from_checkpoint(dict(ckpt["trainer"]), ckpt["best_weights"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
            raise FinedError(
                f"{path}: not a checkpoint of this run ({err}); it cannot be resumed from"
            ) from None

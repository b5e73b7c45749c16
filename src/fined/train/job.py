"""One training job, as a library call: ``train_model`` is what ``fined train`` runs.

It reads the split (training, validation and test periods), builds the model (a base model,
or one fed by a knowledge base: FINED stage 2), trains it with the epoch selected on the
validation rows only, scores the test periods once at the end, and, given a run directory,
claims it, checkpoints every epoch, and writes ``model.safetensors`` + ``model.json`` (the
model, loadable by ``fined evaluate`` / ``predict``) and ``results.json``::

    from fined.train.job import train_model

    job = train_model("runs/ml100k", "deepfm", "0:1998-02", out="runs/deepfm",
                      test="1998-03:1998-04", settings={"dropout": 0.1}, train={"lr": 1e-3})
    job.metrics["test"]["auc"], job.model   # the trained model, in evaluation mode
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fined import distributed
from fined.artifacts.kb_store import load_kb
from fined.artifacts.model_store import META, describe_model, save_model
from fined.config import StrictModel, resolve
from fined.data.loader import PeriodStore
from fined.devices import resolve_device
from fined.errors import FinedError
from fined.io import atomic_write_json, read_json
from fined.knowledge.adaptor import AdaptorConfig
from fined.knowledge.fined_model import FinedModel
from fined.knowledge.knowledge_base import KnowledgeBase
from fined.models.ctr_model import ModelConfig, build_model
from fined.models.scoring import ScoringModel
from fined.outputs import hold_as_worker, owned_directory
from fined.train.config import TrainConfig
from fined.train.forward_check import ForwardCheck, check_forward, recorded_or_checked
from fined.train.selection import Split, make_split
from fined.train.trainer import LAST, FitResult, Trainer, seed_everything

COMMAND = "train"  # the owner named in a training run directory's marker
RUN_FILE = "run.json"  # what the run was started with (a resume must match it)


@dataclass
class TrainedModel:
    model: ScoringModel[Any]
    fit: FitResult
    split: Split
    metrics: dict[str, dict[str, float]]  # "valid" (the best epoch's), "test" (if any)


def build_job_model(
    store: PeriodStore,
    model: str,
    settings: dict[str, Any] | ModelConfig | None,
    kb: str | Path | None,
    adaptor: dict[str, Any] | AdaptorConfig | None,
    last_train_period: int,
) -> ScoringModel[Any]:
    """The base model, or the base model fed by the knowledge base in ``kb`` (which must
    have memorized only periods up to the last training one)."""
    if kb is None:
        if adaptor:
            raise FinedError("adaptor settings (and --kb-finetune) need a knowledge base (--kb)")
        return build_model(model, store.feature_map, settings)
    base_kb, _ = load_job_kb(store, kb, last_train_period)
    layer = adaptor.model_dump() if isinstance(adaptor, StrictModel) else adaptor
    adaptor_config = resolve(AdaptorConfig, layer, where="adaptor")
    base = build_model(model, store.feature_map, settings, knowledge_tokens=adaptor_config.tokens)
    return FinedModel(base, base_kb, adaptor_config)


def load_job_kb(
    store: PeriodStore, kb: str | Path, last_train_period: int
) -> tuple[KnowledgeBase, dict[str, Any]]:
    """The KB in ``kb``, checked (digests, sizes) and memorized no later than the last
    training period."""
    base_kb, meta = load_kb(kb, store.feature_map)
    if max(meta["periods"]) > last_train_period:
        raise FinedError(
            f"{kb} memorized periods up to {max(meta['periods'])}, after the training periods"
        )
    return base_kb, meta


def train_model(
    data: str | Path | PeriodStore,
    model: str,
    train_periods: str,
    out: str | Path | None = None,
    *,
    valid: str = "holdout",
    test: str | None = None,
    settings: dict[str, Any] | ModelConfig | None = None,
    train: dict[str, Any] | TrainConfig | None = None,
    kb: str | Path | None = None,
    adaptor: dict[str, Any] | AdaptorConfig | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    device: str = "auto",
    forward_check: bool = True,
) -> TrainedModel:
    """Train ``model`` on ``train_periods`` of a prepared dataset (see the module's text).
    ``settings``: the model's (over its defaults); ``train``: the trainer's; ``adaptor``:
    the knowledge adaptor's, with ``kb``; ``forward_check``: with ``kb``, keep the base model
    instead where it scores the last training period better when both learn the periods
    before it (``fined.train.forward_check``); ``log``: where to say what it does. Under
    torchrun every rank calls it with the same arguments: each trains on its share, rank 0
    writes (the directory is held by the process that launched them)."""
    job = _Job(data, model, train_periods, out, valid, test, settings, train, kb, adaptor,
               resume, log or (lambda line: None), resolve_device(device),
               forward_check)  # fmt: skip
    if out is None:
        return job.run()
    if distributed.launched():  # a rank, in the directory the launching process holds
        hold_as_worker(out)
        return job.run()
    with owned_directory(out, COMMAND):
        return job.run()


@dataclass
class _Job:
    data: str | Path | PeriodStore
    model: str
    train_periods: str
    out: str | Path | None
    valid: str
    test: str | None
    settings: dict[str, Any] | ModelConfig | None
    train: dict[str, Any] | TrainConfig | None
    kb: str | Path | None
    adaptor: dict[str, Any] | AdaptorConfig | None
    resume: bool
    log: Callable[[str], None]
    device: torch.device
    forward_check: bool

    def run(self) -> TrainedModel:
        ctx = distributed.setup(self.device)
        if ctx.active and self.valid.startswith("tail"):
            raise FinedError("--valid tail needs every row in one process; use holdout or periods")
        layer = self.train.model_dump() if isinstance(self.train, TrainConfig) else self.train
        train_config = resolve(TrainConfig, layer, where="train")
        data = self.data
        store = data if isinstance(data, PeriodStore) else PeriodStore(data, shard=ctx.shard)
        split = make_split(store, self.train_periods, self.valid, self.test)
        last = max(split.train_periods)
        run_dir = Path(self.out) if self.out is not None else None
        if run_dir is not None and ctx.main:
            _refuse_a_started_run(run_dir, self.resume)  # before any work goes into it
        check = self._check(store, split.train_periods, train_config, run_dir, ctx.active)
        if check is not None and ctx.main:
            self.log(check.reason)
        with_kb = self.kb is not None and (check is None or check.keeps_kb)
        seed_everything(train_config.seed, train_config.deterministic)  # the initial weights
        net = self._build(store, with_kb, last)
        if run_dir is not None:
            distributed.record_rank(run_dir, store.reads)
        if run_dir is not None and ctx.main:  # rank 0 checks and writes the run description
            description = {
                "data": str(store.directory),
                "data_fingerprint": store.feature_map.data_fingerprint,
                "fingerprint": store.feature_map.fingerprint,
                **describe_model(net),
                "train_config": train_config.model_dump(),
                "train_periods": split.train_periods,
                "valid": self.valid,
                "test_periods": split.test_periods,
            }
            _describe_run(run_dir, description, self.resume)
        if ctx.main:
            share = f" (rank 0 of {ctx.world}: its share)" if ctx.active else ""
            self.log(
                f"training {net.describe().model} on {len(split.train):,} rows, validating on "
                f"{len(split.valid):,}{share}"
            )
        trainer = Trainer(net, train_config, log=self.log, device=self.device)
        fit = trainer.fit(split.train, split.valid, run_dir=run_dir, resume=self.resume)
        metrics: dict[str, dict[str, float]] = {"valid": fit.best}
        if split.test is not None:
            metrics["test"] = trainer.evaluate(split.test)
        if run_dir is not None:
            distributed.record_rank(run_dir, store.reads)
        if run_dir is not None and ctx.main:
            info = {
                "train_periods": split.train_periods,
                "test_periods": split.test_periods,
                "best_epoch": fit.best_epoch,
                "metrics": metrics,
                "train_samples_per_second": fit.train_samples_per_second,
                **({"forward_check": asdict(check)} if check is not None else {}),
            }
            save_model(run_dir, net, info)
            atomic_write_json(run_dir / "results.json", info)
        net.eval()
        return TrainedModel(net, fit, split, metrics)

    def _build(self, store: PeriodStore, with_kb: bool, last: int) -> ScoringModel[Any]:
        """The job's FINED model (``with_kb``) or its base model."""
        kb, adaptor = (self.kb, self.adaptor) if with_kb else (None, None)
        return build_job_model(store, self.model, self.settings, kb, adaptor, last)

    def _check(
        self,
        store: PeriodStore,
        periods: list[int],
        config: TrainConfig,
        run_dir: Path | None,
        several_ranks: bool,
    ) -> ForwardCheck | None:
        """With a KB, the forward check (None without a KB, or when it is switched off)."""
        if self.kb is None or not self.forward_check:
            return None
        if several_ranks:
            return ForwardCheck(True, "several ranks: no forward check (run one process to "
                                "have one); the FINED model is kept")  # fmt: skip
        _, meta = load_kb(self.kb, store.feature_map)
        last = max(periods)

        def check() -> ForwardCheck:
            return check_forward(store, periods, max(meta["periods"]),
                                 lambda with_kb: self._build(store, with_kb, last), config,
                                 self.device)  # fmt: skip

        return recorded_or_checked(run_dir, self.resume, check)


def _refuse_a_started_run(out: Path, resume: bool) -> None:
    """A new run needs a directory without a started run."""
    if not resume and (out / RUN_FILE).is_file() and _started(out):
        raise FinedError(
            f"{out} already holds a run (use --resume to continue it, or another --out)"
        )


def _describe_run(out: Path, run: dict[str, Any], resume: bool) -> None:
    """A new run needs a directory without a run; ``--resume`` needs the same description."""
    if resume and (out / RUN_FILE).is_file():
        before = read_json(out / RUN_FILE, "run description")
        changed = [k for k in run if k != "data" and before.get(k) != run[k]]
        if changed:
            raise FinedError(f"--resume: {out} was started with different {', '.join(changed)}")
    _refuse_a_started_run(out, resume)
    atomic_write_json(out / RUN_FILE, run)


def _started(out: Path) -> bool:
    """Whether a run in ``out`` got as far as an epoch: a start that failed before (a bad
    setting found late) leaves nothing that blocks the corrected rerun."""
    return (out / LAST).is_file() or (out / META).is_file()

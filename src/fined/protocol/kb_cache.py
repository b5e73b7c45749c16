"""The knowledge bases of a run: one per KB variant, seed and span of periods, built once
(under a file lock: chains in other worker processes may need the same one at once), then
loaded. A build killed midway resumes from its own checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable

import torch

from fined.artifacts.kb_store import load_kb
from fined.data.loader import PeriodStore
from fined.io import exclusive
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase
from fined.protocol.run_directory import RunDirectory
from fined.train.config import KBTrainConfig
from fined.train.trainer import random_state_kept


def variant_key(config: KBConfig) -> str:
    """A short name for a KB variant: the digest of its settings."""
    blob = json.dumps(config.model_dump(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


class KBCache:
    """``get(config, seed, through)``: the KB of periods ``0..through`` of that variant and
    seed. ``kb_periods``: s, the periods every run's first KB memorizes."""

    def __init__(
        self,
        directory: RunDirectory,
        store: PeriodStore,
        train: KBTrainConfig,
        kb_periods: int,
        device: torch.device,
        announce: Callable[[str], None],
        built: Callable[[str], None],
    ) -> None:
        self.directory, self.store, self.train, self.s = directory, store, train, kb_periods
        self.device = device  # where builds train (the KBs come back loaded on the CPU)
        self.announce, self.built = announce, built  # progress: a build starts / has ended
        self.seconds = 0.0  # spent building, by this process (cells count their share)

    def name(self, config: KBConfig, seed: int, through: int) -> str:
        return f"{variant_key(config)}-seed{seed}" + (f"-to{through}" if through >= self.s else "")

    def get(
        self, config: KBConfig, seed: int, through: int | None = None, label: str = ""
    ) -> KnowledgeBase:
        through = self.s - 1 if through is None else through
        with random_state_kept():  # built or loaded: the caller's next draws are the same
            return self._get(config, seed, through, label)

    def _get(self, config: KBConfig, seed: int, through: int, label: str) -> KnowledgeBase:
        from fined.train.kb_builder import build_knowledge_base

        name = self.name(config, seed, through)
        directory = self.directory.kb(name)
        with exclusive(directory.parent / f".{name}.lock"):
            if not (directory / "kb.json").is_file():
                what = f"knowledge base {label} seed {seed} through {through}"
                self.announce(what)
                train = self.train.model_copy(update={"seed": seed, "progress": False})
                periods = list(range(through + 1))
                started = time.perf_counter()
                build_knowledge_base(self.store, periods, config, train, directory, resume=True,
                                     device=self.device)  # fmt: skip
                self.seconds += time.perf_counter() - started
                shutil.rmtree(directory / "checkpoints", ignore_errors=True)
                self.built(what)
        kb, _ = load_kb(directory, self.store.feature_map)
        return kb

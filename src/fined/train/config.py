"""Trainer settings: the ``train:`` section of a config, and the ``kb_train:`` one of a
knowledge-base build (the same settings with other defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fined.config import StrictModel


class TrainConfig(StrictModel):
    """Trainer settings (the ``train:`` section of a config, ``--set train.KEY=VALUE``)."""

    optimizer: Literal["adam", "adamw"] = "adam"  # adam; adamw (decoupled weight decay)
    lr: float = Field(1e-3, gt=0)  # the learning rate (decayed on plateaus, see lr_patience)
    weight_decay: float = Field(0.0, ge=0)  # on the dense parameters
    embedding_l2: float = Field(0.0, ge=0)  # on the embeddings looked up in each batch
    batch_size: int = Field(4096, ge=1)  # rows per step (all ranks together)
    eval_batch_size: int = Field(16384, ge=1)  # rows per step when scoring
    epochs: int = Field(50, ge=1)  # at most; early stopping usually ends sooner
    patience: int = Field(2, ge=1)  # epochs without validation improvement before stopping
    # A gain of the monitored figure smaller than this is no progress: patience runs on and
    # the rate decays (the best epoch is still the one with the best figure). Chosen so that
    # a fit stops where it has stopped learning: a KB build on MovieLens gained 1e-5 of AUC
    # an epoch for its last four epochs while its rate decayed to 1e-6
    min_delta: float = Field(1e-4, ge=0)
    lr_patience: int = Field(1, ge=0)  # epochs without improvement before the lr decays
    lr_factor: float = Field(0.1, gt=0, le=1)  # the decay's factor
    min_lr: float = Field(1e-6, ge=0)  # the rate never decays below this
    grad_clip: float | None = Field(10.0, gt=0)  # the gradients' global norm at most this
    monitor: Literal["auc", "logloss"] = "auc"  # the validation figure epochs are chosen by
    select_after: int = Field(0, ge=0)  # epochs before this one are never selected or counted
    seed: int = 1  # initial weights, shuffling, sampling: all follow it
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower where it matters)
    threads: int | None = Field(None, ge=1)  # torch threads (None: PyTorch's choice)
    progress: bool = True  # a progress bar per epoch on a terminal
    # bf16: forward and backward under autocast bfloat16 (master weights and the loss stay
    # fp32), about twice the matrix throughput where the hardware multiplies bf16; auto: bf16
    # on GPUs and CPUs that do (AVX-512 BF16, AMX, Arm BF16), fp32 elsewhere, said when a fit
    # starts. On the benchmark data bf16 scores as fp32 does (DeepFM AUC 0.7711 in both)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    tf32: bool = False  # CUDA matmuls in TF32 (10-bit mantissa inputs, fp32 accumulation)
    # On a GPU the rows stay resident in its memory when they take at most this share of what
    # is free (no copy per step); else they are copied batch by batch, overlapped
    resident_share: float = Field(0.5, ge=0, le=1)  # 0: always copied batch by batch
    # A frozen KB's knowledge of the rows of a fit (K x d values a row, in the computing
    # precision) is computed once, kept beside the rows (on the GPU with them where they are
    # resident) and read by every epoch and validation, when it takes at most this many MB;
    # past it, it is computed batch by batch as before (said once). 0: always batch by batch
    knowledge_cache_mb: float = Field(2048.0, ge=0)
    # On a GPU, each epoch's step captured once as a CUDA graph and replayed for every full
    # batch (one launch a step instead of hundreds); eager steps where it cannot be (several
    # ranks, sparse embeddings, parameters trained apart: a KB build's estimator), said once
    cuda_graphs: bool = False
    tensorboard: bool = False  # TensorBoard scalars in the run directory (needs tensorboard)


class KBTrainConfig(TrainConfig):
    """Trainer settings a knowledge base is built with: smaller batches and a higher rate
    than the base models (the gates need many steps), and more patience. No epoch before
    the L0 penalty has ramped up is selected or counted (``kb_builder``); after it, a
    patience of 2 built KBs 20 % faster but FINED's forward AUC in the paper's protocol fell
    (with ``mi_rows`` 256: 0.6935 to 0.6911, DeepFM, 3 seeds), so 3 stays."""

    batch_size: int = Field(1024, ge=1)
    lr: float = Field(3e-3, gt=0)
    epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1)

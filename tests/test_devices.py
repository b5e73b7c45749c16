"""Where fined computes: one device decision, every batch on the model's device, artefacts
that load on any device; and (on a GPU only) training, bf16 and determinism on CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fined.artifacts.model_store import load_model
from fined.cli import main
from fined.data.loader import PeriodStore
from fined.data.prepare import prepare
from fined.data.schema import PrepareConfig
from fined.devices import resolve_device
from fined.errors import FinedError
from fined.knowledge.adaptor import AdaptorConfig
from fined.knowledge.fined_model import FinedModel
from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase
from fined.models import build_model
from fined.train.config import KBTrainConfig, TrainConfig
from fined.train.kb_builder import build_knowledge_base
from fined.train.trainer import Trainer

SMALL = {"embedding_dim": 8, "mlp": [32]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dev") / "data"
    options = {"n_rows": 8000, "n_periods": 3, "n_fields": 6, "cardinality": 40, "seed": 5}
    prepare(PrepareConfig(dataset="synthetic", options=options), out)
    return out


def test_device_resolution(capsys, data, tmp_path) -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(FinedError, match="expected auto, cpu, cuda"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        return
    with pytest.raises(FinedError, match="CUDA is not available"):
        resolve_device("cuda:0")
    args = ["train", "--data", data, "--model", "deepfm", "--train-periods", "0", "--out",
            tmp_path / "run", "--device", "cuda"]  # fmt: skip
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --device cuda: CUDA is not available" in err
    assert not (tmp_path / "run").exists()


def test_precision_follows_the_hardware_and_a_fit_says_which(capsys, data, tmp_path,
                                                            monkeypatch) -> None:  # fmt: skip
    """``train.precision: auto`` is bf16 where the device multiplies bf16 in hardware and fp32
    elsewhere (emulated bf16 products are slower than fp32 ones), and the first line of a
    fit says which was chosen and why."""
    from fined import devices

    cpu = torch.device("cpu")
    native = devices.bf16_dot_products(cpu)
    assert devices.resolve_precision("auto", cpu)[0] == ("bf16" if native else "fp32")
    assert devices.resolve_precision("fp32", cpu) == ("fp32", "as set")
    monkeypatch.setattr(devices, "bf16_dot_products", lambda device: True)
    assert devices.resolve_precision("auto", cpu) == (
        "bf16",
        "auto: this CPU has bf16 dot products",
    )
    monkeypatch.undo()
    args = ["train", "--data", data, "--model", "deepfm", "--train-periods", "0", "--out",
            tmp_path / "run", "--set", "train.epochs=1", "--set", "embedding_dim=8"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    chosen = "bf16" if native else "fp32"
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    first = next(i for i, x in enumerate(lines) if "epoch" in x)
    assert any(f"precision {chosen} (auto: this CPU" in x for x in lines[:first]), lines


class _BatchesOn:
    """A probe on a module: every batch its forward receives must lie where its parameters
    do (each tensor of it), counted."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen = 0
        module.register_forward_pre_hook(self._check)

    def _check(self, module, inputs) -> None:
        (batch,) = inputs
        where = next(module.parameters()).device
        assert all(t.device == where for t in batch.tensors()), "a batch off the model's device"
        self.seen += 1


def _trained_on(device: torch.device, data: Path, precision: str = "fp32", steps=None):
    store = PeriodStore(data)
    torch.manual_seed(0)
    kb = KnowledgeBase(store.feature_map, KBConfig(slots=4, dim=8), 0).eval()
    base = build_model("deepfm", store.feature_map, SMALL, knowledge_tokens=2)
    net = FinedModel(base, kb, AdaptorConfig())
    config = TrainConfig(batch_size=512, epochs=2, patience=2, progress=False,
                         precision=precision, deterministic=True)  # fmt: skip
    trainer = Trainer(net, config, device=device)
    probe = _BatchesOn(net.base.embedding)  # the base model's fields: every path goes there
    fit = trainer.fit(store.load([0, 1], "train"), store.load([0, 1], "holdout"))
    scores = trainer.predict(store.load([2]))
    return net, fit, scores, probe


def test_every_batch_is_on_the_models_device(data) -> None:
    device = resolve_device("auto")
    net, fit, scores, probe = _trained_on(device, data)
    store = PeriodStore(data)
    steps = -(-len(store.load([0, 1], "train")) // 512)
    assert probe.seen >= 2 * steps + 2  # training steps, validation and prediction batches
    assert all(p.device.type == device.type for p in net.parameters())
    assert fit.best["auc"] > 0.55 and scores.shape == (len(store.load([2])),)


def test_a_kb_build_and_predict_follow_the_device(data, tmp_path, capsys) -> None:
    device = resolve_device("auto")
    store = PeriodStore(data)
    built = build_knowledge_base(store, [0], KBConfig(slots=4, dim=8, l0_warmup_steps=2),
                                 KBTrainConfig(epochs=3, progress=False), tmp_path / "kb",
                                 device=device)  # fmt: skip
    assert all(p.device.type == device.type for p in built.kb.parameters())
    args = ["train", "--data", data, "--model", "deepfm", "--train-periods", "0:1", "--out",
            tmp_path / "run", "--set", "train.epochs=1", "--device", device.type]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    out = tmp_path / "s.csv"
    args = ["predict", "--run", tmp_path / "run", "--data", data, "--periods", "2", "--out", out,
            "--device", device.type]  # fmt: skip
    assert main([str(a) for a in args]) == 0 and out.is_file()


def test_artefacts_are_written_from_cpu_copies_and_load_anywhere(data, tmp_path) -> None:
    """Weights files hold no device: a model trained on any device loads on the CPU."""
    from safetensors import safe_open

    device = resolve_device("auto")
    args = ["train", "--data", data, "--model", "dcn", "--train-periods", "0:1", "--out",
            tmp_path / "run", "--set", "train.epochs=1", "--device", device.type]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    with safe_open(str(tmp_path / "run" / "model.safetensors"), framework="pt") as fh:
        assert all(fh.get_tensor(k).device.type == "cpu" for k in fh.keys())  # noqa: SIM118
    store = PeriodStore(data)
    net, _ = load_model(tmp_path / "run", store.feature_map)
    assert all(p.device.type == "cpu" for p in net.parameters())
    on_cpu = Trainer(net, device="cpu").predict(store.load([2]))
    again = Trainer(net, device=device).predict(store.load([2]))
    np.testing.assert_allclose(on_cpu, again, atol=1e-5)


@pytest.mark.cuda
def test_training_on_cuda_in_fp32_and_bf16(data) -> None:
    device = torch.device("cuda")
    _, fp32, scores32, probe = _trained_on(device, data, "fp32")
    _, bf16, scores16, _ = _trained_on(device, data, "bf16")
    assert probe.seen > 0 and fp32.best["auc"] > 0.55
    assert abs(fp32.best["auc"] - bf16.best["auc"]) < 0.01  # measured on the bench: ±0.002
    assert np.isfinite(scores16).all()


@pytest.mark.cuda
def test_seeds_give_identical_results_on_one_gpu(data) -> None:
    device = torch.device("cuda")
    first = _trained_on(device, data)[2]
    second = _trained_on(device, data)[2]
    np.testing.assert_array_equal(first, second)


@pytest.mark.cuda
def test_cpu_and_cuda_predictions_agree_in_fp32(data) -> None:
    """The same FINED weights score the same rows alike on both devices (TF32 off)."""
    net, _, on_cuda, _ = _trained_on(torch.device("cuda"), data)
    on_cpu = Trainer(net.cpu(), device="cpu").predict(PeriodStore(data).load([2]))
    np.testing.assert_allclose(on_cuda, on_cpu, atol=1e-4)


def _train_cli(data: Path, out: Path, *extra: str) -> int:
    args = ["train", "--data", data, "--model", "deepfm", "--train-periods", "0:1", "--out", out,
            "--set", "embedding_dim=8", "--set", "mlp=[32]", "--set", "train.batch_size=512",
            "--set", "train.deterministic=true", "--set", "train.patience=5", *extra]  # fmt: skip
    return main([str(a) for a in args])


@pytest.mark.cuda
def test_a_checkpoint_resumes_on_cuda(data, tmp_path) -> None:
    from conftest import killed_in_epoch

    assert _train_cli(data, tmp_path / "whole", "--set", "train.epochs=3", "--device", "cuda") == 0
    with killed_in_epoch(3, raises=False):
        _train_cli(data, tmp_path / "cut", "--set", "train.epochs=3", "--device", "cuda")
    assert _train_cli(data, tmp_path / "cut", "--set", "train.epochs=3", "--device", "cuda",
                      "--resume") == 0  # fmt: skip
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == whole


@pytest.mark.cuda
def test_the_protocol_runs_on_cuda(data, tmp_path) -> None:
    import polars as pl

    from conftest import write_run_config

    config = write_run_config(
        tmp_path / "run.yaml",
        data,
        ["incremental", "kd", "fined"],
        kb_train={"batch_size": 256, "epochs": 3, "patience": 1},
    )
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 0
    results = pl.read_csv(tmp_path / "out" / "results.csv")
    assert set(results["strategy"]) == {"incremental", "kd", "fined"}
    assert results["auc"].min() > 0.5


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_ranks_on_two_gpus(data, tmp_path) -> None:
    assert _train_cli(data, tmp_path / "ddp", "--set", "train.epochs=2", "--device", "cuda",
                      "--nproc", "2") == 0  # fmt: skip
    ranks = sorted((tmp_path / "ddp" / "ranks").glob("rank*.json"))
    assert len(ranks) == 2
    # sparse gradients: NCCL has no sparse all-reduce, they go through a gloo group
    assert _train_cli(data, tmp_path / "sparse", "--set", "train.epochs=2", "--set",
                      "sparse_embedding=true", "--device", "cuda", "--nproc", "2") == 0  # fmt: skip


# -- every strategy follows a move of its model ------------------------------------------------
def _holds_only(dtype: torch.dtype):
    """A hook for every module PyTorch runs: each floating tensor the module holds directly
    (parameters and buffers) must be of ``dtype``. Global, so that a module hidden from its
    owner (a list, a plain attribute) is caught too."""

    def check(module, inputs) -> None:
        own = [*module._parameters.values(), *module._buffers.values()]
        floating = [t for t in own if t is not None and t.is_floating_point()]
        wrong = [t.dtype for t in floating if t.dtype != dtype]
        assert not wrong, f"{type(module).__name__} holds {wrong[0]} after the move to {dtype}"

    return torch.nn.modules.module.register_module_forward_pre_hook(check)


@pytest.mark.parametrize("kind", ["incremental", "window", "replay", "kd", "fined",
                                  "fined_streaming", "fined_rebuild"])  # fmt: skip
def test_every_strategy_follows_a_move_of_its_model(kind, data, tmp_path) -> None:
    """A dtype move (``.double()``) takes PyTorch's ``_apply``, the path of every ``.to(device)``:
    each strategy's trained module, any teacher inside it included, must follow it and train
    a step. (The first GPU run crashed here: the model of t-1 that ``kd`` distils from was
    hidden in a list and stayed on the CPU.)"""
    from conftest import write_run_config
    from fined.protocol.config import load_run_config
    from fined.protocol.runner import Runner
    from fined.protocol.strategies import STRATEGIES

    assert kind in STRATEGIES.names(), "a strategy kind this test does not know of"
    kinds = ["incremental"] + ([kind] if kind != "incremental" else [])
    kb = {"slots": 4, "dim": 8, "l0_warmup_steps": 4}
    config = load_run_config(write_run_config(tmp_path / "run.yaml", data, kinds, kb=kb))
    run = Runner(config, tmp_path / "out").open()
    spec = config.strategies[-1]
    strategy = spec.strategy(spec, run.context(spec, "deepfm", 1))
    t = run.steps[0]
    warm = run.base_model("deepfm").state_dict()
    net = strategy.build(t, warm, from_warmup=True)
    previous = strategy.build(t, net.state_dict(), from_warmup=False)  # a model of t-1
    trainable = strategy.trainable(previous).double()
    batch = strategy.rows(t).slice(0, 256)
    batch.floats = batch.floats.double()  # the batch moves with the model, as on a device
    handle = _holds_only(torch.float64)
    try:
        trainable.train()
        out = trainable.forward_train(batch)
        trainable.auxiliary_step(out)
        own = trainable.own_loss(batch, out)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            out.logits, batch.label.double()) + own.value  # fmt: skip
        loss.backward()
    finally:
        handle.remove()
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    # The teacher is neither trained nor saved with the model.
    names = {n for n, _ in trainable.named_parameters()} | set(trainable.state_dict())
    assert not any(n.startswith("teacher.") for n in names)


def test_a_teacher_with_norms_loads_back_from_a_plain_state_dict() -> None:
    """The trainer keeps the best epoch's weights and its checkpoints as plain dicts (no
    version metadata); loading one into a model distilled from a teacher with a batch norm
    (DIN's Dice) must not meet the teacher's step counter (it did: "Unexpected key(s)
    teacher...num_batches_tracked", a crash of kd and fined with DIN)."""
    from fined.models.trainable import Trainable
    from fined.protocol.distill import Distilled

    class Normed(Trainable):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.norm = torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)

        def forward(self, x):
            return self.norm(self.linear(x)).sum(1)

    student = Normed()
    student(torch.randn(8, 3))  # running statistics that differ from the defaults
    wrapped = Distilled(student, 0.5)
    plain = {k: v.clone() for k, v in wrapped.state_dict().items()}
    wrapped.load_state_dict(plain)
    assert not any(k.startswith("teacher.") for k in plain)
    x = torch.randn(5, 3)
    assert torch.allclose(wrapped.teacher.eval()(x), student.eval()(x))  # same function

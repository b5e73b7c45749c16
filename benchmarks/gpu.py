"""Training and inference throughput on a device: the six models and FINED-DeepFM, fp32 and
bf16, at two batch sizes, rows resident on the GPU (and, for DeepFM, streamed from pinned
host memory); DeepCTR-Torch's DeepFM beside them as the peer, in the same run.

    python benchmarks/gpu.py --device cuda                  # issue 14's setting, ~5 minutes
    python benchmarks/gpu.py --device cpu --rows 20000      # the same code path on a CPU
    python benchmarks/gpu.py --device cuda --json OUT.json  # the figures as JSON too

Criteo-like synthetic rows (26 categorical fields of 10,000 ids, 13 scaled numerics) as
benchmarks/throughput.py; DIN, which needs behaviour histories, gets rows of the same shape
with a 20-long history of the item field and a planted "item in history" effect. Embedding
16, MLP [400, 400, 400], Adam 1e-3. Each setting starts a fresh model, trains ``--warmup``
batches (kernels chosen, memory pools filled), then one epoch over the rows (samples/s from
the trainer's own epoch time, which ends by reading the loss off the device), then scores
them (samples/s, synchronized) and reports the held-out AUC, so that bf16 is compared with
fp32 at a stated accuracy; peak GPU memory where there is a GPU.

The peer trains with its own ``fit`` (host tensors, a DataLoader, a copy per batch: what its
users run) and scores with its ``predict``. DeepCTR-Torch imports TensorFlow's Keras callbacks
at import time and uses only their calling convention; where TensorFlow is absent a minimal
stand-in (the three classes, calling each callback in turn) serves its import, so that no GPU
machine needs TensorFlow to measure it.

Settings run in order of importance (the targets first) and stop when ``--budget-s`` is
spent; what was skipped is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import prepare_data  # noqa: E402  (the same rows as the CPU benchmark)

MODELS = ["deepfm", "fined", "dcn", "pnn", "xdeepfm", "autoint", "din"]
SIZES = {"embedding_dim": 16, "mlp": [400, 400, 400]}


def prepare_history_data(rows: int, out: Path, seed: int = 0) -> None:
    """Criteo-like rows with a behaviour history of the item field (``f00``) for DIN: the
    click odds rise when the item is in the user's history."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fined.data.prepare import prepare
    from fined.data.schema import FeatureSpec, PeriodSpec, PrepareConfig

    rng = np.random.default_rng(seed)
    ids = lambda n: (rng.zipf(1.05, n) - 1) % 10_000  # noqa: E731
    table: dict[str, Any] = {f"f{j:02d}": ids(rows) for j in range(26)}
    table.update({f"x{j:02d}": rng.standard_normal(rows).astype("float32") for j in range(13)})
    history = ids(rows * 20).reshape(rows, 20)
    seen = (history == table["f00"][:, None]).any(1)
    logit = -1.0 + 1.5 * seen + 0.3 * rng.standard_normal(rows)
    table["label"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int8")
    table["history"] = pa.array(list(history))
    raw = out.parent / "history_rows.parquet"
    pq.write_table(pa.table(table), raw)
    features = [FeatureSpec(name=f"f{j:02d}", kind="categorical", source="item" if j == 0
                            else "context") for j in range(26)]  # fmt: skip
    features += [FeatureSpec(name=f"x{j:02d}", kind="numeric", transform="scale")
                 for j in range(13)]  # fmt: skip
    features.append(FeatureSpec(name="history", kind="sequence", source="user", vocab="f00",
                                max_len=20))  # fmt: skip
    periods = PeriodSpec(by="rows", rows_per_period=rows, holdout_fraction=0.1)
    prepare(PrepareConfig(dataset="table", options={"path": str(raw)}, features=features,
                          periods=periods), out)  # fmt: skip


def build(name: str, fmap: Any) -> Any:
    from fined.knowledge.adaptor import AdaptorConfig
    from fined.knowledge.fined_model import FinedModel
    from fined.knowledge.knowledge_base import KBConfig, KnowledgeBase
    from fined.models import build_model

    if name != "fined":
        return build_model(name, fmap, SIZES)
    kb = KnowledgeBase(fmap, KBConfig(), 0).eval()  # the default KB, frozen as in stage 2
    return FinedModel(build_model("deepfm", fmap, SIZES, knowledge_tokens=2), kb, AdaptorConfig())


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_config(batch: int, precision: str, feed: str, graphs: bool = False) -> Any:
    """The trainer's settings of one setting (``feed``: rows resident on the device, or
    streamed from pinned host memory batch by batch; ``graphs``: train.cuda_graphs)."""
    from fined.train.config import TrainConfig

    return TrainConfig(
        batch_size=batch, eval_batch_size=max(batch, 65_536), epochs=1, patience=1,
        progress=False, precision=precision,
        resident_share=0.5 if feed == "resident" else 0.0, cuda_graphs=graphs,
    )  # fmt: skip


def measure(name: str, store: Any, setting: tuple, args: Any) -> dict:
    import torch

    from fined.train.trainer import Trainer

    _, batch, precision, feed, graphs = setting
    device = args.device
    train, valid = store.load([0], "train"), store.load([0], "holdout")
    torch.manual_seed(0)
    config = train_config(batch, precision, feed, graphs == "on")
    trainer = Trainer(build(name, store.feature_map), config, device=device)
    warm = train.slice(0, min(len(train), args.warmup * batch))
    trainer.fit(warm, valid.slice(0, min(len(valid), batch)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fit = trainer.fit(train, valid)  # a fit's first steps are eager even with graphs on
    synchronize(device)
    started = time.perf_counter()
    trainer.predict(train)
    synchronize(device)
    infer = len(train) / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"model": name, "batch": batch, "precision": precision, "rows": feed,
            "graphs": graphs, "train_sps": fit.train_samples_per_second, "infer_sps": infer,
            "auc": fit.best.get("auc", float("nan")), "peak_mb": peak}  # fmt: skip


def import_peer() -> tuple[Any, Any, Any]:
    """DeepCTR-Torch's DeepFM, SparseFeat and DenseFeat; where TensorFlow is absent, the Keras
    callback classes it imports are stood in for while it imports, and withdrawn after (other
    libraries, PyTorch's compiler among them, probe for TensorFlow and must not find these)."""
    try:
        import tensorflow  # noqa: F401

        stand_in = False
    except ImportError:
        stand_in = True
    names = ("tensorflow", "tensorflow.python", "tensorflow.python.keras",
             "tensorflow.python.keras.callbacks")  # fmt: skip
    if stand_in:
        sys.modules.update(keras_callbacks(names))
    try:
        from deepctr_torch.inputs import DenseFeat, SparseFeat
        from deepctr_torch.models import DeepFM
    finally:
        if stand_in:
            for name in names:
                sys.modules.pop(name, None)
    return DeepFM, SparseFeat, DenseFeat


def keras_callbacks(names: tuple[str, ...]) -> dict[str, types.ModuleType]:
    """Modules holding the three Keras callback classes DeepCTR-Torch uses."""

    class Callback:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.model: Any = None

        def set_model(self, model: Any) -> None:
            self.model = model

        def __getattr__(self, name: str) -> Any:  # on_epoch_end etc.: nothing to do
            if name.startswith("on_"):
                return lambda *a, **k: None
            raise AttributeError(name)

    class History(Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            self.epoch: list[int] = []
            self.history: dict[str, list] = {}

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.epoch.append(epoch)
            for k, v in (logs or {}).items():
                self.history.setdefault(k, []).append(v)

    class CallbackList:
        def __init__(self, callbacks: list) -> None:
            self.callbacks = list(callbacks)

        def set_model(self, model: Any) -> None:
            self.model = model
            for c in self.callbacks:
                c.set_model(model)

        def __getattr__(self, name: str) -> Any:
            if name.startswith("on_"):
                return lambda *a, **k: [getattr(c, name)(*a, **k) for c in self.callbacks]
            raise AttributeError(name)

    modules = {name: types.ModuleType(name) for name in names}
    module = modules[names[-1]]
    module.Callback, module.History, module.CallbackList = Callback, History, CallbackList  # type: ignore[attr-defined]
    module.EarlyStopping = module.ModelCheckpoint = Callback  # type: ignore[attr-defined]
    return modules


def measure_peer(store: Any, batch: int, args: Any) -> dict:
    """DeepCTR-Torch's DeepFM, same rows, sizes and optimizer, trained by its own ``fit``."""
    import numpy as np
    import torch

    from fined.train.metrics import auc

    DeepFM, SparseFeat, DenseFeat = import_peer()

    fmap = store.feature_map
    train, valid = store.load([0], "train"), store.load([0], "holdout")
    ids = [f for f in fmap.features if f.kind == "categorical"]
    floats = [f for f in fmap.features if f.kind == "numeric"]
    columns = [SparseFeat(f.name, vocabulary_size=f.vocab_size, embedding_dim=16) for f in ids]
    columns += [DenseFeat(f.name, 1) for f in floats]

    def inputs(rows: Any) -> dict[str, np.ndarray]:
        x = {f.name: rows.ids[:, j].numpy() for j, f in enumerate(ids)}
        x.update({f.name: rows.floats[:, j].numpy() for j, f in enumerate(floats)})
        return x

    torch.manual_seed(0)
    net = DeepFM(columns, columns, dnn_hidden_units=(400, 400, 400), task="binary",
                 device=str(args.device))  # fmt: skip
    net.compile(torch.optim.Adam(net.parameters(), lr=1e-3), "binary_crossentropy")
    x, y = inputs(train), train.label.numpy()
    warm = min(len(train), args.warmup * batch)
    with contextlib.redirect_stdout(io.StringIO()):  # its fit prints whatever verbose says
        net.fit({k: v[:warm] for k, v in x.items()}, y[:warm], batch_size=batch, epochs=1,
                verbose=0)  # fmt: skip
        synchronize(args.device)
        started = time.perf_counter()
        net.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        synchronize(args.device)
        train_sps = len(train) / (time.perf_counter() - started)
        started = time.perf_counter()
        net.predict(x, batch_size=max(batch, 65_536))
        synchronize(args.device)
        infer_sps = len(train) / (time.perf_counter() - started)
        score = auc(valid.label.numpy(), net.predict(inputs(valid), batch_size=65_536).ravel())
    return {"model": "deepctr-torch deepfm", "batch": batch, "precision": "fp32",
            "rows": "its fit", "graphs": "off", "train_sps": train_sps, "infer_sps": infer_sps,
            "auc": score, "peak_mb": 0.0}  # fmt: skip


def plan(args: Any) -> list[tuple[str, int, str, str, str]]:
    """Every setting ``(model, batch, precision, rows, graphs)``, the targets' first: DeepFM
    and FINED at both batches (on a GPU with CUDA graphs on, then off), the peer, then the
    other models, then DeepFM's rows streamed from the host."""
    batches = sorted(args.batches, reverse=True)
    cuda = args.device.type == "cuda"
    graphs = args.graphs if cuda else ["off"]
    targets = [m for m in ("deepfm", "fined") if m in args.models]
    first = [(m, b, p, "resident", g) for g in graphs for b in batches for m in targets
             for p in args.precisions]  # fmt: skip
    if args.peer:
        first += [("peer", b, "fp32", "its fit", "off") for b in batches]
    rest = [(m, b, p, "resident", graphs[0]) for m in args.models for b in batches
            for p in args.precisions]  # fmt: skip
    if cuda and "deepfm" in args.models:
        rest += [("deepfm", b, p, "streamed", g) for b in batches for p in args.precisions
                 for g in graphs]  # fmt: skip
    return first + [s for s in rest if s not in first]


def step_profile(name: str, store: Any, batch: int, precision: str, args: Any) -> str:
    """Where a step's time goes: the top kernels (or CPU ops) of a few eager steps by their
    own time; for FINED, the frozen KB's query alone against a whole step too."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fined.train.optim import build_optimizer
    from fined.train.step import EpochSums, TrainingPass, TrainStep

    device = args.device
    torch.manual_seed(0)
    model = build(name, store.feature_map).to(device).train()
    rows = store.load([0], "train").slice(0, batch).to(device)
    config = train_config(batch, precision, "resident")
    autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")  # noqa: E731
    optimizer = build_optimizer(model.parameter_groups(), "adam", 1e-3, 0.0, set())
    sums = EpochSums(torch.zeros((), dtype=torch.float64, device=device))
    step = TrainStep(TrainingPass(model), model, optimizer, config, autocast, sums)

    def timed(fn: Any, n: int = 10) -> float:
        fn()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(n):
            fn()
        synchronize(device)
        return (time.perf_counter() - started) / n * 1000

    def query() -> None:
        with autocast():
            model.knowledge(rows)  # type: ignore[operator]

    step_ms = timed(lambda: step(rows))
    head = f"{name} eager step at batch {batch} {precision}: {step_ms:.2f} ms"
    if name == "fined":
        kb_ms = timed(query)
        head += f"; the frozen KB's query alone {kb_ms:.2f} ms ({kb_ms / step_ms:.0%} of the step)"
        if precision == "fp32":  # the CPU's in-place path (norms folded into products) here
            kb = model.kb  # type: ignore[union-attr]

            def in_place() -> None:
                fields = kb.extractor.embedding(kb._known(rows))
                kb.encoder.frozen_means(fields, kb.extractor.frozen_gates(fields))

            head += f"; by the in-place path {timed(in_place):.2f} ms"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])  # fmt: skip
    with profile(activities=activities) as prof:
        for _ in range(3):
            step(rows)
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=60)
    return f"{head}\n{table}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--batches", default="8192,65536")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing")
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop starting settings")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--graphs", default="on,off", help="CUDA graphs: on, off or both")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the profile of a DeepFM and a FINED step")  # fmt: skip
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.precisions = args.precisions.split(",")
    args.models = args.models.split(",")
    args.graphs = args.graphs.split(",")

    import torch

    from fined.data.loader import PeriodStore
    from fined.devices import resolve_device

    args.device = resolve_device(args.device)
    if args.peer:
        try:
            import_peer()
        except ImportError:
            print("peer: deepctr-torch is not installed (pip install deepctr-torch --no-deps)")
            args.peer = False
    started = time.perf_counter()
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    results: list[dict] = []
    profiles: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        prepare_data(args.rows, Path(tmp) / "criteo")
        stores = {"criteo": PeriodStore(Path(tmp) / "criteo")}
        if "din" in args.models:
            prepare_history_data(args.rows, Path(tmp) / "history")
            stores["history"] = PeriodStore(Path(tmp) / "history")
        rows = len(stores["criteo"].load([0], "train"))
        print(f"device {args.device} ({name}), torch {torch.__version__}; {rows:,} training rows")
        print("| model | batch | precision | rows | CUDA graphs | train samples/s | steps/s "
              "| ms/step | infer samples/s | AUC | peak MB |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
        skipped = []
        profiled = set() if args.profile else {"deepfm", "fined"}
        for setting in plan(args):
            if time.perf_counter() - started > args.budget_s:
                skipped.append("/".join(map(str, setting)))
                continue
            model, batch = setting[:2]
            store = stores["history" if model == "din" else "criteo"]
            if model == "peer":
                r = measure_peer(store, batch, args)
            else:
                r = measure(model, store, setting, args)
            results.append(r)
            steps = r["train_sps"] / r["batch"]
            print(f"| {r['model']} | {r['batch']} | {r['precision']} | {r['rows']} "
                  f"| {r['graphs']} | {r['train_sps']:,.0f} | {steps:,.1f} "
                  f"| {1000 / steps if steps else float('nan'):.2f} | {r['infer_sps']:,.0f} "
                  f"| {r['auc']:.4f} | {r['peak_mb']:,.0f} |", flush=True)  # fmt: skip
            if model in ("deepfm", "fined") and model not in profiled:  # the first setting's
                profiled.add(model)
                profiles.append(step_profile(model, store, batch, r["precision"], args))
    print(ratios(results))
    print("\n".join(profiles))
    if skipped:
        print(f"skipped (budget {args.budget_s:.0f} s spent): {', '.join(skipped)}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__,
                                         "results": results, "profiles": profiles},
                                        indent=1))  # fmt: skip


def ratios(results: list[dict]) -> str:
    """The issue's figures: DeepFM bf16 against the peer, FINED's step against DeepFM's, bf16
    against fp32, and what CUDA graphs buy (rows resident; graphs on where measured)."""

    def sps(model: str, batch: int, precision: str, graphs: str | None = None) -> float | None:
        key = (model, batch, precision, "resident")
        found = {r["graphs"]: r["train_sps"] for r in results
                 if (r["model"], r["batch"], r["precision"], r["rows"]) == key}  # fmt: skip
        if graphs is not None:
            return found.get(graphs)
        return found.get("on", found.get("off"))

    lines = []
    for batch in sorted({r["batch"] for r in results}):
        deepfm = sps("deepfm", batch, "bf16")
        peer = [r["train_sps"] for r in results
                if r["model"].startswith("deepctr") and r["batch"] == batch]  # fmt: skip
        if deepfm and peer:
            lines.append(f"batch {batch}: DeepFM bf16 trains at {deepfm / peer[0]:.1f}x "
                         "DeepCTR-Torch's DeepFM (fp32, its fit)")  # fmt: skip
        for graphs in ("on", "off"):
            for precision in ("fp32", "bf16"):
                base = sps("deepfm", batch, precision, graphs)
                fined = sps("fined", batch, precision, graphs)
                if base and fined:
                    lines.append(f"batch {batch} {precision} graphs {graphs}: a FINED-DeepFM "
                                 f"step costs {base / fined:.2f}x a DeepFM step")  # fmt: skip
        for model in sorted({r["model"] for r in results if r["batch"] == batch}):
            fp32, bf16 = sps(model, batch, "fp32"), sps(model, batch, "bf16")
            if fp32 and bf16:
                lines.append(f"batch {batch} {model}: bf16 / fp32 = {bf16 / fp32:.2f}")
            on, off = sps(model, batch, "bf16", "on"), sps(model, batch, "bf16", "off")
            if on and off:
                lines.append(f"batch {batch} {model} bf16: CUDA graphs on / off = {on / off:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

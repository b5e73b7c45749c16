"""``fined export``: a trained model (a FINED model with its frozen KB folded in) as a
self-contained scoring artefact, loadable without fined.

- ``torchscript``: ``torch.jit.load(path)(*inputs) -> probabilities [B]``;
- ``onnx``: an ONNX graph for ONNX Runtime (or any ONNX runtime), same inputs and output.

The inputs are the encoded tensors a prepared dataset holds (``RawRowEncoder`` encodes raw
rows the same way): ``ids [B, F_id] int32``, ``floats [B, F_float] float32`` (each only when
the data has such features) and one ``[B, L] int32`` per sequence. Ids that entered the
vocabulary after the model's training periods are mapped to OOV inside the artefact, as
``fined predict`` does. A JSON sidecar
(``FILE.json``) names the inputs in order, with their dtypes, shapes and columns, the output,
and the feature-map fingerprint the inputs must be encoded with.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.errors import FinedError
from fined.io import atomic_write_bytes, atomic_write_json
from fined.models.scoring import ScoringModel

Format = Literal["torchscript", "onnx"]


class Scorer(nn.Module):
    """``(*inputs) -> click probabilities [B]``: the model's inference as a function of the
    plain tensors ``input_spec`` lists (what is traced into the artefact)."""

    id_limits: torch.Tensor  # a buffer: each id field's vocabulary size as of known_through

    def __init__(self, model: ScoringModel[Any], known_through: int) -> None:
        super().__init__()
        fmap = model.describe().feature_map
        self.model = model.eval()
        self.names = [spec["name"] for spec in input_spec(fmap)]
        self.id_fields, self.float_fields = len(fmap.id_features), len(fmap.float_features)
        ids, sequences = fmap.known_limits(known_through)
        self.register_buffer("id_limits", torch.tensor(ids, dtype=torch.long))
        self.seq_limits = sequences

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.names, inputs, strict=True))
        n = inputs[0].shape[0]
        first = inputs[0]
        ids = given.get("ids", first.new_zeros(n, 0, dtype=torch.int32))
        floats = given.get("floats", first.new_zeros(n, 0, dtype=torch.float32))
        sequences = {k: v for k, v in given.items() if k not in ("ids", "floats")}
        zeros = first.new_zeros(n, dtype=torch.float32)
        batch = Batch(ids, floats, sequences, zeros, zeros.long())
        batch = batch.forget_later_ids(self.id_limits, self.seq_limits)
        return torch.sigmoid(self.model(batch))


def input_spec(fmap: FeatureMap) -> list[dict[str, Any]]:
    """The artefact's inputs, in order: the id fields, the scaled numerics (each only where
    the data has some), then one per sequence."""
    inputs = []
    if fmap.id_features:
        inputs.append({"name": "ids", "dtype": "int32", "shape": ["batch", len(fmap.id_features)],
                       "columns": [f.name for f in fmap.id_features]})  # fmt: skip
    if fmap.float_features:
        inputs.append({"name": "floats", "dtype": "float32",
                       "shape": ["batch", len(fmap.float_features)],
                       "columns": [f.name for f in fmap.float_features]})  # fmt: skip
    for f in fmap.sequence_features:
        inputs.append({"name": f.name, "dtype": "int32", "shape": ["batch", f.max_len],
                       "columns": [f.name]})  # fmt: skip
    if not inputs:
        raise FinedError("a model of a dataset without features cannot be exported")
    return inputs


def _example(fmap: FeatureMap, rows: int = 3) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: OOV ids everywhere (values do not matter, shapes do)."""
    make = {"int32": torch.ones, "float32": torch.zeros}
    return tuple(
        make[spec["dtype"]](rows, spec["shape"][1], dtype=getattr(torch, spec["dtype"]))
        for spec in input_spec(fmap)
    )


def export_model(
    model: ScoringModel[Any],
    known_through: int,
    out: str | Path,
    format: Format = "torchscript",
    about: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the artefact to ``out`` and its sidecar to ``out.json``; returns the sidecar."""
    out = Path(out)
    described = model.describe()
    fmap = described.feature_map
    scorer = Scorer(model, known_through).eval()
    example = _example(fmap)
    inputs = input_spec(fmap)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values it freezes
        buffer = io.BytesIO()
        if format == "torchscript":
            torch.jit.save(torch.jit.trace(scorer, example, check_trace=False), buffer)
        elif format == "onnx":
            batch = torch.export.Dim("batch")
            names = [spec["name"] for spec in inputs]
            try:
                with (
                    contextlib.redirect_stdout(io.StringIO()),  # the exporter's progress lines
                    _quiet("torch.onnx"),  # and its notes on torchvision ops we do not use
                ):
                    program = torch.onnx.export(
                        scorer, example, dynamo=True, input_names=names,
                        output_names=["probability"], verbose=False,
                        dynamic_shapes=(tuple({0: batch} for _ in example),),
                    )  # fmt: skip
            except ImportError as err:
                raise FinedError(f"--format onnx needs `onnx` and `onnxscript` ({err})") from None
            assert program is not None
            program.save(buffer)  # type: ignore[arg-type]  # a file object works too
            _check_onnx_inputs(buffer.getvalue(), inputs)
        else:
            raise FinedError(f"--format {format!r}: expected torchscript or onnx")
    atomic_write_bytes(out, buffer.getvalue())
    sidecar = {
        "format": format,
        "model": described.model,
        "fined_model": described.knowledge is not None,
        "fingerprint": fmap.fingerprint,
        "known_through": known_through,
        "inputs": inputs,
        "output": {"name": "probability", "dtype": "float32", "shape": ["batch"]},
        "encoding": "ids as the prepared dataset's vocab.json encodes them (0 padding, 1 "
        "OOV; fined.data.raw_rows.RawRowEncoder); later ids are mapped to OOV inside",
        **(about or {}),
    }
    atomic_write_json(out.with_name(out.name + ".json"), sidecar)
    return sidecar


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Only errors from ``logger`` and its children while the block runs."""
    names = [logger, *(n for n in logging.root.manager.loggerDict if n.startswith(logger + "."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _check_onnx_inputs(graph: bytes, inputs: list[dict[str, Any]]) -> None:
    """Every input is read by the graph (ONNX would drop one that is not, silently)."""
    import onnx

    kept = [i.name for i in onnx.load_from_string(graph).graph.input]
    if kept != [spec["name"] for spec in inputs]:
        raise FinedError(f"the ONNX graph takes {kept}, not {[s['name'] for s in inputs]}")

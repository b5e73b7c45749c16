"""``fined export``: a trained model (a FINED model with its frozen KB folded in) as a
self-contained scoring artefact, loadable without fined.

- ``pt2`` (the default): ``torch.export`` with a dynamic batch, compiled by AOTInductor into
  a package, PyTorch's current way to ship a model without its Python code:
  ``torch._inductor.aoti_load_package(path)(*inputs) -> probabilities [B]`` (or
  ``AOTIModelPackageLoader`` in C++). The package holds machine code: it loads in the
  PyTorch version that compiled it, on a CPU of the kind that compiled it.
- ``onnx``: an ONNX graph for ONNX Runtime (or any ONNX runtime), same inputs and output.
- ``torchscript``: the old format, ``torch.jit.load(path)(*inputs)``; PyTorch deprecates
  TorchScript, so it is kept only while PyTorch ships it.

The inputs are the encoded tensors a prepared dataset holds (``RawRowEncoder`` encodes raw
rows the same way): ``ids [B, F_id] int32``, ``floats [B, F_float] float32`` (each only when
the data has such features) and one ``[B, L] int32`` per sequence; any B, 0 included. Ids
that entered the vocabulary after the model's training periods are mapped to OOV inside the
artefact, as ``fined predict`` does. A JSON sidecar (``FILE.json``) names the inputs in
order, with their dtypes, shapes and columns, the output, the feature-map fingerprint the
inputs must be encoded with, and how to load and call the artefact without fined.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.errors import FinedError
from fined.io import atomic_write_bytes, atomic_write_json
from fined.models.scoring import ScoringModel

Format = Literal["pt2", "onnx", "torchscript"]
FORMATS: tuple[str, ...] = get_args(Format)
OLD_FORMAT = "torchscript"  # PyTorch deprecates it (torch.jit); kept while PyTorch ships it


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


def _dynamic_batch(example: tuple[torch.Tensor, ...]) -> tuple[tuple[dict[int, Any], ...]]:
    """Dimension 0 of every input is the batch, of any size (0 included), shared by all."""
    batch = torch.export.Dim("batch", min=0)
    return (tuple({0: batch} for _ in example),)


def _pt2(scorer: Scorer, example: tuple[torch.Tensor, ...]) -> bytes:
    """The AOTInductor package of ``scorer`` (a zip of the compiled library and weights)."""
    from torch._inductor import aoti_compile_and_package
    from torch._inductor.exc import InductorError

    program = torch.export.export(scorer, example, dynamic_shapes=_dynamic_batch(example))
    buffer = io.BytesIO()
    try:
        aoti_compile_and_package(program, package_path=buffer)
    except InductorError as err:  # no working C++ compiler, most often
        first = str(err).strip().splitlines()[0]
        raise FinedError(
            f"--format pt2: AOTInductor could not compile the model ({first}); it needs a C++ "
            "compiler (g++ or clang++; CXX names another); or export --format onnx"
        ) from None
    return buffer.getvalue()


def load_instructions(format: Format, file: str, inputs: list[dict[str, Any]]) -> dict[str, str]:
    """How the serving side loads and calls the artefact without fined: Python (a dict
    ``inputs`` of the named inputs), C++ where the format has a loader, and what it needs."""
    args = ", ".join(f"inputs[{spec['name']!r}]" for spec in inputs)
    if format == "pt2":
        return {
            "python": f"import torch\nscorer = torch._inductor.aoti_load_package({file!r})\n"
            f"probability = scorer({args})",
            "cpp": f'torch::inductor::AOTIModelPackageLoader loader("{file}"); '
            f"auto probability = loader.run({{{args}}})[0];",
            "inputs": "torch tensors, named, typed and shaped as `inputs` lists them; any "
            "number of rows, 0 included",
            "requires": f"PyTorch {torch.__version__} on a CPU like the exporting machine's: the "
            "package holds machine code compiled for them (export again elsewhere, or use "
            "--format onnx)",
        }
    if format == "onnx":
        return {
            "python": f"import onnxruntime\nsession = onnxruntime.InferenceSession({file!r})\n"
            "(probability,) = session.run(None, inputs)",
            "inputs": "numpy arrays, named, typed and shaped as `inputs` lists them; any "
            "number of rows, 0 included",
            "requires": "onnxruntime (or any ONNX runtime)",
        }
    return {
        "python": f"import torch\nscorer = torch.jit.load({file!r})\nprobability = scorer({args})",
        "cpp": f'auto scorer = torch::jit::load("{file}"); '
        f"auto probability = scorer.forward({{{args}}}).toTensor();",
        "inputs": "torch tensors, named, typed and shaped as `inputs` lists them",
        "requires": "PyTorch with TorchScript: the old format, deprecated by PyTorch "
        "(torch.jit); prefer pt2",
    }


def export_model(
    model: ScoringModel[Any],
    known_through: int,
    out: str | Path,
    format: Format = "pt2",
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
        # The tracer's notes on Python values it freezes, and PyTorch's notes on its own
        # internals while it exports and compiles (nothing a user of fined can act on).
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        if format == "pt2":
            buffer.write(_pt2(scorer, example))
        elif format == "torchscript":
            torch.jit.save(torch.jit.trace(scorer, example, check_trace=False), buffer)
        elif format == "onnx":
            names = [spec["name"] for spec in inputs]
            try:
                with (
                    contextlib.redirect_stdout(io.StringIO()),  # the exporter's progress lines
                    _quiet("torch.onnx"),  # and its notes on torchvision ops we do not use
                ):
                    program = torch.onnx.export(
                        scorer, example, dynamo=True, input_names=names,
                        output_names=["probability"], verbose=False,
                        dynamic_shapes=_dynamic_batch(example),
                    )  # fmt: skip
            except ImportError as err:
                raise FinedError(f"--format onnx needs `onnx` and `onnxscript` ({err})") from None
            assert program is not None
            program.save(buffer)  # type: ignore[arg-type]  # a file object works too
            _check_onnx_inputs(buffer.getvalue(), inputs)
        else:
            raise FinedError(f"--format {format!r}: expected {', '.join(FORMATS)}")
    atomic_write_bytes(out, buffer.getvalue())
    sidecar = {
        "format": format,
        **(
            {"note": "the old format: PyTorch deprecates TorchScript"}
            if format == OLD_FORMAT
            else {}
        ),
        "load": load_instructions(format, out.name, inputs),
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

"""``feature_map.json``: what a prepared dataset contains, read by every later stage.

It records each feature's kind, source, vocabulary size (overall and as it stood after each
period), padding/OOV indices and transform, the periods with their row counts, and two
hashes:

- ``fingerprint``: what a trained model depends on (the schema, the vocabularies' sizes and
  contents, the numeric transforms). Models and knowledge bases store it, so that loading
  one against data encoded differently fails loudly, even when all sizes agree.
- ``data_fingerprint``: the whole dataset (the fingerprint, the periods, each period file's
  Parquet footer digest). A run records it and refuses to resume on changed data; the
  loader checks each file's footer before reading it.

Both are checked against the document's own contents when it is loaded, so a hand-edited
feature map is refused; period files must lie inside the dataset's directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fined.errors import FinedError
from fined.io import atomic_write_json, read_json
from fined.outputs import recover_swap

PAD, OOV = 0, 1  # the reserved indices of every vocabulary: padding, out-of-vocabulary
UNLIMITED = 1 << 62  # the id limit of a field without a vocabulary: every id is known
FORMAT_VERSION = 2  # 2: vocabulary contents in the fingerprint, period footers, skipped rows
FILE_NAME = "feature_map.json"


@dataclass
class FeatureInfo:
    """One encoded feature. ``vocab`` names the feature whose vocabulary (and embedding) it
    uses (itself unless shared). Id fields have ``vocab_size`` rows, 0 = padding, 1 = OOV."""

    name: str
    kind: str  # categorical | numeric | sequence
    source: str
    vocab: str
    vocab_size: int  # 0 for a scaled numeric (a float input)
    vocab_size_by_period: list[int] = field(default_factory=list)
    max_len: int = 1
    transform: dict[str, Any] | None = None
    min_count: int = 1

    @property
    def is_float(self) -> bool:
        return self.kind == "numeric" and self.vocab_size == 0

    @property
    def is_id(self) -> bool:
        """A single id per row (categorical or bucketized numeric)."""
        return self.kind in ("categorical", "numeric") and not self.is_float


@dataclass
class PeriodInfo:
    index: int
    name: str
    file: str
    rows: int
    positives: int
    holdout_rows: int
    holdout_positives: int
    time_min: int
    time_max: int
    new_id_share: dict[str, float] = field(default_factory=dict)
    footer_sha256: str = ""  # digest of the period file's Parquet footer and size

    @property
    def ctr(self) -> float:
        return self.positives / self.rows if self.rows else 0.0


@dataclass
class FeatureMap:
    dataset: str
    features: list[FeatureInfo]
    periods: list[PeriodInfo]
    user_key: str | None = None
    holdout_fraction: float = 0.1
    fit_periods: int = 1
    time_is_row_number: bool = False
    vocab_sha256: str = ""  # digest of vocab.json as written
    skipped_rows: dict[str, int] = field(default_factory=dict)  # rows left out, by reason
    source_notes: dict[str, int] = field(default_factory=dict)  # what the source reports
    fingerprint: str = ""
    data_fingerprint: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = self.compute_fingerprint()
        if not self.data_fingerprint:
            self.data_fingerprint = self.compute_data_fingerprint()

    def compute_fingerprint(self) -> str:
        """Hash of everything a trained model depends on: features, kinds, vocabularies
        (sizes by period and contents), transforms."""
        keyed = [
            (f.name, f.kind, f.source, f.vocab, f.vocab_size, f.vocab_size_by_period, f.max_len,
             f.transform)
            for f in self.features
        ]  # fmt: skip
        blob = json.dumps(
            {"dataset": self.dataset, "features": keyed, "vocab": self.vocab_sha256},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def compute_data_fingerprint(self) -> str:
        """Hash of the whole dataset: the fingerprint, every period (rows, files, footers),
        the settings that shaped the rows and the rows left out."""
        doc = asdict(self)
        doc.pop("data_fingerprint")
        blob = json.dumps(doc, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- views used by loaders and models -------------------------------------------------
    def feature(self, name: str) -> FeatureInfo:
        for f in self.features:
            if f.name == name:
                return f
        raise FinedError(f"no feature {name!r} in this dataset")

    @property
    def id_features(self) -> list[FeatureInfo]:
        """Single-id fields, in the column order of ``Batch.ids``."""
        return [f for f in self.features if f.is_id]

    @property
    def float_features(self) -> list[FeatureInfo]:
        """Scaled numeric fields, in the column order of ``Batch.floats``."""
        return [f for f in self.features if f.is_float]

    @property
    def sequence_features(self) -> list[FeatureInfo]:
        return [f for f in self.features if f.kind == "sequence"]

    def known_limits(self, period: int) -> tuple[list[int], dict[str, int]]:
        """What a model trained through ``period`` knows: the vocabulary size then of each id
        field (in ``Batch.ids`` column order) and of each sequence. Ids at or above it
        entered later and are out of vocabulary for that model (see ``Batch``)."""

        def limit(name: str) -> int:
            sizes = self.feature(self.feature(name).vocab).vocab_size_by_period
            return sizes[period] if sizes else UNLIMITED

        ids = [limit(f.name) for f in self.id_features]
        return ids, {f.name: limit(f.name) for f in self.sequence_features}

    def period_index(self, ref: int | str) -> int:
        """A period by index (negative counts from the end) or by name."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.lstrip("-").isdigit()):
            i = int(ref)
            if -len(self.periods) <= i < len(self.periods):
                return i % len(self.periods)
        else:
            for p in self.periods:
                if p.name == ref:
                    return p.index
        names = ", ".join(p.name for p in self.periods)
        raise FinedError(f"unknown period {ref!r}; this dataset has {names}")

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        atomic_write_json(Path(directory) / FILE_NAME, asdict(self))

    @classmethod
    def load(cls, directory: str | Path) -> FeatureMap:
        path = Path(directory) / FILE_NAME
        recover_swap(Path(directory))  # a prepare killed inside its swap: the old copy back
        if not Path(directory).is_dir():
            raise FinedError(f"{directory}: no such directory (a prepared dataset was expected)")
        data = read_json(path, "feature map")
        if not isinstance(data, dict):
            raise FinedError(f"{path}: malformed feature map (not a JSON object)")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise FinedError(
                f"{path}: feature-map format {version}, this fined reads format "
                f"{FORMAT_VERSION}: prepare the dataset again with `fined data prepare`"
            )
        try:
            data["features"] = [FeatureInfo(**f) for f in data["features"]]
            data["periods"] = [PeriodInfo(**p) for p in data["periods"]]
            fmap = cls(**data)
        except (TypeError, KeyError, AttributeError) as err:
            raise FinedError(f"{path}: malformed feature map ({err})") from None
        fmap._check_structure(path)
        if (
            fmap.compute_fingerprint() != fmap.fingerprint
            or fmap.compute_data_fingerprint() != fmap.data_fingerprint
        ):
            raise FinedError(f"{path}: fingerprint does not match its contents (edited by hand?)")
        return fmap

    def _check_structure(self, path: Path) -> None:
        """What every later stage assumes: periods numbered 0.., files inside the directory."""
        if not self.periods:
            raise FinedError(f"{path}: malformed feature map (no periods)")
        if [p.index for p in self.periods] != list(range(len(self.periods))):
            raise FinedError(f"{path}: malformed feature map (periods out of order)")
        for p in self.periods:
            file = PurePosixPath(str(p.file))
            if file.is_absolute() or ".." in file.parts or not file.parts:
                raise FinedError(
                    f"{path}: period {p.name}: file {p.file!r} lies outside the dataset's "
                    "directory; refusing to read it"
                )

"""MIND, the Microsoft News Dataset: ``behaviors.tsv`` impression logs with ``news.tsv``.

Each behaviours line is one impression: ``impression id, user id, time (M/D/YYYY h:mm:ss
AM/PM), history (the user's clicked news before, space-separated), impressions (``N1-1
N2-0 ...``: every news shown, and whether it was clicked)``. It becomes one row per news shown:

- ``label``: the click; ``user_id`` (user); ``news_id``, ``category``, ``subcategory`` (item,
  from ``news.tsv``); ``hour``, ``weekday`` (context, from the impression's time);
- ``history``: the last ``max_len`` clicked news (sharing ``news_id``'s vocabulary, so a
  history and a candidate live in one embedding space) and ``history_category``, their
  categories (sharing ``category``'s).

Periods are days. Several behaviours files (the train and dev splits of one release) are read
in the order given, as one log. ``news.tsv`` (about 130 k lines for MIND-large) is held in
memory; behaviours are streamed in blocks. News ids absent from the news files get the
category ``missing``: they are counted and reported (``mind.json`` beside the data, and the
prepare summary), never dropped. A test split (impressions without labels) is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pydantic import Field, field_validator

from fined.config import StrictModel, parse_model
from fined.data.datasets import register
from fined.data.datasets.columns import parse_time, split_list
from fined.data.datasets.source import BaseSource
from fined.data.schema import FeatureSpec, PathText, PeriodSpec, PrepareConfig
from fined.errors import FinedError

BEHAVIORS = ["impression_id", "user_id", "time", "history", "impressions"]
NEWS = ["news_id", "category", "subcategory", "title", "abstract", "url", "title_entities",
        "abstract_entities"]  # fmt: skip
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
MISSING = "missing"  # the category (and subcategory) of a news id without a news.tsv line
_BLOCK_BYTES = 8 << 20


class MindOptions(StrictModel):
    behaviors: list[PathText] = Field(min_length=1)  # behaviors.tsv files, in time order
    news: list[PathText] = Field(min_length=1)  # news.tsv files (of the same release)
    max_len: int = Field(50, ge=1)  # clicked news kept in a history

    @field_validator("behaviors", "news", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value


def default_features(max_len: int) -> list[FeatureSpec]:
    def spec(name: str, kind: str, source: str, **extra: Any) -> FeatureSpec:
        return FeatureSpec.model_validate({"name": name, "kind": kind, "source": source, **extra})

    return [
        spec("user_id", "categorical", "user"),
        spec("news_id", "categorical", "item"),
        spec("category", "categorical", "item"),
        spec("subcategory", "categorical", "item"),
        spec("hour", "categorical", "context"),
        spec("weekday", "categorical", "context"),
        spec("history", "sequence", "user", vocab="news_id", max_len=max_len),
        spec("history_category", "sequence", "user", vocab="category", max_len=max_len),
    ]


def _tsv(path: Path, names: list[str]) -> pacsv.CSVStreamingReader:
    """A MIND file: tab-separated, no header, no quoting (titles hold quotes)."""
    if not path.is_file():
        raise FinedError(f"{path}: no such file")
    return pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, block_size=_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=False
        ),
    )


def _read_news(paths: list[Path]) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``(news ids, categories, subcategories)`` of every news file, first line of an id
    winning."""
    ids, cats, subs = [], [], []
    for path in paths:
        try:
            for batch in _tsv(path, NEWS):
                ids.append(batch.column(0))
                cats.append(batch.column(1))
                subs.append(batch.column(2))
        except pa.ArrowInvalid as err:
            raise FinedError(f"{path}: not a MIND news file ({err})") from None
    if not ids:
        raise FinedError(f"{paths[0]}: no news in the news files")
    news = pa.concat_arrays(ids)
    first = np.unique(news.to_numpy(zero_copy_only=False), return_index=True)[1]
    keep = pa.array(np.sort(first))
    return news.take(keep), pa.concat_arrays(cats).take(keep), pa.concat_arrays(subs).take(keep)


class MindSource(BaseSource):
    name = "mind"
    user_key: str | None = "user_id"

    def __init__(self, options: MindOptions, features: list[FeatureSpec], periods: PeriodSpec):
        super().__init__(features, periods)
        self.options = options
        self.behaviors = [Path(p).expanduser() for p in options.behaviors]
        for path in self.behaviors:
            if not path.is_file():
                raise FinedError(f"{path}: no such file (options.behaviors)")
        self.news_ids, self.categories, self.subcategories = _read_news(
            [Path(p).expanduser() for p in options.news]
        )
        self.report: dict[str, Any] = {}

    def _lookup(self, news: pa.Array) -> tuple[pa.Array, pa.Array, int]:
        """Category and subcategory of each news id (``missing`` for unknown ones), and how
        many were unknown."""
        at = pc.index_in(news, value_set=self.news_ids)
        unknown = at.null_count
        category = pc.fill_null(self.categories.take(at), MISSING)
        subcategory = pc.fill_null(self.subcategories.take(at), MISSING)
        return category, subcategory, unknown

    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        counts = {
            "impressions": 0,
            "rows": 0,
            "missing_news_shown": 0,
            "missing_news_in_histories": 0,
        }
        self.report = {"files": [str(p) for p in self.behaviors], **counts}
        for path in self.behaviors:
            try:
                for block in _tsv(path, BEHAVIORS):
                    yield from self._rows(block, path, chunk_rows)
            except pa.ArrowInvalid as err:
                raise FinedError(f"{path}: not a MIND behaviors file ({err})") from None

    def _rows(self, block: pa.RecordBatch, path: Path, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        shown = split_list(block.column("impressions"), " ")
        tokens = pc.list_flatten(shown)
        parent = pc.list_parent_indices(shown)
        parsed = pc.extract_regex(tokens, r"^(?P<news>[^-\s]+)-(?P<label>[01])$")
        if parsed.null_count:
            bad = tokens.filter(pc.is_null(parsed))[0].as_py()
            raise FinedError(
                f"{path}: impression {bad!r} has no click label (`ID-0` or `ID-1`): a MIND "
                "test split cannot be trained on"
            )
        try:
            when = parse_time(block.column("time"), TIME_FORMAT, "time")
        except FinedError as err:
            raise FinedError(f"{path}: {err}") from None
        news = pc.struct_field(parsed, "news")
        category, subcategory, unknown = self._lookup(news)
        history = split_list(block.column("history"), " ")
        clicked = pc.list_flatten(history)
        history_category, _, unknown_clicked = self._lookup(clicked)
        offsets = pc.list_value_length(history).to_numpy(zero_copy_only=False)
        offsets = pa.array(np.concatenate([[0], np.cumsum(offsets)]).astype(np.int32))
        seconds = pc.fill_null(when, 0).to_numpy(zero_copy_only=False)
        rows = {
            "label": pc.cast(pc.cast(pc.struct_field(parsed, "label"), pa.int64()), pa.int8()),
            "time": when.take(parent),
            "user_id": block.column("user_id").take(parent),
            "news_id": news,
            "category": category,
            "subcategory": subcategory,
            "hour": pa.array(seconds // 3600 % 24).take(parent),
            "weekday": pa.array((seconds // 86400 + 3) % 7).take(parent),  # Monday = 0
            "history": history.take(parent),
            "history_category": pa.ListArray.from_arrays(offsets, history_category).take(parent),
        }
        self.report["impressions"] += block.num_rows
        self.report["rows"] += len(news)
        self.report["missing_news_shown"] += unknown
        self.report["missing_news_in_histories"] += unknown_clicked
        table = pa.table({k: rows[k] for k in ["label", "time", *(f.name for f in self.features)]})
        yield from table.to_batches(max_chunksize=chunk_rows)

    def extra_files(self) -> dict[str, Any]:
        return {"mind.json": self.report}

    def notes(self) -> dict[str, int]:
        """What the prepare summary reports of the source."""
        return {
            "news ids missing from news.tsv (shown)": self.report.get("missing_news_shown", 0),
            "news ids missing from news.tsv (in histories)": self.report.get(
                "missing_news_in_histories", 0
            ),
        }


@register("mind", MindOptions)
def build(config: PrepareConfig) -> MindSource:
    """MIND news clicks: behaviors.tsv (one row per news shown) with news.tsv: by day."""
    options = parse_model(MindOptions, config.options, "options")
    features = config.features or default_features(options.max_len)
    known = {f.name for f in default_features(options.max_len)}
    unknown = [f.name for f in features if f.name not in known]
    if unknown:
        raise FinedError(
            f"dataset mind: no column for feature {unknown[0]!r}; the columns are "
            f"{', '.join(sorted(known))}"
        )
    periods = config.periods or PeriodSpec(by="day")
    return MindSource(options, features, periods)

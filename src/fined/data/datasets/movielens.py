"""MovieLens-100K, read in place from the installed ``recbole`` wheel (never copied).

Label: rating >= 4. User: id, age bucket, gender, occupation, zip prefix. Item: id, release
year (5-year bucket), first genre and all genres. Context: weekday and hour (UTC). History:
the user's previously rated items, and their first genres, strictly before the row's time
stamp (last 20). Periods: calendar months, 1997-09 .. 1998-04.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fined.config import StrictModel, parse_model
from fined.data.datasets import register
from fined.data.datasets.history import events_before
from fined.data.datasets.source import BaseSource
from fined.data.schema import FeatureSpec, PathText, PeriodSpec, PrepareConfig
from fined.errors import FinedError

AGE_EDGES = [18, 25, 35, 45, 50, 56]  # the MovieLens-1M age groups


class MovieLensOptions(StrictModel):
    path: PathText | None = None  # a directory with ml-100k.{inter,user,item}; default: the wheel's
    history_max_len: int = 20


def _features(max_len: int) -> list[FeatureSpec]:
    F = FeatureSpec
    return [
        F(name="user_id", kind="categorical", source="user"),
        F(name="age", kind="categorical", source="user"),
        F(name="gender", kind="categorical", source="user"),
        F(name="occupation", kind="categorical", source="user"),
        F(name="zip", kind="categorical", source="user"),
        F(name="item_id", kind="categorical", source="item"),
        F(name="year", kind="categorical", source="item"),
        F(name="genre", kind="categorical", source="item"),
        F(name="genres", kind="sequence", source="item", vocab="genre", max_len=6),
        F(name="weekday", kind="categorical", source="context"),
        F(name="hour", kind="categorical", source="context"),
        F(name="hist_items", kind="sequence", source="user", vocab="item_id", max_len=max_len),
        F(name="hist_genres", kind="sequence", source="user", vocab="genre", max_len=max_len),
    ]


def wheel_directory() -> Path:
    """``recbole/dataset_example/ml-100k`` inside the installed wheel (recbole not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FinedError(
            "MovieLens-100K is read from the recbole wheel: pip install --no-deps recbole==1.2.1"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"


def _read(path: Path, types: dict[str, pa.DataType]) -> pa.Table:
    if not path.is_file():
        raise FinedError(f"{path}: no such file")
    # RecBole atomic files: tab-separated, header names carry a `:type` suffix.
    table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"))
    table = table.rename_columns([c.split(":")[0] for c in table.column_names])
    missing = [c for c in types if c not in table.column_names]
    if missing:
        raise FinedError(f"{path}: missing column(s) {', '.join(missing)}")
    return table.select(list(types)).cast(pa.schema([(c, t) for c, t in types.items()]))


class MovieLensSource(BaseSource):
    name = "movielens100k"

    def __init__(self, config: PrepareConfig) -> None:
        opts = parse_model(MovieLensOptions, config.options, "options")
        super().__init__(
            config.features or _features(opts.history_max_len),
            config.periods or PeriodSpec(by="month"),
        )
        self.user_key = config.user_key or "user_id"
        self.directory = Path(opts.path) if opts.path else wheel_directory()
        self.max_len = opts.history_max_len
        self._table: pa.Table | None = None

    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        if self._table is None:
            self._table = self._build()
        yield from self._table.to_batches(max_chunksize=chunk_rows)

    def _build(self) -> pa.Table:
        d = self.directory
        inter = _read(
            d / "ml-100k.inter",
            {
                "user_id": pa.int64(),
                "item_id": pa.int64(),
                "rating": pa.float64(),
                "timestamp": pa.float64(),
            },
        )
        users = _read(
            d / "ml-100k.user",
            {
                "user_id": pa.int64(),
                "age": pa.int64(),
                "gender": pa.string(),
                "occupation": pa.string(),
                "zip_code": pa.string(),
            },
        )
        items = _read(
            d / "ml-100k.item",
            {"item_id": pa.int64(), "release_year": pa.string(), "class": pa.string()},
        )
        # Time order (stable), so that row order, held-out tails and histories agree.
        time = pc.cast(inter["timestamp"], pa.int64()).to_numpy()
        order = np.argsort(time, kind="stable")
        inter = inter.take(pa.array(order))
        time = time[order]
        user = inter["user_id"].to_numpy()
        item = inter["item_id"].to_numpy()

        users = users.append_column(
            "age_group", pa.array(np.searchsorted(AGE_EDGES, users["age"].to_numpy(), side="right"))
        )
        users = users.append_column("zip", pc.utf8_slice_codeunits(users["zip_code"], 0, 3))
        # A few rows carry no usable year ("unkonwn", "V"): those become null (-> OOV).
        raw_year = items["release_year"]
        is_year = pc.match_substring_regex(pc.fill_null(raw_year, ""), r"^\d{4}$")
        year = pc.cast(pc.if_else(is_year, raw_year, pa.scalar(None, pa.string())), pa.int64())
        genres = pc.split_pattern(pc.fill_null(items["class"], ""), " ")
        items = items.append_column("year", pc.multiply(pc.divide(year, 5), 5))
        items = items.append_column("genres", genres)
        items = items.append_column("genre", pc.list_element(genres, 0))

        u = _index_by(users["user_id"].to_numpy(), user, "user")
        it = _index_by(items["item_id"].to_numpy(), item, "item")
        offsets, events = events_before(user, time, user, time, self.max_len)
        hist_items = pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)), pa.array(item[events])
        )
        first_genre = items["genre"].take(pa.array(it)).combine_chunks()
        hist_genres = pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)), first_genre.take(pa.array(events))
        )
        stamp = pa.array(time.astype("datetime64[s]"))
        label = (inter["rating"].to_numpy() >= 4).astype(np.int8)
        columns = {
            "label": pa.array(label),
            "time": pa.array(time),
            "user_id": pa.array(user),
            "age": users["age_group"].take(pa.array(u)),
            "gender": users["gender"].take(pa.array(u)),
            "occupation": users["occupation"].take(pa.array(u)),
            "zip": users["zip"].take(pa.array(u)),
            "item_id": pa.array(item),
            "year": items["year"].take(pa.array(it)),
            "genre": first_genre,
            "genres": items["genres"].take(pa.array(it)),
            "weekday": pc.day_of_week(stamp),
            "hour": pc.hour(stamp),
            "hist_items": hist_items,
            "hist_genres": hist_genres,
        }
        missing = [f.name for f in self.features if f.name not in columns]
        if missing:
            known = ", ".join(list(columns)[2:])
            raise FinedError(f"movielens100k has no feature {missing[0]!r}; it has {known}")
        return pa.table(
            {k: columns[k] for k in ["label", "time"] + [f.name for f in self.features]}
        )


def _index_by(keys: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
    """Row index in a side table for each value (every value must be present)."""
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], values)
    pos = np.minimum(pos, len(keys) - 1)
    found = keys[order][pos] == values
    if not found.all():
        raise FinedError(f"MovieLens: {what} {values[~found][0]} has no row in its side table")
    return order[pos]


@register("movielens100k", MovieLensOptions)
def build(config: PrepareConfig) -> MovieLensSource:
    """MovieLens-100K from the recbole wheel: label = rating >= 4, histories; by month."""
    return MovieLensSource(config)

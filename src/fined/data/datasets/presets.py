"""Built-in CSV formats as presets of the ``table`` reader: Criteo, Avazu, TaobaoAd_x1, Ele.me.

Each preset validates its own few options, fills a ``TableOptions`` and supplies default
features, periods and user key; ``features``, ``periods`` and ``user_key`` of the job
override them. Choices made here:

- **criteo**: no time stamps, so ``time`` is the row number and periods are 7 row blocks
  (the log is in time order: the public file spans 7 days). I1..I13 are numeric
  (quantile buckets), C1..C26 hashed categorical strings; all ``context`` (Criteo does not
  say which field is the user or the ad).
- **avazu**: ``hour`` (YYMMDDHH) is the time, periods by day; ``hour_of_day`` and ``weekday``
  are derived from it. ``device_*`` fields are the user side (Avazu has no user id;
  ``device_id`` is the usual proxy and the user key), ``site_*``/``app_*`` the item side.
- **taobao_ad_joined**: the BARS TaobaoAd_x1 CSV. ``click_sequence`` holds ad-group ids (they
  match ``adgroup_id`` values), so it shares that vocabulary; it is kept at 50 ids.
- **eleme**: headerless ``D{day}_{part}.csv`` files; the day in the file name is the period
  key (named ``D{day}``) and ``time`` the row number. ``*_list`` columns are behaviour
  sequences, split on ``;`` by default (the separator public Ele.me pipelines split on);
  the id lists share the vocabulary of their id column, the others (prices, time gaps,
  hours, meal periods, weekdays) are token sequences with their own vocabulary. ``times``
  (the request time stamp) is not a default feature: nearly unique per row, it carries no
  reusable signal, and the day already orders the periods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from fined.config import StrictModel, parse_model
from fined.data.datasets import register
from fined.data.datasets.source import RawSource
from fined.data.datasets.table import TableOptions, TableSource
from fined.data.datasets.taobao import AD, PROFILE
from fined.data.datasets.taobao import build as build_taobao_ad_raw
from fined.data.schema import FeatureKind, FeatureSpec, PathText, PeriodSpec, PrepareConfig, Source
from fined.errors import FinedError


def _spec(
    name: str, kind: FeatureKind = "categorical", source: Source = "context", **extra: object
) -> FeatureSpec:
    return FeatureSpec.model_validate({"name": name, "kind": kind, "source": source, **extra})


def _source(
    name: str,
    config: PrepareConfig,
    table: TableOptions,
    features: list[FeatureSpec],
    periods: PeriodSpec,
    user_key: str | None,
) -> TableSource:
    """The table source with the job's overrides; the default user key only if it is a feature."""
    features = config.features or features
    if config.user_key is None and user_key not in {f.name for f in features}:
        user_key = None
    return TableSource(
        name, table, features, config.periods or periods, config.user_key or user_key
    )


class PathOptions(StrictModel):
    """Options of a preset whose only setting is where the files are."""

    path: PathText  # a file, a directory or a glob


# --- Criteo ---------------------------------------------------------------------------------

CRITEO_COLUMNS = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]


class CriteoOptions(PathOptions):
    delimiter: str = Field(",", min_length=1, max_length=1)  # the original files use "\t"
    header: bool = True  # false: the standard 40 column names, in order


@register("criteo", CriteoOptions)
def build_criteo(config: PrepareConfig) -> TableSource:
    """Criteo CSV/TSV (label, I1..I13, C1..C26): no time stamps, so 7 row blocks."""
    o = parse_model(CriteoOptions, config.options, "options")
    table = TableOptions(
        path=o.path,
        delimiter=o.delimiter,
        header=o.header,
        column_names=None if o.header else CRITEO_COLUMNS,
    )
    features = [_spec(c, "numeric") for c in CRITEO_COLUMNS[1:14]]
    features += [_spec(c) for c in CRITEO_COLUMNS[14:]]
    return _source("criteo", config, table, features, PeriodSpec(by="rows", n_periods=7), None)


# --- Avazu ----------------------------------------------------------------------------------

AVAZU_COLUMNS = [
    "id",
    "click",
    "hour",
    "C1",
    "banner_pos",
    "site_id",
    "site_domain",
    "site_category",
    "app_id",
    "app_domain",
    "app_category",
    "device_id",
    "device_ip",
    "device_model",
    "device_type",
    "device_conn_type",
    *(f"C{i}" for i in range(14, 22)),
]


def _avazu_source(column: str) -> Source:
    if column.startswith("device_"):
        return "user"
    return "item" if column.startswith(("site_", "app_")) else "context"


@register("avazu", PathOptions)
def build_avazu(config: PrepareConfig) -> TableSource:
    """Avazu CSV (hour = YYMMDDHH): by day; device fields are the user side."""
    o = parse_model(PathOptions, config.options, "options")
    table = TableOptions(
        path=o.path,
        label="click",
        time="hour",
        time_format="yymmddhh",
        derive_from_time={"hour_of_day": "hour_of_day", "weekday": "weekday"},
    )
    features = [_spec(c, source=_avazu_source(c)) for c in AVAZU_COLUMNS[3:]]
    features += [_spec("hour_of_day"), _spec("weekday")]
    return _source("avazu", config, table, features, PeriodSpec(by="day"), "device_id")


# --- TaobaoAd_x1 (BARS joined CSV) ----------------------------------------------------------

# The same profile and ad fields as the raw tables: the joined CSV is their join.
TAOBAO_USER = ["userid", *PROFILE]
TAOBAO_AD = ["adgroup_id", *AD]


@register("taobao_ad_joined", PathOptions)
def build_taobao_ad_joined(config: PrepareConfig) -> TableSource:
    """The BARS TaobaoAd_x1 joined CSV (click sequences of ad groups): by day."""
    o = parse_model(PathOptions, config.options, "options")
    table = TableOptions(
        path=o.path, label="clk", time="time_stamp", time_format="%Y-%m-%d %H:%M:%S"
    )
    features = [
        *(_spec(c, source="user") for c in TAOBAO_USER),
        *(_spec(c, source="item") for c in TAOBAO_AD),
        _spec("pid"),
        _spec("price", "numeric", "item"),
        _spec("click_sequence", "sequence", "user", vocab="adgroup_id", max_len=50, delimiter="^"),
    ]
    return _source("taobao_ad_joined", config, table, features, PeriodSpec(by="day"), "userid")


# --- Ele.me ---------------------------------------------------------------------------------

ELEME_USER = ["user_id", "gender", "visit_city", "is_super_vip"]
ELEME_USER_NUMERIC = ["avg_price", "ctr_30", "ord_30", "total_amt_30"]
ELEME_ITEM = [
    "shop_id",
    "item_id",
    "city_id",
    "district_id",
    "shop_aoi_id",
    "shop_geohash_6",
    "shop_geohash_12",
    "brand_id",
    "category_1_id",
    "merge_standard_food_id",
]
ELEME_ITEM_NUMERIC = ["rank_7", "rank_30", "rank_90"]
ELEME_ID_LISTS = [
    "shop_id",
    "item_id",
    "category_1_id",
    "merge_standard_food_id",
    "brand_id",
    "shop_aoi_id",
    "shop_geohash_6",
]  # `{name}_list` shares `{name}`'s vocabulary
ELEME_TOKEN_LISTS = ["price_list", "timediff_list", "hours_list", "time_type_list", "weekdays_list"]
ELEME_CONTEXT = ["hours", "time_type", "weekdays", "geohash12"]
ELEME_COLUMNS = [  # the 39 columns of every D{day}_{part}.csv, in file order
    "label",
    "user_id",
    "gender",
    "visit_city",
    "avg_price",
    "is_super_vip",
    "ctr_30",
    "ord_30",
    "total_amt_30",
    "shop_id",
    "item_id",
    "city_id",
    "district_id",
    "shop_aoi_id",
    "shop_geohash_6",
    "shop_geohash_12",
    "brand_id",
    "category_1_id",
    "merge_standard_food_id",
    "rank_7",
    "rank_30",
    "rank_90",
    "shop_id_list",
    "item_id_list",
    "category_1_id_list",
    "merge_standard_food_id_list",
    "brand_id_list",
    "price_list",
    "shop_aoi_id_list",
    "shop_geohash_6_list",
    "timediff_list",
    "hours_list",
    "time_type_list",
    "weekdays_list",
    "times",
    "hours",
    "time_type",
    "weekdays",
    "geohash12",
]


class ElemeOptions(PathOptions):
    list_delimiter: str = Field(";", min_length=1)  # separator inside the *_list columns
    max_len: int = Field(50, ge=1)  # ids kept per behaviour list


@register("eleme", ElemeOptions)
def build_eleme(config: PrepareConfig) -> TableSource:
    """Ele.me D{day}_{part}.csv files, no header, 39 columns: the file's day is the period."""
    o = parse_model(ElemeOptions, config.options, "options")
    table = TableOptions(
        path=o.path,
        header=False,
        column_names=ELEME_COLUMNS,
        period_from_file=r"D(\d+)_",
        period_name="D{key}",
        dir_glob="D*_*.csv",
        list_delimiter=o.list_delimiter,
    )
    seq: dict[str, Any] = {"kind": "sequence", "source": "user", "max_len": o.max_len}
    features = [
        *(_spec(c, source="user") for c in ELEME_USER),
        *(_spec(c, "numeric", "user") for c in ELEME_USER_NUMERIC),
        *(_spec(c, source="item") for c in ELEME_ITEM),
        *(_spec(c, "numeric", "item") for c in ELEME_ITEM_NUMERIC),
        *(_spec(f"{c}_list", vocab=c, **seq) for c in ELEME_ID_LISTS),
        *(_spec(c, **seq) for c in ELEME_TOKEN_LISTS),
        *(_spec(c) for c in ELEME_CONTEXT),
    ]
    return _source("eleme", config, table, features, PeriodSpec(by="key"), "user_id")


@register("taobao_ad")
def build_taobao_ad(config: PrepareConfig) -> RawSource:
    """Taobao display ads in either layout: ``options.layout`` is ``raw`` (a directory with
    the four Tianchi tables) or ``joined`` (the BARS TaobaoAd_x1 CSV); by default, a
    directory means raw and a file means joined."""
    options = dict(config.options)
    layout = options.pop("layout", None)
    if layout is None:
        layout = "raw" if Path(str(options.get("path", ""))).is_dir() else "joined"
    if layout not in ("raw", "joined"):
        raise FinedError(f"options.layout: expected 'raw' or 'joined', got {layout!r}")
    inner = config.model_copy(update={"options": options})
    if layout == "raw":
        return build_taobao_ad_raw(inner)
    return build_taobao_ad_joined(inner)

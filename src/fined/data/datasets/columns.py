"""Column parsers shared by the adapters: binary labels, time stamps, delimited lists.

Each raises a FinedError that names the column and shows an offending value, so a malformed
file ends in one readable line.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fined.errors import FinedError

_OFFSET = r"(Z|[+-]\d\d:?\d\d)$"  # what %z reads at the end of a time stamp


def binary_label(values: pa.Array | pa.ChunkedArray, column: str) -> pa.Array:
    """Validate a 0/1 label column (ints, floats or strings) and return it as int8."""
    if values.null_count:
        raise FinedError(f"label column {column!r}: {values.null_count} empty value(s)")
    try:
        as_float = pc.cast(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = _first_bad_number(values)
        raise FinedError(f"label column {column!r}: non-binary value {bad!r}") from None
    arr = as_float.to_numpy(zero_copy_only=False)
    bad = arr[(arr != 0) & (arr != 1)]
    if bad.size:
        raise FinedError(f"label column {column!r}: non-binary value {bad[0]:g} (expected 0 or 1)")
    return pa.array(arr.astype(np.int8))


def _first_bad_number(values: pa.Array | pa.ChunkedArray) -> object:
    """The first value Arrow cannot read as a number, as it is (Python's float() accepts
    some that Arrow refuses, such as " 0")."""
    for v in values.to_pylist():
        try:
            pc.cast(pa.array([v], values.type), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return v
    return "?"


def finite_numbers(values: pa.Array, named: str, row0: int) -> pa.Array:
    """``values`` (float64), refused if one is infinite: a mean, a standard deviation or
    quantiles fitted on it are not numbers, and a model scoring one puts it in the top
    bucket. ``named``: the column as messages name it (``column 'price'``); ``row0``: the
    input row number of the first value."""
    arr = values.to_numpy(zero_copy_only=False)  # nulls read as NaN: missing, allowed
    bad = np.flatnonzero(np.isinf(arr))
    if bad.size:
        i = int(bad[0])
        raise FinedError(
            f"numeric {named}: row {row0 + i + 1:,} of the input holds {arr[i]}, "
            "not a finite number (leave the field empty for a missing value)"
        )
    return values


def parse_time(values: pa.Array | pa.ChunkedArray, fmt: str, column: str) -> pa.Array:
    """Parse a time column into int64 unix seconds.

    ``fmt``: ``unix`` (seconds, fractions floored), ``unix_ms``, ``yymmddhh`` (Avazu's
    ``hour``), or a strptime format such as ``%Y-%m-%d %H:%M:%S`` (read as UTC; a format that
    ends in ``%z`` reads the offset, ``+05:00``, ``+0500`` or ``Z``, to the UTC instant).
    Empty values stay null: what to do with rows without a time stamp is decided where
    periods are cut.
    """
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)
    try:
        return _convert_time(values, fmt)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        example = _first_unparsable(values, fmt)
        raise FinedError(
            f"time column {column!r}: cannot parse {example!r} as {fmt!r} ({err})"
        ) from None


def _convert_time(values: pa.Array | pa.ChunkedArray, fmt: str) -> pa.Array:
    """The conversion itself; raises Arrow errors on bad values."""
    if fmt in ("unix", "unix_ms"):
        secs = pc.cast(pc.floor(pc.cast(values, pa.float64())), pa.int64())
        return pc.divide(secs, 1000) if fmt == "unix_ms" else secs
    text = pc.cast(values, pa.string())
    if fmt == "yymmddhh":
        text, fmt = pc.binary_join_element_wise("20", text, ""), "%Y%m%d%H"
    parsed = pc.strptime(text, fmt, "s")  # with %z: the UTC instant
    if fmt.endswith("%z"):
        # The check below writes back in UTC, never as the offset read: check the local
        # date and time without it.
        local = pc.replace_substring_regex(text, _OFFSET, "")
        local_fmt = fmt.removesuffix("%z")
        _check_round_trip(local, pc.strptime(local, local_fmt, "s"), local_fmt)
    else:
        _check_round_trip(text, parsed, fmt)
    return pc.cast(parsed, pa.int64())


def _canonical(text: pa.Array) -> pa.Array:
    """Text with leading zeros of numbers dropped and letters in lower case."""
    return pc.utf8_lower(pc.replace_substring_regex(text, r"(^|\D)0+(\d)", r"\1\2"))


def _check_round_trip(text: pa.Array, parsed: pa.Array, fmt: str) -> None:
    """Arrow's strptime rolls impossible dates over (11/31 becomes 12/01): a time stamp
    must read back as it was written, or it is refused."""
    back = pc.strftime(parsed, fmt)
    same = pc.equal(_canonical(text), _canonical(back))
    if not pc.all(pc.fill_null(same, True)).as_py():
        bad = text.filter(pc.invert(pc.fill_null(same, True)))[0].as_py()
        raise pa.ArrowInvalid(f"{bad!r} is not a valid date")


def _first_unparsable(values: pa.Array | pa.ChunkedArray, fmt: str) -> str:
    for v in values.to_pylist():
        if v is None:
            continue
        try:
            _convert_time(pa.array([v]), fmt)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return str(v)
    return "?"


def split_list(values: pa.Array | pa.ChunkedArray, delimiter: str) -> pa.Array:
    """Split delimited text (``"12^7^9"``) into ``list<string>``; empty or null -> empty list."""
    text = pc.fill_null(pc.cast(values, pa.string()), "")
    parts = pc.split_pattern(text, delimiter)
    flat = pc.list_flatten(parts)
    keep = pc.not_equal(flat, "")
    if pc.all(keep).as_py() in (True, None):
        return parts
    # Drop empty tokens ("" -> [""] and "a^^b" -> ["a", "", "b"]) while keeping row boundaries.
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    row = np.repeat(np.arange(len(lengths)), lengths)
    kept = keep.to_numpy(zero_copy_only=False)
    counts = np.bincount(row[kept], minlength=len(lengths))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(keep))

"""The value rules: what Braze may send in each column, and what becomes of it.

Both loops of the flattener apply these rules (the C loop the same checks, in C). On the
Python loop, a column whose values all have the expected Python type (and, for
``revenue``, lie within +-2**53) goes through ``array.array``, which converts in C and
refuses anything else. Every other column takes a checked path that decides value by value,
never through pyarrow's type inference (which turns ``true`` into 1.0 next to floats) or
its conversion to a target type (which truncates ``1.5`` to 1 for int64). What Braze sent
either fits its column losslessly or the whole response is rejected, with a reason, and
writes no row at all:

=============================  ==============================================================
value                          outcome
=============================  ==============================================================
integer metric: JSON int       kept, negative values included, if within int64
integer metric: ``3.0``        kept as the int 3 (integral float, abs <= 2**53: lossless)
integer metric: ``1.5``,       response rejected (``FlatBatch.rejected``): the field, the
``"12"``, ``true``, object,    value as JSON text, the table, channel and day
list, beyond int64
``revenue``: JSON int          kept as float64 if abs <= 2**53 (beyond, the double would
                               not be the number sent: rejected)
``revenue``: finite float      kept as float64
``revenue``: ``"12.50"``,      response rejected
``true``, object, list
``variation_name``,            string or null; anything else: response rejected
``variation_api_id``
any known field: ``null``      kept as null ("not reported", never 0)
unknown field or channel       kept in ``extra_metrics`` as the JSON text of the value
=============================  ==============================================================

``bool`` is never a number here, although Python makes it an ``int`` subclass. orjson
reads an integer beyond 2**64 as the nearest float, so it meets the float rules: rejected
as an integer metric (beyond 2**53), kept as that double for ``revenue``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from datetime import date
from typing import Any, Final

import orjson
import pyarrow as pa

from .schema import (
    EXTRA_TYPE,
    STATS_FLOAT_METRICS,
    STATS_INT_METRICS,
    STATS_SCHEMA,
    STATS_STRING_FIELDS,
    TOTALS_FLOAT_METRICS,
    TOTALS_INT_METRICS,
    TOTALS_SCHEMA,
)

_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_INT, _FLOAT, _STR = 0, 1, 2
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
#: Beyond this, not every integer has an exact double: the bound of lossless int <-> float.
_EXACT: Final = 2**53
_BAD: Final = object()  # a value that does not fit its column


def _fit_int(v: Any) -> Any:
    t = type(v)
    if t is int:
        return v if _I64_MIN <= v <= _I64_MAX else _BAD
    if t is float:
        return int(v) if v.is_integer() and -_EXACT <= v <= _EXACT else _BAD
    return None if v is None else _BAD


def _fit_float(v: Any) -> Any:
    t = type(v)
    if t is float:
        return v if math.isfinite(v) else _BAD
    if t is int:
        return float(v) if -_EXACT <= v <= _EXACT else _BAD
    return None if v is None else _BAD


def _fit_str(v: Any) -> Any:
    return v if v is None or type(v) is str else _BAD


#: kind -> (the value as its column holds it, or _BAD; what the column accepts, for reasons)
_FIT: Final[dict[int, tuple[Callable[[Any], Any], str]]] = {
    _INT: (_fit_int, "expected an integer within int64 (an integral float only within 2**53)"),
    _FLOAT: (_fit_float, "expected a finite number (an integer only within 2**53)"),
    _STR: (_fit_str, "expected a string or null"),
}
_ARROW_TYPE: Final = {_INT: pa.int64(), _FLOAT: pa.float64(), _STR: pa.string()}
_ONLY_INT: Final = {int}
_ONLY_STR: Final = {str}
_INT_OR_FLOAT: Final = {int, float}


class _BadValues(Exception):
    """Row positions (within one group) whose values do not fit their column."""

    def __init__(self, column: str, rows: list[int]) -> None:
        super().__init__(column)
        self.column = column
        self.rows = rows


def _convert(name: str, values: tuple[Any, ...], kind: int) -> pa.Array:
    """Build one column exactly, or raise :class:`_BadValues` naming the offending rows.

    The common case (every value a plain int; for revenue, plain numbers within 2**53)
    goes through ``array.array``, which converts in C, refuses floats, bools and
    out-of-range ints, and is handed to Arrow without a copy. Anything else (nulls, mixed
    types, bad values) is decided value by value by the ``_FIT`` rules.
    """
    types = set(map(type, values))
    if kind == _INT:
        if types == _ONLY_INT:
            try:
                return _from_buffer(pa.int64(), array("q", values))
            except OverflowError:
                pass
    elif kind == _FLOAT:
        # Within 2**53 in magnitude every int has an exact double (and JSON has no NaN).
        if types and types <= _INT_OR_FLOAT and min(values) >= -_EXACT and max(values) <= _EXACT:
            return _from_buffer(pa.float64(), array("d", values))
    elif types == _ONLY_STR:
        return pa.array(values, pa.string())
    fit = _FIT[kind][0]
    fitted = [fit(v) for v in values]
    bad = [i for i, v in enumerate(fitted) if v is _BAD]
    if bad:
        raise _BadValues(name, bad)
    return pa.array(fitted, _ARROW_TYPE[kind])


_NULLS: dict[pa.DataType, pa.Array] = {}


def _nulls(n: int, type_: pa.DataType) -> pa.Array:
    """An all-null column of length ``n``: a zero-copy slice of one shared array per type,
    since most metric columns of most groups are absent (a channel lacks them)."""
    arr = _NULLS.get(type_)
    if arr is None or len(arr) < n:
        arr = _NULLS[type_] = pa.nulls(max(n, 2 * len(arr) if arr is not None else 65_536), type_)
    return arr.slice(0, n)


def _from_buffer(type_: pa.DataType, buf: array[Any]) -> pa.Array:
    return pa.Array.from_buffers(type_, len(buf), [None, pa.py_buffer(buf)])


def _day_text(days: int) -> str:
    return date.fromordinal(days + _EPOCH_ORDINAL).isoformat()


def _json_text(value: Any, limit: int = 60) -> str:
    """The value as Braze sent it (JSON, not Python repr: ``true``, ``"12"``), shortened."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


_STATS_KINDS: Final = {
    **{n: _INT for n in STATS_INT_METRICS},
    **{n: _FLOAT for n in STATS_FLOAT_METRICS},
    **{n: _STR for n in STATS_STRING_FIELDS},
}
_TOTALS_KINDS: Final = {
    **{n: _INT for n in TOTALS_INT_METRICS},
    **{n: _FLOAT for n in TOTALS_FLOAT_METRICS},
}


#: Known fields in schema order, with their kinds: the C accumulators' columns.
_STATS_FIELDS: Final = tuple((f.name, _STATS_KINDS[f.name]) for f in STATS_SCHEMA if f.name in _STATS_KINDS)
_TOTALS_FIELDS: Final = tuple((f.name, _TOTALS_KINDS[f.name]) for f in TOTALS_SCHEMA if f.name in _TOTALS_KINDS)


def _extras_column(extras: list[tuple[str, tuple[Any, ...]]], n: int) -> pa.Array:
    """Unknown fields as a map of name -> JSON text, lossless whatever their type."""
    encoded = [(name, [orjson.dumps(v).decode() for v in values]) for name, values in extras]
    rows = [[(name, vals[i]) for name, vals in encoded] for i in range(n)]
    return pa.array(rows, type=EXTRA_TYPE)

"""Property-based tests of the flattener, through its public API only (``Flattener.add`` and
``build``): the safety net for any rewrite of flatten.

* Random well-formed responses (known and unknown channels, random key order, missing and
  extra metrics, control-group entries, int or float revenue, unicode, empty and very long
  variation names, days out of order or listed twice) flatten to exactly the rows of the
  independent dict-per-row reference in ``tests/truth.py``, types included, whatever the
  builds in between.
* Random malformed responses never produce a row and never raise anything but
  ``BadResponse`` from ``add()`` (structure) or a rejection reported by ``build()`` (values,
  conflicting copies of a day).

Examples: 120 + 120, under 10 s on 2 shared cores (``BULKEXPORT_EXAMPLES=5000`` for a long
hunt). Under CI (``CI`` set, as .ci/run does) the examples are derandomized: the same ones
every run, so a red CI is never a new random example that nobody can reproduce; locally they
are random, and a failure is kept in hypothesis's example database and replayed first on the
next run.
"""

from __future__ import annotations

import collections
import copy
import json
import os
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from bulkexport.errors import BadResponse
from bulkexport.flatten import Flattener
from bulkexport.schema import (
    KNOWN_CHANNELS,
    STATS_INT_METRICS,
    STATS_SCHEMA,
    TOTALS_INT_METRICS,
    TOTALS_SCHEMA,
)

from .truth import Rejected, response_rows

CI = bool(os.environ.get("CI"))
PROFILE = settings(
    max_examples=int(os.environ.get("BULKEXPORT_EXAMPLES", "120")),
    deadline=None,
    derandomize=CI,
    database=None if CI else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

STATS_KNOWN = {*STATS_INT_METRICS, "revenue"}
TOTALS_KNOWN = {*TOTALS_INT_METRICS, "revenue"}
UNKNOWN_CHANNELS = ["line", "rcs", "Ünïcode channel", ""]
UNKNOWN_FIELDS = ["amp_opens", "friend_adds", "carousel_slide_1_Summer Sale_click", "Ünï/metric", "date", ""]
FIRST_DAY = date(2026, 11, 1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# -- well-formed values --------------------------------------------------------------------

counts = st.one_of(
    st.integers(0, 10**7),
    st.integers(-(2**63), 2**63 - 1),  # negative and extreme counts are stored as sent
    st.integers(-(2**53), 2**53).map(float),  # 3.0 is the count 3
    st.none(),
)
revenues = st.one_of(
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just(0),
    st.none(),
)
names = st.one_of(
    st.text(max_size=12),
    st.just(""),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(200, 1500)),  # very long
    st.none(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


def _value(name: str) -> st.SearchStrategy[Any]:
    if name == "revenue":
        return revenues
    if name in ("variation_name", "variation_api_id"):
        return names
    if name in STATS_KNOWN or name in TOTALS_KNOWN:
        return counts
    return json_values


@st.composite
def _object(
    draw: st.DrawFn, pool: list[str], max_size: int, value: Callable[[str], st.SearchStrategy[Any]] = _value,
) -> dict[str, Any]:  # fmt: skip
    """Fields drawn from the pool, in a random order, each with a value of its kind."""
    keys = draw(st.lists(st.sampled_from(pool), unique=True, max_size=max_size))
    return {k: draw(value(k)) for k in keys}


ENTRY_POOL = [*sorted(STATS_KNOWN), "variation_name", "variation_api_id", "time", "channel", *UNKNOWN_FIELDS]


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 4)) == 0:  # a control group: enrolled, no send counts
        control = {"variation_name": "Control Group", "enrolled": draw(counts)}
        control.update(draw(_object(["unique_recipients", "revenue", "conversions", "conversions1"], 4)))
        return control
    return draw(_object(ENTRY_POOL, 12))


@st.composite
def days(draw: st.DrawFn, when: date) -> dict[str, Any]:
    time = when.isoformat() + draw(st.sampled_from(["", "", "T00:00:00Z", "T23:59:59-05:00"]))
    day: dict[str, Any] = {"time": time}
    shape = draw(st.sampled_from(["full", "full", "time_only", "empty", "totals_only", "no_messages_key"]))
    if shape in ("full", "empty", "totals_only"):
        channels = draw(st.lists(st.sampled_from(sorted(KNOWN_CHANNELS) + UNKNOWN_CHANNELS), unique=True, max_size=3))
        day["messages"] = {} if shape != "full" else {c: draw(st.lists(entries(), max_size=3)) for c in channels}
    if shape in ("full", "totals_only", "no_messages_key"):
        day.update(draw(_object(sorted(TOTALS_KNOWN) + UNKNOWN_FIELDS, 8)))
    return _shuffled(draw, day)


def _shuffled(draw: st.DrawFn, obj: dict[str, Any]) -> dict[str, Any]:
    keys = draw(st.permutations(list(obj)))
    return {k: obj[k] for k in keys}


@st.composite
def responses(draw: st.DrawFn) -> dict[str, Any]:
    offsets = draw(st.lists(st.integers(0, 30), unique=True, max_size=5))  # out of order
    data = [draw(days(FIRST_DAY + timedelta(days=o))) for o in offsets]
    if data and draw(st.booleans()):
        i = draw(st.integers(0, len(data) - 1))
        twin = _shuffled(draw, copy.deepcopy(data[i]))
        if draw(st.booleans()):  # a conflicting copy: one number differs
            twin["conversions"] = (data[i].get("conversions") or 0) + 1
        data.insert(draw(st.integers(0, len(data))), twin)
    return {"message": "success", "data": data}


# -- malformed responses ---------------------------------------------------------------------

STRUCTURAL = [
    "not_json", "not_object", "no_message", "message_failed", "data_not_list", "day_not_object",
    "no_time", "time_not_string", "time_not_date", "messages_not_object", "channel_not_list",
    "entry_not_object",
]  # fmt: skip
BAD_VALUES = {
    "int": [1.5, "12", True, False, {}, [1], 2**63, -(2**63) - 1, 2**64, 2.0**60, 1e300],
    "revenue": ["12.50", True, False, {"usd": 1}, [], 2**53 + 1, -(2**63)],
    "str": [7, 1.5, True, {}, ["A"]],
}


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, bytes, dict[str, Any] | None]:
    """(what is wrong, the body, the payload if it is still JSON of the documented shape)."""
    doc = draw(responses())
    kind = draw(st.sampled_from([*STRUCTURAL, "bad_value"]))
    if kind == "bad_value":
        _put_bad_value(draw, doc)
        return kind, _dumps(draw, doc), doc
    return kind, _break(draw, kind, doc), None


def _put_bad_value(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    data = doc["data"]
    if not data:
        data.append({"time": "2026-11-15"})
    day = draw(st.sampled_from(data))
    entries_ = [e for es in (day.get("messages") or {}).values() for e in es]
    if entries_ and draw(st.booleans()):
        target, pool = draw(st.sampled_from(entries_)), [*sorted(STATS_KNOWN), "variation_name", "variation_api_id"]
    else:
        target, pool = day, sorted(TOTALS_KNOWN)
    name = draw(st.sampled_from(pool))
    group = "revenue" if name == "revenue" else "str" if name.startswith("variation") else "int"
    target[name] = draw(st.sampled_from(BAD_VALUES[group]))


def _break(draw: st.DrawFn, kind: str, doc: dict[str, Any]) -> bytes:
    data = doc["data"]
    if kind == "not_json":
        body = _dumps(draw, doc)
        return body[: draw(st.integers(0, len(body) - 1))]
    if kind == "not_object":
        return _dumps(draw, [doc])
    if kind == "no_message":
        del doc["message"]
    elif kind == "message_failed":
        doc["message"] = draw(st.sampled_from(["Export failed", "", None, 1, "SUCCESS", ["success"]]))
    elif kind == "data_not_list":
        doc["data"] = draw(st.sampled_from([None, {}, {"time": "2026-11-01"}, "[]", 3]))
    else:
        if not data:
            data.append({"time": "2026-11-15", "messages": {"email": [{"sent": 1}]}})
        day = draw(st.sampled_from(data))
        if kind == "day_not_object":
            data[data.index(day)] = draw(st.sampled_from([None, 1, "2026-11-01", [day]]))
        elif kind == "no_time":
            del day["time"]
        elif kind == "time_not_string":
            day["time"] = draw(st.sampled_from([None, 20261101, ["2026-11-01"], {"date": "2026-11-01"}]))
        elif kind == "time_not_date":
            day["time"] = draw(st.sampled_from(["", "yesterday", "2026-13-01", "2026-02-30", "11/01/2026"]))
        elif kind == "messages_not_object":
            day["messages"] = draw(st.sampled_from([[], [{"email": []}], "email", 0, True]))
        else:
            messages = day.setdefault("messages", {})
            if type(messages) is not dict:
                day["messages"] = messages = {}
            channel = draw(st.sampled_from(["email", "line"]))
            if kind == "channel_not_list":
                messages[channel] = draw(st.sampled_from([None, {}, {"sent": 1}, "A", 0]))
            else:
                entry = draw(st.sampled_from([None, 0, "A", ["sent", "1"], [{"sent": 1}], True]))
                messages.setdefault(channel, []).insert(0, entry)
    return _dumps(draw, doc)


def _dumps(draw: st.DrawFn, doc: Any) -> bytes:
    # The standard library writes ints of any size and raw or escaped unicode.
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


# -- the properties --------------------------------------------------------------------------


def _bag(rows: list[dict[str, Any]]) -> collections.Counter[tuple[Any, ...]]:
    """Rows as a multiset, each value with its type; nulls and absent fields are the same."""
    out: collections.Counter[tuple[Any, ...]] = collections.Counter()
    for row in rows:
        items = []
        for k, v in row.items():
            if v is None or k in ("exported_at", "run_id"):
                continue
            if k == "extra_metrics":
                v = sorted(v)
            items.append((k, type(v).__name__, repr(v)))
        out[tuple(sorted(items))] += 1
    return out


class _Run:
    """Feeds responses to one Flattener, building at random points, and keeps the output."""

    def __init__(self, accelerate: bool) -> None:
        self.flat = Flattener("run-1", accelerate=accelerate)
        assert (self.flat._accel is not None) == accelerate  # the C loop is built (CI has a compiler)
        self.stats: list[dict[str, Any]] = []
        self.totals: list[dict[str, Any]] = []
        self.done: list[int] = []
        self.rejected: dict[int, str] = {}
        self.ts: dict[tuple[str, str], int] = {}

    def add(self, token: int, body: bytes) -> None:
        cid, sid = f"c{token % 2}", f"s-{token}-ü"
        self.ts[cid, sid] = 1_790_000_000_000_000 + token
        self.flat.add(token, cid, sid, body, self.ts[cid, sid])

    def build(self) -> None:
        fb = self.flat.build()
        assert len(self.flat) == 0
        for batch in fb.stats:
            assert batch.schema == STATS_SCHEMA  # one type per column, whatever the batch held
            self.stats += batch.to_pylist()
        for batch in fb.totals:
            assert batch.schema == TOTALS_SCHEMA
            self.totals += batch.to_pylist()
        assert fb.stats_rows == sum(b.num_rows for b in fb.stats)
        assert fb.totals_rows == sum(b.num_rows for b in fb.totals)
        assert not set(fb.done) & set(fb.rejected)
        self.done += fb.done
        self.rejected.update(fb.rejected)

    def check_rows(self, payloads: dict[int, dict[str, Any]]) -> None:
        """Every row is the reference's, once; run_id and exported_at are the response's."""
        want_stats: list[dict[str, Any]] = []
        want_totals: list[dict[str, Any]] = []
        for token in self.done:
            s, t = response_rows(f"c{token % 2}", f"s-{token}-ü", payloads[token], STATS_KNOWN, TOTALS_KNOWN)
            want_stats += s
            want_totals += t
        assert _bag(self.stats) == _bag(want_stats)
        assert _bag(self.totals) == _bag(want_totals)
        for row in self.stats + self.totals:
            assert row["run_id"] == "run-1"
            micros = (row["exported_at"] - EPOCH) // timedelta(microseconds=1)
            assert micros == self.ts[row["campaign_id"], row["send_id"]]


#: Every property holds on both paths: the C loop (the common case) and pure Python.
BOTH = pytest.mark.parametrize("accelerate", [True, False], ids=["c", "python"])


@BOTH
@PROFILE
@given(st.lists(responses(), min_size=1, max_size=4), st.lists(st.booleans(), min_size=4, max_size=4))
def test_well_formed_responses_equal_the_reference(
    accelerate: bool, docs: list[dict[str, Any]], build_after: list[bool]
) -> None:
    run = _Run(accelerate)
    conflicting = set()
    for token, doc in enumerate(docs):
        try:
            response_rows("c", "s", doc, STATS_KNOWN, TOTALS_KNOWN)
        except Rejected:
            conflicting.add(token)  # a day listed twice with different contents
        run.add(token, json.dumps(doc).encode())
        if build_after[token]:
            run.build()
    run.build()
    assert set(run.rejected) == conflicting
    for reason in run.rejected.values():
        assert reason.endswith("is listed twice with different contents; no row of this response was written")
    assert sorted(run.done) == [t for t in range(len(docs)) if t not in conflicting]
    run.check_rows(dict(enumerate(docs)))


@BOTH
@PROFILE
@given(st.lists(st.one_of(malformed(), responses().map(lambda d: ("", json.dumps(d).encode(), d))),
                min_size=1, max_size=5))  # fmt: skip
def test_malformed_responses_never_write_a_row(
    accelerate: bool, cases: list[tuple[str, bytes, dict[str, Any] | None]]
) -> None:
    run = _Run(accelerate)
    structural, by_value, payloads = set(), set(), {}
    for token, (kind, body, doc) in enumerate(cases):
        try:
            run.add(token, body)
        except BadResponse as exc:
            assert kind in STRUCTURAL, (kind, exc)
            assert "\n" not in str(exc) and len(str(exc)) < 300
            structural.add(token)
            continue
        assert kind not in STRUCTURAL, f"{kind} was accepted: {body[:200]!r}"
        assert doc is not None
        payloads[token] = doc
        try:
            response_rows("c", "s", doc, STATS_KNOWN, TOTALS_KNOWN)
        except Rejected:
            by_value.add(token)
        else:
            assert kind == "", "a bad value the reference accepts"
    run.build()
    assert set(run.rejected) == by_value
    assert sorted(run.done) == sorted(set(payloads) - by_value)
    run.check_rows(payloads)  # only the good responses' rows, each exactly once


@BOTH
@pytest.mark.parametrize("value", [True, False])
def test_bool_is_never_a_number(accelerate: bool, value: bool) -> None:
    """Python's bool is an int: explicit examples, whatever hypothesis draws. A bool next to
    floats in one column is the case pyarrow's inference would turn into 1.0."""
    run = _Run(accelerate)
    cases = [
        ({"sent": 3.0, "revenue": 1.5}, {"conversions": 2.0, "revenue": 0.5}),  # good
        ({"sent": value, "revenue": 1.5}, {"conversions": 2.0, "revenue": 0.5}),
        ({"sent": 3.0, "revenue": value}, {"conversions": 2.0, "revenue": 0.5}),
        ({"sent": 3.0, "revenue": 1.5}, {"conversions": value, "revenue": 0.5}),
        ({"sent": 3.0, "revenue": 1.5}, {"conversions": 2.0, "revenue": value}),
    ]
    for token, (entry, totals) in enumerate(cases):
        day = {"time": "2026-11-20", "messages": {"email": [{"variation_name": "A", **entry}]}, **totals}
        run.add(token, json.dumps({"message": "success", "data": [day]}).encode())
    run.build()
    assert sorted(run.rejected) == [1, 2, 3, 4] and run.done == [0]
    assert [(r["sent"], r["revenue"]) for r in run.stats] == [(3, 1.5)]
    assert [(r["conversions"], r["revenue"]) for r in run.totals] == [(2, 0.5)]


# -- the C reader of bytes -------------------------------------------------------------------
# It takes a strict subset of JSON and leaves the rest, keeping nothing, to orjson and the
# other two loops. Two things to show: what it takes, it reads exactly as orjson + the other
# loops would (whatever the whitespace, key order, unicode, number spelling); and it does
# take the common case (else the speed-up is silently gone).

plain_names = st.one_of(
    st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='"\\'), max_size=12),
    st.builds(lambda s, n: s * n, st.sampled_from(["A", "Ü", "変"]), st.integers(100, 600)),
    st.none(),
)  # nothing json.dumps would escape
plain_counts = st.one_of(st.integers(-(10**18) + 1, 10**18 - 1), st.integers(-(2**53), 2**53).map(float), st.none())


def _plain_value(name: str) -> st.SearchStrategy[Any]:
    if name == "revenue":
        return revenues
    return plain_names if name.startswith("variation_") else plain_counts


@st.composite
def plain_responses(draw: st.DrawFn) -> dict[str, Any]:
    """Known fields and channels only, each day once: the shape Braze sends."""
    data = []
    for offset in draw(st.lists(st.integers(0, 30), unique=True, max_size=5)):
        time = (FIRST_DAY + timedelta(days=offset)).isoformat() + draw(st.sampled_from(["", "T00:00:00Z", " 12:00"]))
        day: dict[str, Any] = {"time": time}
        shape = draw(st.sampled_from(["full", "full", "time_only", "empty", "totals_only", "null_messages"]))
        if shape == "full":
            channels = draw(st.lists(st.sampled_from(sorted(KNOWN_CHANNELS)), unique=True, max_size=3))
            pool = [*sorted(STATS_KNOWN), "variation_name", "variation_api_id"]
            day["messages"] = {c: draw(st.lists(_object(pool, 12, _plain_value), max_size=3)) for c in channels}
        elif shape in ("empty", "null_messages"):
            day["messages"] = {} if shape == "empty" else None
        if shape in ("full", "totals_only"):
            day.update(draw(_object(sorted(TOTALS_KNOWN), 8, _plain_value)))
        data.append(_shuffled(draw, day))
    return _shuffled(draw, {"message": "success", "data": data})


def _spaced(draw: st.DrawFn, doc: Any) -> bytes:
    indent = draw(st.sampled_from([None, None, 0, 2, "\t"]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\r\n", " :\t")]))
    return json.dumps(doc, ensure_ascii=False, indent=indent, separators=separators).encode()


@PROFILE
@given(st.lists(plain_responses(), min_size=1, max_size=4), st.data())
def test_the_c_reader_takes_every_plain_response_and_reads_what_the_reference_reads(
    docs: list[dict[str, Any]], data: st.DataObject
) -> None:
    run = _Run(True)
    for token, doc in enumerate(docs):
        run.add(token, _spaced(data.draw, doc))
    assert run.flat._direct == len(docs)  # none went through orjson
    run.build()
    assert not run.rejected and sorted(run.done) == list(range(len(docs)))
    run.check_rows(dict(enumerate(docs)))


def _outcome(accelerate: bool, bodies: list[bytes]) -> tuple[Any, ...]:
    """Everything a run of these bodies yields: per body the BadResponse text or None, then
    the rows (values with their types), rejections, and how many the C reader took."""
    run = _Run(accelerate)
    errors: list[str | None] = []
    for token, body in enumerate(bodies):
        try:
            run.add(token, body)
            errors.append(None)
        except BadResponse as exc:
            errors.append(str(exc))
    run.build()
    return errors, _bag(run.stats), _bag(run.totals), run.rejected, sorted(run.done), run.flat._direct


json_numbers = st.from_regex(r"\A-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?\Z")


@PROFILE
@given(st.lists(st.tuples(st.sampled_from(["sent", "revenue"]), json_numbers), min_size=1, max_size=8))
def test_numbers_read_from_bytes_are_the_numbers_orjson_reads(values: list[tuple[str, str]]) -> None:
    """Any JSON number, as an int metric and as revenue, in an entry and in a day: the same
    value, rejection or null as orjson + the Python loop (the ground truth)."""
    bodies = []
    for name, text in values:
        total = "conversions" if name == "sent" else "revenue"
        bodies.append(
            f'{{"message":"success","data":[{{"time":"2026-11-20","messages":{{"email":'
            f'[{{"variation_name":"A","{name}":{text}}}]}},"{total}":{text}}}]}}'.encode()
        )
    c, python = _outcome(True, bodies), _outcome(False, bodies)
    assert c[:-1] == python[:-1]


def _body(entry: str = '"variation_name":"A","sent":5', day: str = '"conversions":1', top: str = "") -> bytes:
    return (
        '{"message":"success",' + top + '"data":[{"time":"2026-11-20","messages":{"email":[{'
        + entry + "}]}," + day + "}]}"
    ).encode()  # fmt: skip


#: (body, whether the C reader takes it). Either way the outcome must be orjson's.
READER_EDGES = [
    (_body(), True),
    (_body('"sent":1.0e2'), True),  # an integral float is the int
    (_body('"sent":-0', '"revenue":-0.0'), True),  # -0.0 stays negative zero
    (_body('"revenue":0.1', '"revenue":123456789012345.67'), True),  # the last through strtod
    (_body('"revenue":5e-324', '"revenue":1.7976931348623157e308'), True),
    (_body('"sent":123456789012345678'), True),  # 18 digits
    (_body('"sent":1234567890123456789'), False),  # 19: left to orjson, kept (within int64)
    (_body('"sent":9223372036854775808'), False),  # beyond int64: rejected
    (_body('"revenue":9007199254740993'), False),  # beyond 2**53: rejected
    (_body('"sent":1.5'), False),
    (_body('"sent":true'), False),
    (_body('"sent":"1"'), False),
    (_body('"sent":[1]'), False),
    (_body('"sent":1e400'), False),
    (_body('"revenue":1e400'), False),
    (_body('"sent":01'), False),  # not JSON
    (_body('"sent":-'), False),
    (_body('"sent":1.'), False),
    (_body('"sent":NaN'), False),
    (_body('"variation_name":"A\\u0042"'), False),  # an escape: orjson's
    (_body('"variation_name":"Ünï 変"'), True),
    (_body('"variation_name":"\xff"').replace(b"\xc3\xbf", b"\xff"), False),  # not UTF-8
    (_body('"variation_name":"A\tB"'), False),  # a raw control character: not JSON
    (_body('"variation_name":"ABCDEFGHIJ\tKLMNOPQRST"'), False),  # deep in a long string, past 8 bytes
    (_body('"variation_name":"ABCDEFGHIJKLMNOPQRSTU\\nV"'), False),
    (_body('"variation_name":"ABCDEFGHIJKLMNOPQRSTU\x7fV"'), True),  # DEL needs no escape
    (_body('"variation_name":"ABCDEFGHIJKLMNOPQRSTUÜV"'), True),
    (_body().replace(b"2026-11-20", "2026-11-20T05:00:00 Zürich time".encode()), False),  # Python's to judge
    (_body().replace(b"2026-11-20", b"2026-11-20T05:00:00\x85ABCDEFGHIJKLMNOP"), False),  # not UTF-8
    (_body().replace(b"2026-11-20", b"2026-11-205"), False),  # not a date
    (_body().replace(b'"email":[', b'"email":[{"sent":1}],"email":['), False),  # a channel twice
    (_body().replace(b'"messages":{', b'"messages":{},"messages":{'), False),  # 'messages' twice
    (_body("},{".join(f'"variation_name":"Variant {v}"' for v in (1, 2, 1, 3, 4, 5, 1, 2))), True),  # same lengths
    (_body('"sent":1,"sent":2'), False),  # a key twice
    (_body('"amp_opens":3'), False),  # unknown field: extra_metrics
    (_body(day='"conversions":1,"friend_adds":2'), False),
    (_body().replace(b'"email"', b'"line"'), False),  # unknown channel
    (_body().replace(b'"email":[', b'"email":[],"sms":['), True),
    (_body().replace(b'"email":[', b'"email":null,"sms":['), False),
    (_body() + b"x", False),
    (_body() + b" \r\n\t", True),
    (_body(top='"meta":{},'), False),  # a field Braze does not send: the other loops ignore it
    (_body(top='"message":"success",'), False),
    (_body().replace(b'"success"', b'"Success"'), False),
    (b'{"data":[],"message":"success"}', True),
    (b'{"data":[]}', False),
    (b"", False),
    (b"[]", False),
    (_body().replace(b"2026-11-20", b"2026-11-20T05:00:00Z"), True),
    (_body().replace(b"2026-11-20", b"20261120"), False),  # ISO basic format: Python's to judge
    (_body().replace(b"2026-11-20", b"2026-02-30"), False),
    (_body().replace(b'"messages":{', b'"messages":null,"x":{'), False),
    (_body(day='"conversions":null').replace(b'{"variation_name":"A","sent":5}', b""), True),  # "no data"
    (b'{"message":"success","data":[{"time":"2026-11-20"},{"time":"2026-11-20"}]}', False),  # a day twice
    (b'{"message":"success","data":[{"time":"2026-11-20","messages":{}},{"time":"2026-11-21","conversions":0}]}', True),
    (b'{"message":"success","data":[{"messages":{},"time":"2026-11-20","time":"2026-11-21"}]}', False),
    (b'{"message":"success","data":[{"conversions":2}]}', False),  # no time
    (json.dumps({"message": "success", "data": [{"time": "2026-11-20", "messages": {"email": [{"sent": 1}]}}]},
                indent="\t").encode(), True),
]


@pytest.mark.parametrize(("body", "taken"), READER_EDGES, ids=[f"edge{i}" for i in range(len(READER_EDGES))])
def test_the_c_reader_takes_what_it_should_and_the_outcome_is_orjsons(body: bytes, taken: bool) -> None:
    c, python = _outcome(True, [body]), _outcome(False, [body])
    assert c[:-1] == python[:-1]
    assert c[-1] == int(taken)


def test_a_response_the_c_reader_leaves_keeps_nothing_of_it() -> None:
    """A body that fails late (its last day) after rows of earlier days were read: none of
    them may stay, and the next response's rows are all there."""
    late = b'{"message":"success","data":[{"time":"2026-11-20","messages":{"email":[{"sent":1}]},"conversions":1},'
    late += b'{"time":"2026-11-21","messages":{"email":[{"sent":2,"variation_name":"B"}]},"conversions":true}]}'
    bodies = [_body(), late, _body('"sent":7')]
    c, python = _outcome(True, bodies), _outcome(False, bodies)
    assert c[:-1] == python[:-1]
    assert c[-1] == 2
    assert c[3] == {1: python[3][1]} and "conversions" in c[3][1]

"""The measured processes other than bulkexport's own CLI, one per kind, each run alone.

    python benchmarks/children.py KIND SPEC_JSON

Each prints one JSON line last (its counts: pairs, rows, ...); the runner measures the
process from outside (``whole.py``), so nothing here times itself except ``stages``.

The peers are written the way a data engineer would in an afternoon, and import nothing from
bulkexport (that would put its imports on their bill):

* ``requests``: a ``requests.Session`` loop, one request at a time, ``json.loads``, a dict
  per row, ``pa.Table.from_pylist`` + ``pq.write_table`` per table at the end.
* ``aiohttp``: ``asyncio.gather`` over every pair under a semaphore of the concurrency, the
  rest as above.
* ``ceiling``: not a peer but the floor of the HTTP part: raw aiohttp, ``concurrency``
  workers, each body read and discarded.
* ``paced``: the same raw loop at Braze's default pace, starts released one at a time or a
  batch at a time: the floor of the paced target.
* ``dlt``: dlt's ``rest_api`` source into its ``filesystem`` destination as Parquet, when
  dlt is installed (``pip install -e '.[bench-dlt]'``).

``stages`` is the per-stage benchmark: it times the functions of ``stages.py`` in process.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

_STRINGS = frozenset({"campaign_id", "send_id", "channel", "variation_name", "variation_api_id"})


def read_pairs(path: str) -> list[tuple[str, str]]:
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        return [(c, s) for c, s in rows]


def add_rows(doc: dict[str, Any], cid: str, sid: str, stats: list[dict[str, Any]],
             totals: list[dict[str, Any]]) -> None:  # fmt: skip
    """One dict per output row; a day with nothing but its date is "no data", not a row."""
    if doc.get("message") != "success":
        raise RuntimeError(f"export failed: {doc.get('message')!r}")
    for day in doc["data"]:
        when = date.fromisoformat(day.pop("time"))
        messages = day.pop("messages", None) or {}
        if not any(messages.values()) and all(v is None for v in day.values()):
            continue
        totals.append({"campaign_id": cid, "send_id": sid, "date": when, **day})
        for channel, entries in messages.items():
            for entry in entries:
                stats.append({"campaign_id": cid, "send_id": sid, "date": when, "channel": channel, **entry})


def to_table(rows: list[dict[str, Any]]) -> Any:
    """``from_pylist`` with the union of the rows' keys (it infers columns from the first row
    only, which would drop every other channel's metrics)."""
    import pyarrow as pa

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))

    def kind(name: str) -> Any:
        if name in _STRINGS:
            return pa.string()
        return pa.date32() if name == "date" else pa.float64() if name == "revenue" else pa.int64()

    return pa.Table.from_pylist(rows, schema=pa.schema([(c, kind(c)) for c in columns]))


def write_tables(out: str, stats: list[dict[str, Any]], totals: list[dict[str, Any]]) -> dict[str, Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    Path(out).mkdir(parents=True, exist_ok=True)
    s, t = to_table(stats), to_table(totals)
    pq.write_table(s, f"{out}/send_stats.parquet")
    pq.write_table(t, f"{out}/send_totals.parquet")
    return {"stats_rows": s.num_rows, "totals_rows": t.num_rows, "sent": pc.sum(s.column("sent")).as_py() or 0}


def params(spec: dict[str, Any], cid: str, sid: str) -> dict[str, Any]:
    return {"campaign_id": cid, "send_id": sid, "length": spec["length"], "ending_at": spec["ending_at"]}


def child_requests(spec: dict[str, Any]) -> dict[str, Any]:
    import requests

    pairs = read_pairs(spec["pairs_file"])
    stats: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {spec['api_key']}"
        url = f"{spec['url']}/sends/data_series"
        for cid, sid in pairs:
            resp = session.get(url, params=params(spec, cid, sid), timeout=60)
            resp.raise_for_status()
            add_rows(json.loads(resp.content), cid, sid, stats, totals)
    return {"pairs": len(pairs), "requests": len(pairs), **write_tables(spec["out"], stats, totals)}


def child_aiohttp(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    pairs = read_pairs(spec["pairs_file"])
    stats: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []

    async def main() -> None:
        sem = asyncio.Semaphore(spec["concurrency"])
        headers = {"Authorization": f"Bearer {spec['api_key']}"}
        url = f"{spec['url']}/sends/data_series"
        async with aiohttp.ClientSession(headers=headers) as session:

            async def fetch(cid: str, sid: str) -> None:
                async with sem, session.get(url, params=params(spec, cid, sid)) as resp:
                    resp.raise_for_status()
                    body = await resp.read()
                add_rows(json.loads(body), cid, sid, stats, totals)

            await asyncio.gather(*(fetch(c, s) for c, s in pairs))

    asyncio.run(main())
    return {"pairs": len(pairs), "requests": len(pairs), **write_tables(spec["out"], stats, totals)}


def _raw_session(spec: dict[str, Any]) -> Any:
    """The raw aiohttp session of ``ceiling`` and ``paced``: the key, ``concurrency`` connections."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=spec["concurrency"])
    return aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {spec['api_key']}"})


def _raw_getter(spec: dict[str, Any]) -> Callable[[Any, str, str], Any]:
    """``await get(session, campaign_id, send_id)``: one request, the body read, its length
    returned (a non-200 raises)."""
    from yarl import URL

    prefix = f"{spec['url']}/sends/data_series?length={spec['length']}&ending_at={quote(spec['ending_at'], safe='')}"

    async def get(session: Any, cid: str, sid: str) -> int:
        url = URL(f"{prefix}&campaign_id={quote(cid, safe='')}&send_id={quote(sid, safe='')}", encoded=True)
        async with session.get(url) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
            return len(body)

    return get


def child_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """Raw aiohttp: ``concurrency`` workers over prebuilt URLs, bodies read and discarded."""
    pairs = read_pairs(spec["pairs_file"])
    get = _raw_getter(spec)
    received = 0

    async def main() -> None:
        async with _raw_session(spec) as session:
            it = iter(pairs)

            async def worker() -> None:
                nonlocal received
                for cid, sid in it:
                    received += await get(session, cid, sid)

            await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))

    asyncio.run(main())
    return {"pairs": len(pairs), "requests": len(pairs), "body_kb": received / max(len(pairs), 1) / 1000}


def child_paced(spec: dict[str, Any]) -> dict[str, Any]:
    """The floor of the paced target: raw aiohttp as in ``ceiling``, at ``rate`` requests a
    second, ``batch`` starts released together every ``batch / rate`` seconds (1: one start
    every 14.4 ms at Braze's default, as bulkexport granted them before ``97bb316``)."""
    pairs = read_pairs(spec["pairs_file"])
    get = _raw_getter(spec)
    rate, batch = float(spec["rate"]), int(spec["batch"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        starts: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        async with _raw_session(spec) as session:

            async def worker() -> None:
                while (pair := await starts.get()) is not None:
                    await get(session, *pair)

            workers = [asyncio.ensure_future(worker()) for _ in range(spec["concurrency"])]
            began = loop.time()
            for i in range(0, len(pairs), batch):
                await asyncio.sleep(max(0.0, began + i / rate - loop.time()))
                for pair in pairs[i : i + batch]:
                    starts.put_nowait(pair)
            for _ in workers:
                starts.put_nowait(None)
            await asyncio.gather(*workers)

    asyncio.run(main())
    return {"pairs": len(pairs), "requests": len(pairs)}


def child_dlt(spec: dict[str, Any]) -> dict[str, Any]:
    """dlt's ``rest_api`` source: a parent resource of pairs, one child request per pair."""
    import os

    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    os.environ["DLT_DATA_DIR"] = f"{spec['out']}/.dlt-data"
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    import dlt
    from dlt.sources.rest_api import rest_api_source

    pairs = read_pairs(spec["pairs_file"])

    @dlt.resource(selected=False)
    def pairs_resource() -> Any:
        yield [{"campaign_id": c, "send_id": s} for c, s in pairs]

    source = rest_api_source({
        "client": {"base_url": spec["url"], "auth": {"type": "bearer", "token": spec["api_key"]},
                   "paginator": "single_page"},
        "resources": [
            pairs_resource,
            {"name": "data_series", "parallelized": True, "endpoint": {
                "path": "sends/data_series", "data_selector": "data",
                "params": {"campaign_id": "{resources.pairs_resource.campaign_id}",
                           "send_id": "{resources.pairs_resource.send_id}",
                           "length": spec["length"], "ending_at": spec["ending_at"]}}},
        ],
    })  # fmt: skip
    pipeline = dlt.pipeline(pipeline_name="bench", pipelines_dir=f"{spec['out']}/.dlt-pipelines",
                            destination=dlt.destinations.filesystem(f"file://{spec['out']}/data"),
                            dataset_name="braze")  # fmt: skip
    info = pipeline.run(source, loader_file_format="parquet")
    info.raise_on_failed_jobs()
    trace = pipeline.last_trace
    normalized = trace.last_normalize_info if trace is not None else None
    if normalized is None:
        raise RuntimeError("dlt ran without a normalize step")
    counts = normalized.row_counts
    return {"pairs": len(pairs), "requests": len(pairs), "rows": {k: v for k, v in counts.items()
                                                                  if not k.startswith("_dlt")}}  # fmt: skip


def child_stages(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-stage cost of the engine, µs per typical response, and the straightforward way."""
    import gc
    import shutil
    import tempfile
    import time

    import orjson
    import stages
    import workload

    pairs = workload.read_pairs_csv(spec["pairs_file"])[: spec["bodies"]]
    bodies = workload.typical_bodies(pairs)
    n = len(bodies)
    timer = time.perf_counter

    def best(fn: Callable[[], dict[str, float]]) -> dict[str, float]:
        fn()  # warm-up: imports, memos, allocator
        out: dict[str, float] = {}
        for _ in range(spec["repeats"]):
            gc.collect()
            for k, v in fn().items():
                out[k] = min(out.get(k, v), v)
        return out

    def parse() -> dict[str, float]:
        t0 = timer()
        for b in bodies:
            stages.parse(b)
        return {"parse": timer() - t0}

    totals_seen: dict[str, int] = {}

    def flatten_build() -> dict[str, float]:
        flat, t_add, t_build = stages.new_flattener(), 0.0, 0.0
        stats_rows = totals_rows = sent = 0
        for i, ((cid, sid), body) in enumerate(zip(pairs, bodies, strict=True)):
            t0 = timer()
            stages.flatten(flat, i, cid, sid, body)
            t1 = timer()
            t_add += t1 - t0
            if stages.pending(flat) >= stages.BUILD_EVERY or i == n - 1:
                built = stages.build(flat)
                t_build += timer() - t1
                stats_rows, totals_rows, sent = stats_rows + built.stats_rows, totals_rows + built.totals_rows, \
                    sent + built.sent  # fmt: skip
        totals_seen.update(stats_rows=stats_rows, totals_rows=totals_rows, sent=sent)
        direct_seen["read_from_bytes"] = stages.read_from_bytes(flat)
        return {"flatten": t_add, "build": t_build}

    baseline_seen: dict[str, int] = {}
    direct_seen: dict[str, int] = {}

    def baseline() -> dict[str, float]:
        import pyarrow.compute as pc

        t0 = timer()
        stats: list[dict[str, Any]] = []
        totals: list[dict[str, Any]] = []
        seen = {"stats_rows": 0, "totals_rows": 0, "sent": 0}
        for i, ((cid, sid), body) in enumerate(zip(pairs, bodies, strict=True)):
            add_rows(orjson.loads(body), cid, sid, stats, totals)
            if (i + 1) % stages.BUILD_EVERY == 0 or i == n - 1:
                s, t = to_table(stats), to_table(totals)
                seen["stats_rows"] += s.num_rows
                seen["totals_rows"] += t.num_rows
                seen["sent"] += pc.sum(s.column("sent")).as_py() or 0
                stats, totals = [], []
        baseline_seen.update(seen)
        return {"baseline": timer() - t0}

    result = {**best(parse), **best(flatten_build), **best(baseline)}
    if totals_seen != baseline_seen:
        raise AssertionError(f"bulkexport and the straightforward way disagree: {totals_seen} vs {baseline_seen}")

    # Stage and publish: the pipeline's buffering over more responses (bodies reused under
    # new send ids), checkpoints of CHECKPOINT_ROWS rows, one publish at the end.
    m = spec["writer_responses"]
    flat = stages.new_flattener()
    checkpoints: list[dict[str, list[Any]]] = []
    buf: dict[str, list[Any]] = {}
    buffered = rows = 0
    for i in range(m):
        cid, sid = pairs[i % n]
        stages.flatten(flat, i, cid, f"{sid}-{i}", bodies[i % n])
        if stages.pending(flat) >= stages.BUILD_EVERY or i == m - 1:
            built = stages.build(flat)
            stages.merge(buf, built)
            buffered += built.stats_rows + built.totals_rows
            rows += built.stats_rows + built.totals_rows
            if buffered >= stages.CHECKPOINT_ROWS or i == m - 1:
                checkpoints.append(buf)
                buf, buffered = {}, 0
    write: dict[str, float] = {}
    files: list[tuple[str, str, str, int, int]] = []
    for _ in range(max(spec["repeats"], 1)):
        tmp = Path(tempfile.mkdtemp(prefix="bulkexport-bench-stages-"))
        try:
            sink = stages.open_sink(tmp)
            gc.collect()
            t0 = timer()
            parts = [p for seq, tables in enumerate(checkpoints) for p in stages.stage(sink, seq, tables)]
            t1 = timer()
            files = stages.publish(sink, parts)
            t2 = timer()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        write["stage"] = min(write.get("stage", t1 - t0), t1 - t0)
        write["publish"] = min(write.get("publish", t2 - t1), t2 - t1)
        if sum(f[3] for f in files) != rows:
            raise AssertionError(f"stages: {rows} rows staged, {sum(f[3] for f in files)} published")
    per = {k: v / n * 1e6 for k, v in result.items()}
    per.update({k: v / m * 1e6 for k, v in write.items()})
    return {
        "responses": n,
        "writer_responses": m,
        "checkpoints": len(checkpoints),
        "body_kb": sum(map(len, bodies)) / n / 1000,
        "rows_per_response": (totals_seen["stats_rows"] + totals_seen["totals_rows"]) / n,
        "files": len(files),
        "parquet_bytes_per_row": sum(f[4] for f in files) / max(rows, 1),
        "flatten_includes_parse": stages.FLATTEN_INCLUDES_PARSE,
        "read_from_bytes": direct_seen.get("read_from_bytes", 0),
        "us": per,
    }


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "requests": child_requests,
    "aiohttp": child_aiohttp,
    "ceiling": child_ceiling,
    "paced": child_paced,
    "dlt": child_dlt,
    "stages": child_stages,
}

if __name__ == "__main__":
    kind, spec_json = sys.argv[1], sys.argv[2]
    print(json.dumps(CHILDREN[kind](json.loads(spec_json))), flush=True)

#!/usr/bin/env python
"""bulkexport benchmark suite: one command, one table, ratios measured in the same run.

    python benchmarks/run.py            # full run (~4-7 minutes on 2 shared cores)
    python benchmarks/run.py --smoke    # tiny sizes, ~20 s; exits non-zero on any error (CI)
    python benchmarks/run.py --only core,e2e   # a subset while iterating

Sections (see benchmarks/README.md for what each row measures and how):

1. core    parse + flatten + Arrow batch per typical response, Flattener vs a straightforward
           baseline (orjson.loads, a dict per row, ``pa.Table.from_pylist``), in this process.
2. writer  Sink.write_checkpoint + Sink.publish into Hive-partitioned Parquet, in this process.
3. e2e     bulkexport.export_async vs a raw aiohttp ceiling and a naive synchronous loop, each in
           its own child process against the simulator running in yet another process.
4. scale   peak RSS and wall time of export_async over lazily generated pairs.
5. paced   CPU share of the exporter at Braze's default 250,000 requests/hour.

Only the project's dependencies and the standard library are used. Child processes are this
same file run with ``--child KIND SPEC_JSON``; they print one JSON line as their last line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

API_KEY = "0f8b2c6e-3d1a-4e5f-9b7c-2a6d8e4f1c03"  # shaped like a Braze key (36 characters)
SEED = 0
ANCHOR = date(2026, 11, 27)
ENDING_AT = "2026-11-27T23:59:59Z"
LENGTH = 15  # bulkexport's default: a pair sent 13-14 days before the anchor fills 14 days
TYPICAL_DAYS = 14
TYPICAL_ENTRIES = 4  # channel/variation entries per day
BUILD_EVERY = 128  # responses per Flattener.build(), as bulkexport.pipeline does
CONCURRENCY = 64
DEFAULT_RATE_LIMIT = 250_000  # Braze's default, requests per clock hour
UNTHROTTLED_LIMIT = 100_000_000


# ------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    typical_pairs: int  # distinct typical pairs generated (core, e2e, paced)
    core_bodies: int  # distinct bodies in the core benchmark
    core_repeats: int  # timed passes over them (best is reported)
    writer_responses: int  # responses flattened into the writer benchmark
    e2e_pairs: int  # pairs per e2e run
    e2e_naive_pairs_slow: int  # naive loop at 50 ms: one request at a time, so fewer pairs
    e2e_repeats: int  # interleaved repetitions per e2e client (median reported)
    scale: tuple[tuple[int, int], ...]  # (pairs, length) runs of the scale section
    paced_seconds: float  # length of the paced run


FULL = Sizes(
    typical_pairs=2000,
    core_bodies=1024,
    core_repeats=5,
    writer_responses=4096,
    e2e_pairs=2000,
    e2e_naive_pairs_slow=200,
    e2e_repeats=3,
    scale=((10_000, LENGTH), (100_000, LENGTH)),
    paced_seconds=20.0,
)
SMOKE = Sizes(
    typical_pairs=128,
    core_bodies=64,
    core_repeats=1,
    writer_responses=256,
    e2e_pairs=128,
    e2e_naive_pairs_slow=20,
    e2e_repeats=1,
    scale=((500, LENGTH), (2_000, LENGTH)),
    paced_seconds=2.0,
)
SECTIONS = ("core", "writer", "e2e", "scale", "paced", "rate")


# ------------------------------------------------------------------------------------------
# Helpers shared by the parent and the children
# ------------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + system CPU of this process, all threads included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mb() -> float:
    """Peak resident set size of this process image, in MiB.

    Linux's ``ru_maxrss`` carries the parent's RSS over fork + exec (the kernel keeps the
    pre-exec high-water mark in ``signal->maxrss``), so a child spawned by a 300 MB parent
    reports at least 300 MB. ``VmHWM`` belongs to the exec'd image alone; ``ru_maxrss`` is the
    fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def ending_at() -> datetime:
    return datetime.fromisoformat(ENDING_AT)


def typical_pairs(n: int) -> list[tuple[str, str]]:
    """``n`` distinct pairs whose response is the typical one: 14 full days x 4 entries.

    Uses only the simulator's public ground truth (``send_date``, ``payload``): a pair sent
    13 or 14 days before the anchor fills 14 days of a 15-day window; its entry count is the
    same every day, so a one-day payload on the send day tells it cheaply.
    """
    from bulkexport.simulator import Simulator

    sim = Simulator(api_key=API_KEY, seed=SEED, anchor_date=ANCHOR)
    wanted = {ANCHOR.toordinal() - 13, ANCHOR.toordinal() - 14}
    out: list[tuple[str, str]] = []
    i = 0
    while len(out) < n:
        cid, sid = f"cmp{i % 499:03d}", f"snd{i:07d}"
        i += 1
        sent = sim.send_date(cid, sid)
        if sent.toordinal() not in wanted:
            continue
        day = sim.payload(cid, sid, 1, datetime(sent.year, sent.month, sent.day, 12, tzinfo=UTC))
        entries = sum(len(v) for v in day["data"][0]["messages"].values())
        if entries == TYPICAL_ENTRIES:
            out.append((cid, sid))
    return out


def typical_bodies(pairs: list[tuple[str, str]]) -> list[bytes]:
    import orjson

    from bulkexport.simulator import Simulator

    sim = Simulator(api_key=API_KEY, seed=SEED, anchor_date=ANCHOR)
    bodies = [orjson.dumps(sim.payload(c, s, LENGTH, ending_at())) for c, s in pairs]
    for b in bodies[:8]:
        days = [d for d in orjson.loads(b)["data"] if d.get("messages")]
        assert len(days) == TYPICAL_DAYS, "the simulator's data model changed: no longer 14 days"
    return bodies


def scale_pairs(n: int) -> Iterator[tuple[str, str]]:
    """Lazily generated pairs: nothing of size ``n`` is ever held by the benchmark."""
    return ((f"scl{i % 997:03d}", f"s{i:08d}") for i in range(n))


# ------------------------------------------------------------------------------------------
# 1. Core: parse + flatten + Arrow batch
# ------------------------------------------------------------------------------------------
def run_bulkexport_flatten(pairs: list[tuple[str, str]], bodies: list[bytes]) -> tuple[int, int, float]:
    """Flattener.add() every response, build() every BUILD_EVERY: (stats rows, totals rows, sent sum)."""
    import pyarrow.compute as pc

    from bulkexport.flatten import Flattener

    flat = Flattener("bench")
    ts = 1_790_000_000_000_000
    stats = totals = 0
    sent = 0
    for token, ((cid, sid), body) in enumerate(zip(pairs, bodies, strict=True)):
        flat.add(token, cid, sid, body, ts)
        if len(flat) >= BUILD_EVERY:
            fb = flat.build()
            stats += fb.stats_rows
            totals += fb.totals_rows
            sent += sum(pc.sum(b.column("sent")).as_py() or 0 for b in fb.stats)
    fb = flat.build()
    stats += fb.stats_rows
    totals += fb.totals_rows
    sent += sum(pc.sum(b.column("sent")).as_py() or 0 for b in fb.stats)
    return stats, totals, sent


class Baseline:
    """The straightforward way: orjson.loads, one dict per row, ``pa.Table.from_pylist``.

    Schemas are passed explicitly (``from_pylist`` infers them from the first row only, which
    would drop the columns of every other channel); the result has the same columns as
    bulkexport's in-memory batches.
    """

    def __init__(self) -> None:
        from bulkexport.schema import STATS_SCHEMA, TOTALS_SCHEMA

        self.stats_schema = STATS_SCHEMA.remove(STATS_SCHEMA.get_field_index("extra_metrics"))
        self.totals_schema = TOTALS_SCHEMA.remove(TOTALS_SCHEMA.get_field_index("extra_metrics"))
        self.stats_rows: list[dict[str, Any]] = []
        self.totals_rows: list[dict[str, Any]] = []

    def add(self, cid: str, sid: str, body: bytes, exported_at: datetime) -> None:
        import orjson

        doc = orjson.loads(body)
        if doc.get("message") != "success":
            raise ValueError("export failed")
        for day in doc["data"]:
            when = date.fromisoformat(day.pop("time"))
            messages = day.pop("messages", None) or {}
            if not any(messages.values()) and all(v is None for v in day.values()):
                continue  # nothing but 'time': "no data" (README, Output)
            base = {"campaign_id": cid, "send_id": sid, "date": when, "run_id": "bench",
                    "exported_at": exported_at}  # fmt: skip
            self.totals_rows.append({**base, **day})
            for channel, entries in messages.items():
                for entry in entries:
                    self.stats_rows.append({**base, "channel": channel, **entry})

    def build(self) -> tuple[Any, Any]:
        import pyarrow as pa

        stats = pa.Table.from_pylist(self.stats_rows, schema=self.stats_schema)
        totals = pa.Table.from_pylist(self.totals_rows, schema=self.totals_schema)
        self.stats_rows, self.totals_rows = [], []
        return stats, totals


def run_baseline_flatten(pairs: list[tuple[str, str]], bodies: list[bytes]) -> tuple[int, int, float]:
    import pyarrow.compute as pc

    base = Baseline()
    when = datetime.fromtimestamp(1_790_000_000, UTC)
    stats = totals = n = 0
    sent = 0
    for (cid, sid), body in zip(pairs, bodies, strict=True):
        base.add(cid, sid, body, when)
        n += 1
        if n >= BUILD_EVERY:
            n = 0
            s, t = base.build()
            stats += s.num_rows
            totals += t.num_rows
            sent += pc.sum(s.column("sent")).as_py() or 0
    s, t = base.build()
    stats += s.num_rows
    totals += t.num_rows
    sent += pc.sum(s.column("sent")).as_py() or 0
    return stats, totals, sent


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    fn()  # warm-up: imports, dictionary memo, allocator
    best, result = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_core(sizes: Sizes, pairs: list[tuple[str, str]], bodies: list[bytes]) -> dict[str, Any]:
    pairs, bodies = pairs[: sizes.core_bodies], bodies[: sizes.core_bodies]
    n = len(bodies)
    t_bulk, r_bulk = best_of(sizes.core_repeats, lambda: run_bulkexport_flatten(pairs, bodies))
    t_base, r_base = best_of(sizes.core_repeats, lambda: run_baseline_flatten(pairs, bodies))
    if r_bulk != r_base:
        raise AssertionError(f"core: bulkexport and baseline disagree (rows, rows, sum sent): {r_bulk} vs {r_base}")
    rows = r_bulk[0] + r_bulk[1]
    return {
        "responses": n,
        "body_kb": sum(map(len, bodies)) / n / 1000,
        "rows_per_response": rows / n,
        "bulk_us": t_bulk / n * 1e6,
        "base_us": t_base / n * 1e6,
        "bulk_rows_s": rows / t_bulk,
        "base_rows_s": rows / t_base,
    }


# ------------------------------------------------------------------------------------------
# 2. Writer: Sink.write_checkpoint + Sink.publish
# ------------------------------------------------------------------------------------------
def bench_writer(sizes: Sizes, pairs: list[tuple[str, str]], bodies: list[bytes]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from bulkexport.config import ExportConfig
    from bulkexport.flatten import Flattener
    from bulkexport.sink import Sink
    from bulkexport.storage import open_target

    defaults = {f.name: f.default for f in dataclasses.fields(ExportConfig)}
    # Batches exactly as the pipeline buffers them: a build every 128 responses, a checkpoint
    # every ``checkpoint_rows`` rows. Bodies repeat under fresh pair ids to reach the size.
    flat = Flattener("bench")
    checkpoints: list[dict[str, list[Any]]] = []
    buf: dict[str, list[Any]] = {"send_stats": [], "send_totals": []}
    buffered = 0
    for i in range(sizes.writer_responses):
        cid, sid = pairs[i % len(pairs)]
        flat.add(i, cid, f"{sid}-{i}", bodies[i % len(bodies)], 1_790_000_000_000_000)
        if len(flat) >= BUILD_EVERY or i == sizes.writer_responses - 1:
            fb = flat.build()
            buf["send_stats"] += fb.stats
            buf["send_totals"] += fb.totals
            buffered += fb.stats_rows + fb.totals_rows
            if buffered >= defaults["checkpoint_rows"] or i == sizes.writer_responses - 1:
                checkpoints.append(buf)
                buf, buffered = {"send_stats": [], "send_totals": []}, 0
    rows = sum(b.num_rows for ck in checkpoints for batches in ck.values() for b in batches)
    tmp = Path(tempfile.mkdtemp(prefix="bulkexport-bench-writer-"))
    try:
        sink = Sink(
            open_target(tmp), "bench", row_group_rows=defaults["row_group_rows"], file_rows=defaults["file_rows"]
        )
        sink.prepare()
        gc.collect()
        t0 = time.perf_counter()
        parts = []
        for seq, tables in enumerate(checkpoints):
            parts += sink.write_checkpoint(seq, tables)
        t1 = time.perf_counter()
        parts.sort(key=lambda p: (p.table, p.date, p.seq))  # RunState.unpublished_parts' order
        files: list[tuple[str, str, str, int, int]] = []
        sink.publish(parts, 0, lambda *f: files.append(f))
        t2 = time.perf_counter()
        written = sum(f[3] for f in files)
        if written != rows:
            raise AssertionError(f"writer: {rows} rows in, {written} rows published")
        groups = [pq.ParquetFile(tmp / f[0]).metadata.num_row_groups for f in files]
        stats_files = [f for f in files if f[1] == "send_stats"]
        return {
            "rows": rows,
            "checkpoints": len(checkpoints),
            "ckpt_s": t1 - t0,
            "publish_s": t2 - t1,
            "rows_s": rows / (t2 - t0),
            "files": len(files),
            "partitions": len({(f[1], f[2]) for f in files}),
            "row_groups": sum(groups),
            "rows_per_group": written / sum(groups),
            "bytes": sum(f[4] for f in files),
            "stats_file_kb": sum(f[4] for f in stats_files) / max(len(stats_files), 1) / 1000,
            "bytes_per_row": sum(f[4] for f in files) / written,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Children: one measurement each, in a fresh process
# ------------------------------------------------------------------------------------------
class RssSampler:
    """Samples this process's RSS (and Arrow's live allocations) every ``every`` seconds."""

    def __init__(self, every: float = 0.25) -> None:
        self.samples: list[tuple[float, float]] = []
        self.arrow_max_mb = 0.0
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import pyarrow as pa

        t0 = time.perf_counter()
        while not self._stop.wait(self._every):
            self.arrow_max_mb = max(self.arrow_max_mb, pa.total_allocated_bytes() / 2**20)
            rss = current_rss_mb()
            if rss is not None:
                self.samples.append((time.perf_counter() - t0, rss))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child_bulkexport(spec: dict[str, Any]) -> dict[str, Any]:
    import logging

    import bulkexport

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if spec.get("pairs_file"):
        pairs: Any = [tuple(p) for p in json.loads(Path(spec["pairs_file"]).read_text())]
        n = len(pairs)
    else:
        n = spec["lazy_pairs"]
        pairs = scale_pairs(n)
    options = {
        "endpoint": spec["url"],
        "api_key": API_KEY,
        "ending_at": ENDING_AT,
        "length": spec.get("length", LENGTH),
        "run_id": "bench",
        "concurrency": CONCURRENCY,
        "reserve": 0.0,
        "overwrite": True,
    }
    if spec.get("rate_limit"):
        options["rate_limit"] = spec["rate_limit"]
    gc.collect()
    rss0 = current_rss_mb()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    with RssSampler() as sampler:
        summary = asyncio.run(bulkexport.export_async(pairs, spec["out"], **options))
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    if summary.status != "complete" or summary.pairs_done != n:
        raise RuntimeError(f"export ended {summary.status}: {summary.pairs_done}/{n} done, {summary.statuses}")
    half = wall / 2
    first = [r for t, r in sampler.samples if t <= half]
    second = [r for t, r in sampler.samples if t > half]
    return {
        "pairs": n,
        "requests": summary.requests,
        "wall": wall,
        "fetch_s": summary.fetch_seconds,
        "cpu": cpu,
        "rows": summary.stats_rows + summary.totals_rows,
        "files": summary.files,
        "rss_start_mb": rss0,
        "peak_rss_mb": peak_rss_mb(),
        "rss_first_half_mb": max(first, default=None),
        "rss_second_half_mb": max(second, default=None),
        "arrow_max_mb": sampler.arrow_max_mb,
    }


def child_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """Raw aiohttp, ``CONCURRENCY`` requests in flight, bodies read and discarded."""
    import aiohttp
    from yarl import URL

    pairs = [tuple(p) for p in json.loads(Path(spec["pairs_file"]).read_text())]
    prefix = f"{spec['url']}/sends/data_series?length={LENGTH}&ending_at={quote(ENDING_AT, safe='')}"
    received = 0

    async def main() -> None:
        nonlocal received
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            it = iter(pairs)

            async def worker() -> None:
                nonlocal received
                for cid, sid in it:
                    url = URL(f"{prefix}&campaign_id={quote(cid, safe='')}&send_id={quote(sid, safe='')}",
                              encoded=True)  # fmt: skip
                    async with session.get(url) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
                        received += len(body)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    asyncio.run(main())
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"pairs": len(pairs), "requests": len(pairs), "wall": wall, "cpu": cpu,
            "body_kb": received / len(pairs) / 1000, "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def child_naive(spec: dict[str, Any]) -> dict[str, Any]:
    """One request at a time (http.client, keep-alive), parse, a dict per row, one Parquet
    file per table at the end."""
    import http.client
    from urllib.parse import urlsplit

    import pyarrow.parquet as pq

    pairs = [tuple(p) for p in json.loads(Path(spec["pairs_file"]).read_text())]
    url = urlsplit(spec["url"])
    base = Baseline()
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for cid, sid in pairs:
        path = (f"/sends/data_series?campaign_id={quote(cid, safe='')}&send_id={quote(sid, safe='')}"
                f"&length={LENGTH}&ending_at={quote(ENDING_AT, safe='')}")  # fmt: skip
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
        base.add(cid, sid, body, datetime.now(UTC))
    conn.close()
    stats, totals = base.build()
    pq.write_table(stats, out / "send_stats.parquet", compression="zstd")
    pq.write_table(totals, out / "send_totals.parquet", compression="zstd")
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"pairs": len(pairs), "requests": len(pairs), "wall": wall, "cpu": cpu,
            "rows": stats.num_rows + totals.num_rows, "peak_rss_mb": peak_rss_mb()}  # fmt: skip


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "bulkexport": child_bulkexport,
    "ceiling": child_ceiling,
    "naive": child_naive,
}


# ------------------------------------------------------------------------------------------
# Parent side: simulator processes and child runs
# ------------------------------------------------------------------------------------------
class SimulatorProcess:
    """``python -m bulkexport.simulator`` in its own process, so its CPU is not the client's."""

    def __init__(self, *, latency: float, rate_limit: int) -> None:
        self.latency = latency
        self.rate_limit = rate_limit
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> SimulatorProcess:
        cmd = [sys.executable, "-m", "bulkexport.simulator", "--port", "0", "--api-key", API_KEY,
               "--seed", str(SEED), "--anchor-date", ANCHOR.isoformat(),
               "--rate-limit", str(self.rate_limit), "--latency", str(self.latency)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.kill()
            raise RuntimeError(f"simulator did not start: {line!r} {err[-2000:]}")
        self.url = line
        return self

    def cpu(self) -> float | None:
        """The simulator's CPU seconds so far (Linux /proc), to tell when it is the bottleneck."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_child(kind: str, spec: dict[str, Any], sim: SimulatorProcess | None = None,
              timeout: float = 900) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    server0 = sim.cpu() if sim else None
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"child {kind} printed nothing:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    server1 = sim.cpu() if sim else None
    if server0 is not None and server1 is not None and result.get("wall"):
        # Approximate: includes the child's start-up, when the server is idle.
        result["server_cpu_pct"] = (server1 - server0) / result["wall"] * 100
    return result


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Ctx:
    sizes: Sizes
    tmp: Path
    pairs: list[tuple[str, str]] = field(default_factory=list)
    pairs_file: Path | None = None
    counter: int = 0

    def out_dir(self, name: str) -> str:
        self.counter += 1
        return str(self.tmp / f"{self.counter:03d}-{name}")

    def pairs_subset(self, n: int) -> str:
        path = self.tmp / f"pairs-{n}.json"
        if not path.exists():
            path.write_text(json.dumps(self.pairs[:n]))
        return str(path)


def bench_e2e(ctx: Ctx, latency: float) -> dict[str, Any]:
    sz = ctx.sizes
    n = min(sz.e2e_pairs, len(ctx.pairs))
    pairs_file = ctx.pairs_subset(n)
    naive_n = n if latency == 0 else min(sz.e2e_naive_pairs_slow, n)
    naive_file = ctx.pairs_subset(naive_n)
    runs: dict[str, list[dict[str, Any]]] = {"ceiling": [], "bulkexport": [], "naive": []}
    with SimulatorProcess(latency=latency, rate_limit=UNTHROTTLED_LIMIT) as sim:
        # Warm the simulator's body cache (it renders each pair once), unmeasured.
        run_child("ceiling", {"url": sim.url, "pairs_file": pairs_file}, sim)
        for _ in range(sz.e2e_repeats):
            runs["ceiling"].append(run_child("ceiling", {"url": sim.url, "pairs_file": pairs_file}, sim))
            runs["bulkexport"].append(run_child("bulkexport", {
                "url": sim.url, "pairs_file": pairs_file, "out": ctx.out_dir("e2e"),
                "rate_limit": UNTHROTTLED_LIMIT}, sim))  # fmt: skip
        runs["naive"].append(
            run_child("naive", {"url": sim.url, "pairs_file": naive_file, "out": ctx.out_dir("naive")}, sim)
        )
    out: dict[str, Any] = {"latency": latency, "pairs": n, "naive_pairs": naive_n}
    for kind, results in runs.items():
        rates = [r["requests"] / r["wall"] for r in results]
        mid = results[rates.index(statistics.median_low(rates))]
        out[kind] = {
            "rps": statistics.median(rates),
            "rps_all": rates,
            "cpu_ms_per_pair": mid["cpu"] / mid["pairs"] * 1000,
            "server_cpu_pct": mid.get("server_cpu_pct"),
            "fetch_rps": mid["requests"] / mid["fetch_s"] if mid.get("fetch_s") else None,
            "body_kb": mid.get("body_kb"),
        }
    log(f"e2e {latency * 1000:.0f} ms: " + ", ".join(f"{k} {v['rps_all']}" for k, v in out.items()
                                                    if isinstance(v, dict)))  # fmt: skip
    return out


def bench_scale(ctx: Ctx) -> list[dict[str, Any]]:
    results = []
    with SimulatorProcess(latency=0.0, rate_limit=UNTHROTTLED_LIMIT) as sim:
        for n, length in ctx.sizes.scale:
            out = ctx.out_dir(f"scale{n}")
            r = run_child("bulkexport", {"url": sim.url, "lazy_pairs": n, "out": out, "length": length,
                                         "rate_limit": UNTHROTTLED_LIMIT}, sim, timeout=3600)  # fmt: skip
            r["n"], r["length"] = n, length
            results.append(r)
            log(f"scale {n}: {r['wall']:.1f}s, peak {r['peak_rss_mb']:.0f} MB")
            shutil.rmtree(out, ignore_errors=True)
    return results


def bench_paced(ctx: Ctx) -> dict[str, Any]:
    rate = DEFAULT_RATE_LIMIT / 3600
    n = min(len(ctx.pairs), round(rate * ctx.sizes.paced_seconds))
    with SimulatorProcess(latency=0.05, rate_limit=DEFAULT_RATE_LIMIT) as sim:
        r = run_child("bulkexport", {"url": sim.url, "pairs_file": ctx.pairs_subset(n), "out": ctx.out_dir("paced"),
                                     "rate_limit": DEFAULT_RATE_LIMIT}, sim)  # fmt: skip
    r["target_rps"] = rate
    r["rps"] = r["requests"] / r["wall"]
    r["cpu_pct"] = r["cpu"] / r["wall"] * 100
    return r


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------
Row = tuple[str, str, str, str, str, str]


def verdict(ok: bool) -> str:
    return "pass" if ok else "MISS"


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def build_rows(res: dict[str, Any], sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    core = res.get("core")
    if core:
        speedup = core["base_us"] / core["bulk_us"]
        what = (f"core: parse+flatten+batch, µs/response ({core['responses']} distinct "
                f"{TYPICAL_DAYS}dx{TYPICAL_ENTRIES} responses, {core['body_kb']:.1f} KB, "
                f"{core['rows_per_response']:.0f} rows)")  # fmt: skip
        rows.append((what, f"{core['bulk_us']:.0f}", f"{core['base_us']:.0f} (dict+from_pylist)",
                     f"{speedup:.2f}x faster", "≤ 150 µs; ≥ 3x",
                     f"{verdict(core['bulk_us'] <= 150)}; {verdict(speedup >= 3)}"))  # fmt: skip
        rows.append(("core: rows/s", fmt_int(core["bulk_rows_s"]), fmt_int(core["base_rows_s"]),
                     f"{core['bulk_rows_s'] / core['base_rows_s']:.2f}", "", ""))  # fmt: skip
    w = res.get("writer")
    if w:
        rows.append((f"writer: rows/s, write_checkpoint + publish ({fmt_int(w['rows'])} rows, "
                     f"{w['checkpoints']} checkpoints)", fmt_int(w["rows_s"]), "", "", "", "info"))  # fmt: skip
        rows.append(("writer: time in checkpoint / publish", f"{w['ckpt_s']:.2f} s / {w['publish_s']:.2f} s",
                     "", "", "", "info"))  # fmt: skip
        rows.append((f"writer: output ({w['partitions']} tablexdate partitions)",
                     f"{w['files']} files, {w['row_groups']} row groups, {fmt_int(w['rows_per_group'])} rows/group",
                     "", "", "", "info"))  # fmt: skip
        rows.append(("writer: Parquet size", f"{w['bytes'] / 1e6:.2f} MB total, {w['stats_file_kb']:.0f} KB per "
                     f"send_stats file, {w['bytes_per_row']:.1f} B/row", "", "", "", "info"))  # fmt: skip
    for key, target in (("e2e0", 0.5), ("e2e50", 0.9)):
        e = res.get(key)
        if not e:
            continue
        ms = e["latency"] * 1000
        b, c, nv = e["bulkexport"], e["ceiling"], e["naive"]
        ratio = b["rps"] / c["rps"]
        rows.append((f"e2e {ms:.0f} ms: requests/s, {e['pairs']} pairs, c={CONCURRENCY} (vs raw aiohttp ceiling)",
                     fmt_int(b["rps"]), fmt_int(c["rps"]) + " (ceiling)", f"{ratio:.2f}",
                     f"≥ {target} x ceiling", verdict(ratio >= target)))  # fmt: skip
        rows.append((f"e2e {ms:.0f} ms: requests/s vs naive sync loop ({e['naive_pairs']} pairs)",
                     fmt_int(b["rps"]), fmt_int(nv["rps"]) + " (naive)", f"{b['rps'] / nv['rps']:.2f}",
                     "", "info"))  # fmt: skip
        rows.append((f"e2e {ms:.0f} ms: client CPU ms per pair",
                     f"{b['cpu_ms_per_pair']:.3f}",
                     f"{c['cpu_ms_per_pair']:.3f} (ceiling), {nv['cpu_ms_per_pair']:.3f} (naive)",
                     f"{b['cpu_ms_per_pair'] / c['cpu_ms_per_pair']:.1f} x ceiling's",
                     "≤ 0.6 ms", verdict(b["cpu_ms_per_pair"] <= 0.6)))  # fmt: skip
        srv_b, srv_c = b.get("server_cpu_pct"), c.get("server_cpu_pct")
        if srv_b is not None and srv_c is not None:
            rows.append((f"e2e {ms:.0f} ms: simulator process CPU (% of one core)", f"{srv_b:.0f} %",
                         f"{srv_c:.0f} % (ceiling)", "", "", "info"))  # fmt: skip
    scale = res.get("scale")
    if scale:
        peaks = [r["peak_rss_mb"] for r in scale]
        for r in scale:
            rows.append((f"scale {fmt_int(r['n'])} pairs (lazy generator, length {r['length']}, "
                         f"{r['rows'] / r['pairs']:.0f} rows/pair, 0 ms): peak RSS, wall",
                         f"{r['peak_rss_mb']:.0f} MB, {r['wall']:.1f} s",
                         f"RSS at start {r['rss_start_mb']:.0f} MB; sampled max 1st/2nd half "
                         f"{r['rss_first_half_mb'] or 0:.0f}/{r['rss_second_half_mb'] or 0:.0f} MB; "
                         f"Arrow live max {r['arrow_max_mb']:.0f} MB",
                         f"{r['requests'] / r['wall']:,.0f} req/s", "≤ 150 MB",
                         verdict(r["peak_rss_mb"] <= 150)))  # fmt: skip
        if len(scale) > 1:
            growth = peaks[-1] - peaks[0]
            rows.append((f"scale: peak RSS growth {fmt_int(scale[0]['n'])} → {fmt_int(scale[-1]['n'])} pairs",
                         f"{growth:+.0f} MB", "", "", "", "info"))  # fmt: skip
        if 1_000_000 not in [r["n"] for r in scale]:
            rows.append(("scale 1,000,000 pairs", "skipped: would take > 10 min here", "", "", "≤ 150 MB",
                         "not run (--with-1m)"))  # fmt: skip
    p = res.get("paced")
    if p:
        rows.append((f"paced: exporter CPU at Braze's default 250,000/h ({p['target_rps']:.1f} req/s, "
                     f"{p['pairs']} pairs, 50 ms latency)",
                     f"{p['cpu_pct']:.2f} % of one core", f"{p['rps']:.1f} req/s achieved",
                     f"{p['cpu'] / p['requests'] * 1000:.2f} ms CPU/req", "< 5 %",
                     verdict(p["cpu_pct"] < 5)))  # fmt: skip
    return rows


def render(rows: list[Row]) -> str:
    head: Row = ("benchmark", "bulkexport", "baseline / ceiling", "ratio", "target", "result")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(6)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in [head, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (~30 s), for CI")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--with-1m", action="store_true",
                        help="add a 1,000,000-pair scale run (length 1; ~10 more minutes)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write raw results here")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        kind, spec = args.child
        print(json.dumps(CHILDREN[kind](json.loads(spec))), flush=True)
        return 0

    sizes = SMOKE if args.smoke else FULL
    if args.with_1m:
        sizes = dataclasses.replace(sizes, scale=(*sizes.scale, (1_000_000, 1)))
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    started = time.perf_counter()
    res: dict[str, Any] = {}
    rate_table = ""
    with tempfile.TemporaryDirectory(prefix="bulkexport-bench-") as tmp:
        ctx = Ctx(sizes, Path(tmp))
        try:
            if {"core", "writer", "e2e", "paced"} & set(only):
                log(f"finding {sizes.typical_pairs} typical pairs ({TYPICAL_DAYS} days x {TYPICAL_ENTRIES} entries)")
                ctx.pairs = typical_pairs(sizes.typical_pairs)
            if {"core", "writer"} & set(only):
                bodies = typical_bodies(ctx.pairs[: max(sizes.core_bodies, 1)])
                if "core" in only:
                    log("core")
                    res["core"] = bench_core(sizes, ctx.pairs, bodies)
                if "writer" in only:
                    log("writer")
                    res["writer"] = bench_writer(sizes, ctx.pairs, bodies)
            if "e2e" in only:
                log("e2e 0 ms")
                res["e2e0"] = bench_e2e(ctx, 0.0)
                log("e2e 50 ms")
                res["e2e50"] = bench_e2e(ctx, 0.05)
            if "scale" in only:
                log(f"scale {sizes.scale}")
                res["scale"] = bench_scale(ctx)
            if "paced" in only:
                log(f"paced {sizes.paced_seconds:.0f} s")
                res["paced"] = bench_paced(ctx)
            if "rate" in only:
                log("rate control (benchmarks/rate_control.py)")
                import rate_control  # beside this file

                rate_table = rate_control.main(args.smoke, quiet=True)
        except Exception:
            traceback.print_exc()
            print("benchmark FAILED", file=sys.stderr)
            return 1
    log(f"done in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    if res:
        print(render(build_rows(res, sizes)))
    if "rate" in only:
        print()
        print(rate_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

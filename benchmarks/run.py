#!/usr/bin/env python
"""bulkexport benchmark suite: every client a whole process, side by side in one run, tables.

    pip install -e '.[bench]'                  # requests, for the sync peer (part of '.[dev]')
    pip install -e '.[bench-dlt]'              # optional: the dlt peer (skipped when absent)
    python benchmarks/run.py                   # full run (~9 minutes on 2 shared cores)
    python benchmarks/run.py --smoke           # tiny sizes, ~40 s; exits non-zero on any error (CI)
    python benchmarks/run.py --only stages,e2e # a subset while iterating
    python benchmarks/run.py --with-1m         # adds a 1,000,000-pair scale run (~15 more minutes)

Sections (benchmarks/README.md says what each row measures and how; targets.py has the
thresholds):

stages   parse, flatten, build, stage, publish: µs per typical response (stages.py, in a child)
e2e      bulkexport's CLI vs the peers (sync requests, asyncio aiohttp, dlt) and a raw aiohttp
         ceiling, whole processes, against the simulator in its own process, 0 ms latency
latency  bulkexport's CLI vs the raw aiohttp loop at 50 ms latency, same concurrency
scale    peak RSS of the CLI from 10k to 100k pairs (1M with --with-1m)
paced    CPU of the CLI at Braze's default pace (69.4 requests/s), and of a raw aiohttp loop
rate     rate control (rate_control.py, also runnable alone)

Missed targets are reported, never an error: the exit code is non-zero only when something
breaks (a child fails, clients disagree on the rows, a run does not complete).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # run as a script or imported: the sibling modules resolve

from report import render  # noqa: E402
from targets import DEFAULT_PACE  # noqa: E402
from whole import SimulatorProcess, Whole, run_whole, wait_quiet  # noqa: E402
from workload import (  # noqa: E402
    API_KEY,
    ENDING_AT,
    LENGTH,
    UNTHROTTLED,
    scale_pairs,
    typical_pairs,
    write_pairs_csv,
)

from bulkexport.config import DEFAULT_CONCURRENCY, DEFAULT_RATE_LIMIT  # noqa: E402

SECTIONS = ("stages", "e2e", "latency", "scale", "paced", "rate")
PEERS = ("requests", "aiohttp", "dlt")
#: Pairs of the 50 ms runs: within the simulator's LRU of 4,096 rendered bodies (6,000 pairs
#: in file order miss it every time, and rendering then costs the server ~0.5 ms a request).
LATENCY_PAIRS = 4000


@dataclass(frozen=True)
class Sizes:
    e2e_pairs: int  # typical pairs per e2e and latency run (the 6,000)
    e2e_repeats: int  # interleaved runs of bulkexport and the ceiling (median reported)
    peer_repeats: int  # runs of each peer (they are slow: one is enough to be far apart)
    stage_bodies: int  # distinct typical bodies timed through parse, flatten, build
    stage_repeats: int  # timed passes (best reported)
    writer_responses: int  # responses staged and published
    scale: tuple[int, ...]  # pairs per scale run
    paced_seconds: float  # length of the paced run


FULL = Sizes(e2e_pairs=6000, e2e_repeats=3, peer_repeats=1, stage_bodies=1024, stage_repeats=5,
             writer_responses=4096, scale=(10_000, 100_000), paced_seconds=40.0)  # fmt: skip
SMOKE = Sizes(e2e_pairs=200, e2e_repeats=1, peer_repeats=1, stage_bodies=64, stage_repeats=1,
              writer_responses=256, scale=(500, 2_000), paced_seconds=3.0)  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


class Bench:
    """One run of the suite: a scratch folder, the pairs files, and the child processes."""

    def __init__(self, sizes: Sizes, tmp: Path, want: int) -> None:
        self.sizes = sizes
        self.want = want  # typical pairs the selected sections need at most: found once
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.counter = 0
        self.typical: list[tuple[str, str]] = []

    def name(self, what: str) -> str:
        self.counter += 1
        return f"{self.counter:03d}-{what}"

    def pairs_file(self, n: int) -> Path:
        """A CSV of the first ``n`` typical pairs (the CLI's input; the peers read it too)."""
        path = self.tmp / f"typical-{n}.csv"
        if not path.exists():
            if len(self.typical) < n:
                want = max(n, self.want)
                log(f"finding {want} typical pairs (14 days x 4 entries)")
                self.typical = typical_pairs(want)
            write_pairs_csv(path, self.typical[:n])
        return path

    # -- the measured processes ---------------------------------------------------------------
    def cli(self, sim: SimulatorProcess, pairs: Path, n: int, *, rate_limit: int | None = UNTHROTTLED) -> Whole:
        """bulkexport's real CLI, as a user runs it; its counts come from the run's manifest."""
        name = self.name("bulkexport")
        out = self.tmp / name
        cmd = [sys.executable, "-m", "bulkexport.cli", "export", "--pairs", str(pairs), "--out", str(out),
               "--endpoint", sim.url, "--reserve", "0", "--ending-at", ENDING_AT, "--length", str(LENGTH)]  # fmt: skip
        if rate_limit is not None:
            cmd += ["--rate-limit", str(rate_limit)]
        env = {**os.environ, "BRAZE_API_KEY": API_KEY}
        try:
            w = run_whole(cmd, log_dir=self.logs, name=name, env=env, server=sim, timeout=7200)
            (manifest,) = out.glob("_bulkexport/runs/*/manifest.json")
            summary = json.loads(manifest.read_text())["summary"]
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if summary["status"] != "complete" or summary["pairs_done"] != n:
            raise RuntimeError(f"{name}: {summary['status']}, {summary['pairs_done']}/{n} pairs done")
        w.out = {k: summary[k] for k in ("pairs_done", "requests", "retries", "stats_rows", "totals_rows", "files",
                                         "wall_seconds", "fetch_seconds", "rate_limited", "max_in_flight")}  # fmt: skip
        w.out["pairs"] = n
        return w

    def child(self, kind: str, sim: SimulatorProcess, pairs: Path, **more: Any) -> Whole:
        name = self.name(kind)
        out = self.tmp / name
        spec = {"url": sim.url, "api_key": API_KEY, "pairs_file": str(pairs), "out": str(out), "length": LENGTH,
                "ending_at": ENDING_AT, "concurrency": DEFAULT_CONCURRENCY, **more}  # fmt: skip
        cmd = [sys.executable, str(HERE / "children.py"), kind, json.dumps(spec)]
        try:
            return run_whole(cmd, log_dir=self.logs, name=name, server=sim)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    # -- sections -----------------------------------------------------------------------------
    def stages(self) -> dict[str, Any]:
        sz = self.sizes
        spec = {"pairs_file": str(self.pairs_file(max(sz.stage_bodies, 1))), "bodies": sz.stage_bodies,
                "repeats": sz.stage_repeats, "writer_responses": sz.writer_responses}  # fmt: skip
        cmd = [sys.executable, str(HERE / "children.py"), "stages", json.dumps(spec)]
        return run_whole(cmd, log_dir=self.logs, name=self.name("stages")).out

    def e2e(self) -> dict[str, Any]:
        """The simulator keeps every pair's body (warmed by one unmeasured run): rendering a
        body costs it ~0.5 ms of CPU on the same two cores, which would cap every client at
        what the simulator can render (~1,300-1,400 requests/s), and the ratios with it."""
        sz = self.sizes
        n = sz.e2e_pairs
        pairs = self.pairs_file(n)
        peers = [p for p in PEERS if has_module(p)]
        runs: dict[str, list[Whole]] = {k: [] for k in ("bulkexport", "ceiling", *peers)}
        with SimulatorProcess(latency=0.0, rate_limit=UNTHROTTLED, cache_size=n + 1024) as sim:
            self.child("ceiling", sim, pairs)  # warm-up, not measured
            for r in range(max(sz.e2e_repeats, sz.peer_repeats)):
                if r < sz.e2e_repeats:
                    runs["bulkexport"].append(self.cli(sim, pairs, n))
                    wait_quiet()
                    runs["ceiling"].append(self.child("ceiling", sim, pairs))
                    wait_quiet()
                if r < sz.peer_repeats:
                    for peer in peers:
                        runs[peer].append(self.child(peer, sim, pairs))
                        wait_quiet()
                log(f"e2e round {r + 1}: " + ", ".join(f"{k} {v[-1].out['pairs'] / v[-1].wall:,.0f}/s"
                                                       for k, v in runs.items() if v))  # fmt: skip
        check_rows(runs)
        out: dict[str, Any] = {k: aggregate(v) for k, v in runs.items()}
        out["_pairs"] = n
        out["_missing"] = [p for p in PEERS if p not in peers]
        return out

    def latency(self) -> dict[str, Any]:
        """At 50 ms the question is pacing and concurrency, not the server: so the pairs fit the
        simulator's body cache (4,096 bodies), warmed by one unmeasured run, and every request
        costs the server little more than its 50 ms sleep."""
        sz = self.sizes
        n = min(sz.e2e_pairs, LATENCY_PAIRS)
        pairs = self.pairs_file(n)
        runs: dict[str, list[Whole]] = {"bulkexport": [], "ceiling": []}
        with SimulatorProcess(latency=0.05, rate_limit=UNTHROTTLED) as sim:
            self.child("ceiling", sim, pairs)  # warm-up, not measured
            for _ in range(sz.e2e_repeats):
                runs["bulkexport"].append(self.cli(sim, pairs, n))
                wait_quiet()
                runs["ceiling"].append(self.child("ceiling", sim, pairs))
                wait_quiet()
        out: dict[str, Any] = {k: aggregate(v) for k, v in runs.items()}
        out["_pairs"] = n
        return out

    def scale(self) -> list[dict[str, Any]]:
        results = []
        with SimulatorProcess(latency=0.0, rate_limit=UNTHROTTLED) as sim:
            for n in self.sizes.scale:
                pairs = write_pairs_csv(self.tmp / f"scale-{n}.csv", scale_pairs(n))
                w = self.cli(sim, pairs, n)
                pairs.unlink()
                results.append(summarise(w))
                log(f"scale {n:,}: {w.wall:.1f} s, peak RSS {w.peak_rss_mb:.0f} MB")
                wait_quiet()
        return results

    def paced(self) -> dict[str, Any]:
        """The CLI at the default pace, then the raw aiohttp loop at the same pace with starts
        released one at a time, ten at a time and 64 at a time (a second of the pace, at most
        the 64 workers, as bulkexport grants them): the floors the target is measured against."""
        n = max(1, round(DEFAULT_PACE * self.sizes.paced_seconds))
        pairs = self.pairs_file(n)
        with SimulatorProcess(latency=0.05, rate_limit=DEFAULT_RATE_LIMIT) as sim:
            w = self.cli(sim, pairs, n, rate_limit=None)  # the default limit, as a user runs it
            out = summarise(w)
            out["raw"] = {}
            for batch in (1, 10, DEFAULT_CONCURRENCY):
                wait_quiet()
                raw = self.child("paced", sim, pairs, rate=DEFAULT_PACE, batch=batch)
                out["raw"][batch] = {"wall": raw.wall, "cpu": raw.cpu, "steady_cpu_share": raw.steady_cpu_share(),
                                     "peak_rss_mb": raw.peak_rss_mb, "requests": n}  # fmt: skip
        return out


def summarise(w: Whole) -> dict[str, Any]:
    first, second = w.rss_halves()
    return {"wall": w.wall, "user": w.user, "sys": w.system, "cpu": w.cpu, "peak_rss_mb": w.peak_rss_mb,
            "server_cpu": w.server_cpu, "steady_cpu_share": w.steady_cpu_share(), "rss_first_half_mb": first,
            "rss_second_half_mb": second, "samples": len(w.samples), **w.out}  # fmt: skip


def aggregate(runs: list[Whole]) -> dict[str, Any]:
    """Medians over the repeats (the largest peak RSS): one noisy run does not decide."""
    pairs = runs[0].out["pairs"]
    rates = [pairs / w.wall for w in runs]
    return {
        "runs": len(runs),
        "pairs": pairs,
        "rps": statistics.median(rates),
        "rps_all": rates,
        "wall": statistics.median(w.wall for w in runs),
        "user": statistics.median(w.user for w in runs),
        "sys": statistics.median(w.system for w in runs),
        "cpu_ms_per_pair": statistics.median(w.cpu for w in runs) / pairs * 1000,
        "peak_rss_mb": max(w.peak_rss_mb for w in runs),
        "server_cpu_pct": statistics.median((w.server_cpu or 0) / w.wall * 100 for w in runs),
        "out": runs[-1].out,
    }


def check_rows(runs: dict[str, list[Whole]]) -> None:
    """Every client that writes the same two tables must have written the same rows."""
    ref = runs["bulkexport"][-1].out
    for kind in ("requests", "aiohttp"):
        for w in runs.get(kind, []):
            got = (w.out["stats_rows"], w.out["totals_rows"])
            if got != (ref["stats_rows"], ref["totals_rows"]):
                raise AssertionError(f"{kind} wrote {got} rows (stats, totals), bulkexport "
                                     f"{(ref['stats_rows'], ref['totals_rows'])}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (~40 s), for CI; verdicts mean nothing")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--with-1m", action="store_true", help="add a 1,000,000-pair scale run (~15 more minutes)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})")
    sizes = SMOKE if args.smoke else FULL
    if args.with_1m:
        sizes = dataclasses.replace(sizes, scale=(*sizes.scale, 1_000_000))
    if not has_module("requests"):
        print("the requests peer needs the bench extra: pip install -e '.[bench]'", file=sys.stderr)
        return 2

    started = time.perf_counter()
    res: dict[str, Any] = {"sizes": dataclasses.asdict(sizes), "smoke": args.smoke}
    rate_table = ""
    with tempfile.TemporaryDirectory(prefix="bulkexport-bench-") as tmp:
        paced_n = round(DEFAULT_PACE * sizes.paced_seconds) if "paced" in only else 0
        e2e_n = sizes.e2e_pairs if {"e2e", "latency"} & set(only) else 0
        bench = Bench(sizes, Path(tmp), max(paced_n, e2e_n, sizes.stage_bodies if "stages" in only else 0))
        try:
            for section in SECTIONS:
                if section not in only:
                    continue
                log(section)
                if section == "rate":
                    import rate_control

                    rate_table = rate_control.main(args.smoke, quiet=True, quick=args.smoke)
                else:
                    res[section] = getattr(bench, section)()
        except Exception:
            traceback.print_exc()
            print("benchmark FAILED", file=sys.stderr)
            return 1
    res["seconds"] = time.perf_counter() - started
    log(f"done in {res['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    print(render(res))
    if rate_table:
        print()
        print(rate_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

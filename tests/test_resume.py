"""Crash safety of the real command: kill -9 at random moments, SIGTERM, re-runs, storage
errors and the failures file, each checked against the simulator's ground truth.

The CLI runs as a subprocess (``python -m bulkexport.cli``) driven with
``asyncio.create_subprocess_exec``, so the test's event loop keeps serving the in-process
simulator while the exporter runs and is killed.
"""

from __future__ import annotations

import random
import signal
import time
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkexport.errors import ConfigError, StorageError
from bulkexport.publish import RunDocuments
from bulkexport.simulator import FaultRule, Simulator

from .helpers import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_STORAGE,
    INTERVAL,
    TABLES,
    Attempt,
    Cli,
    Trigger,
    assert_no_traceback,
    check_equal,
    committed_pairs,
    pairs_for,
    request_log,
    run,
    run_dir,
    write_pairs,
)


def assert_kill_cost_bounded(sim: Simulator, att: Attempt, committed: set[tuple[str, str]]) -> int:
    """Every pair requested by ``att`` before the loss window of its kill is committed;
    return how many such pairs there were."""
    assert att.killed_at is not None
    horizon = att.killed_at - INTERVAL - MARGIN
    stale = {p for t, p in request_log(sim) if att.started_at <= t < horizon}
    lost = stale - committed
    assert not lost, (
        f"{len(lost)} of {len(stale)} pairs requested more than {INTERVAL + MARGIN:.1f}s before "
        f"the kill were not committed, e.g. {sorted(lost)[:3]}: checkpoints are not periodic"
    )
    return len(stale)


def dataset_files(out: Path) -> dict[str, bytes]:
    """Every file under the two table folders (hidden ones included), by relative path."""
    files: dict[str, bytes] = {}
    for table in TABLES:
        for p in sorted((out / table).rglob("*")):
            if p.is_file():
                files[p.relative_to(out).as_posix()] = p.read_bytes()
    return files


def assert_clean_dataset(out: Path) -> None:
    """No temporary or hidden entry is visible in the dataset folders, and the manifest
    lists exactly the Parquet files that are there."""
    visible = []
    for table in TABLES:
        for p in (out / table).rglob("*"):
            assert not p.name.startswith("."), f"hidden file in the dataset: {p}"
            assert not p.name.endswith(".tmp"), f"temporary file in the dataset: {p}"
            if p.is_file():
                assert p.suffix == ".parquet", p
                visible.append(p.relative_to(out).as_posix())
    manifest = orjson.loads((run_dir(out) / "manifest.json").read_bytes())
    assert manifest["status"] == "complete"
    assert sorted(f["path"] for f in manifest["files"]) == sorted(visible)


# -- 1. kill -9 at random moments, then resume ----------------------------------------------
PAIRS = 300
#: Kill plans, one per case: each entry is one SIGKILL'd attempt before the final run.
#: "early": a random moment in the first 0.45 s (start-up, ingest, first requests);
#: "fetch": after a random number of requests of that attempt;
#: "publish": a random moment after the first Parquet folder appears (compaction phase).
PLANS = [
    ("early",),
    ("fetch",),
    ("fetch", "fetch"),
    ("publish",),
    ("early", "fetch"),
    ("fetch", "publish"),
    ("publish", "publish"),
    ("early", "publish"),
]
#: A kill loses the requests whose pairs were not in a committed checkpoint: those made since
#: the snapshot of the last committed checkpoint, plus those in flight. A checkpoint
#: snapshots the buffer, writes it (fsynced Arrow files), commits; the next snapshot comes
#: INTERVAL after that commit. So the loss window is INTERVAL + two checkpoint writes (+ the
#: simulator latency). Writes measured 0.1-0.4 s here (2 CPUs shared with the simulator),
#: hence a MARGIN of 1 s: the window stays well under the length of a run.
MARGIN = 1.0


def kill_trigger(kind: str, rng: random.Random, sim: Simulator, out: Path) -> Trigger:
    """When to kill one attempt (see PLANS); random moments drawn from ``rng``."""
    if kind == "early":
        t0, delay = time.monotonic(), rng.uniform(0.0, 0.45)

        async def early() -> bool:
            return time.monotonic() - t0 >= delay

        return early
    if kind == "fetch":
        base = sim.stats.requests
        left = PAIRS - len(sim.stats.per_pair)  # lower bound of the pending pairs
        k = rng.randint(1, max(1, left - 10))

        async def fetching() -> bool:
            return sim.stats.requests - base >= k

        return fetching
    assert kind == "publish"
    seen: list[float] = []
    pause = rng.uniform(0.0, 0.12)

    async def publishing() -> bool:
        if not seen and (out / "send_stats").exists():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= pause

    return publishing


@pytest.mark.parametrize("seed", range(len(PLANS)))
async def test_kill9_then_resume_equals_uninterrupted(sim: Simulator, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    plan = PLANS[seed]
    sim.latency = 0.02
    sim.extras = True
    pairs = pairs_for(PAIRS, prefix=f"k{seed}-")
    src = write_pairs(tmp_path / "pairs.csv", pairs + pairs[:3])  # duplicates too
    out = tmp_path / "out"
    cli = Cli(sim, src, out, tmp_path / "logs")

    landed: list[str] = []
    committed: set[tuple[str, str]] = set()  # done in the state after the last attempt
    for kind in plan:
        trigger = kill_trigger(kind, rng, sim, out)
        asked_before = sim.stats.per_pair.copy()
        att = await cli.run_until(trigger)
        assert att.rc in (-signal.SIGKILL, EXIT_OK), (att.rc, att.stderr)
        # A pair committed by an earlier attempt is never asked for again.
        refetched = [p for p in committed if sim.stats.per_pair[p] != asked_before[p]]
        assert not refetched, f"{len(refetched)} committed pairs fetched again, e.g. {refetched[:3]}"
        now = committed_pairs(out)
        assert committed <= now  # commits are durable across kill -9
        committed = now
        if att.rc == -signal.SIGKILL:
            landed.append(kind)
            assert_kill_cost_bounded(sim, att, committed)
        else:
            assert_no_traceback(att)

    asked_before = sim.stats.per_pair.copy()
    final = await cli.run()
    assert final.rc == EXIT_OK, final.stderr
    assert_no_traceback(final)
    assert "complete" in final.stdout
    refetched = [p for p in committed if sim.stats.per_pair[p] != asked_before[p]]
    assert not refetched, f"{len(refetched)} committed pairs fetched again, e.g. {refetched[:3]}"
    assert final.requests == PAIRS - len(committed)  # exactly the uncommitted ones

    # The dataset equals an uninterrupted run, row by row: nothing missing, nothing twice.
    check_equal(out, sim, pairs)
    assert_clean_dataset(out)

    # Every pair was asked for, and a kill cost only what was not committed yet.
    assert set(sim.stats.per_pair) == set(pairs)
    total = sim.stats.requests
    lost = total - PAIRS
    assert lost >= 0
    recent = 0
    for i, att in enumerate(cli.attempts):
        if att.killed_at is not None and att.rc == -signal.SIGKILL:
            # Requests the child sent just before dying reach the simulator after the kill.
            since = att.killed_at - INTERVAL - MARGIN
            until = cli.attempts[i + 1].started_at
            recent += sum(1 for t in sim.stats.timestamps if since <= t < until)
    assert lost <= recent, (
        f"{lost} requests were lost to {len(landed)} kill(s) {landed}, but only {recent} were made "
        f"within {INTERVAL + MARGIN:.1f}s before a kill (or in flight): a kill cost more than the "
        "work since the last checkpoint"
    )
    assert total <= PAIRS * 1.5, f"{total} requests for {PAIRS} pairs after kills {landed}"
    # A rerun of the finished run spends nothing.
    again = await cli.run()
    assert again.rc == EXIT_OK and again.requests == 0, again.stderr


async def test_kill9_plans_really_land(sim: Simulator, tmp_path: Path) -> None:
    """Guard for the test above: a kill late in the fetch and one during the publish do
    land (the process dies by SIGKILL, the dataset half published), so the random cases are
    not all no-ops; and a fetch long enough against the loss window shows that checkpoints
    really commit while fetching (the random cases' kills come too early to prove it)."""
    sim.latency = 0.05  # at most 8 / 0.05 = 160 requests/s: the fetch takes ~2 s
    pairs = pairs_for(PAIRS, prefix="g-")
    src = write_pairs(tmp_path / "pairs.csv", pairs)
    out = tmp_path / "out"
    cli = Cli(sim, src, out, tmp_path / "logs")

    async def late_in_fetch() -> bool:
        return sim.stats.requests >= PAIRS - 20

    att = await cli.run_until(late_in_fetch)
    assert att.rc == -signal.SIGKILL
    assert not (out / "send_stats").exists()  # nothing published before the fetch ends
    committed = committed_pairs(out)
    stale = assert_kill_cost_bounded(sim, att, committed)
    assert stale > 0, "the fetch was shorter than the loss window: this case proves nothing"
    assert len(committed) >= stale

    async def publishing() -> bool:
        return (out / "send_stats").exists()

    sim.latency = 0.0
    att = await cli.run_until(publishing)
    assert att.rc == -signal.SIGKILL, "the publish phase was over before it could be killed"
    assert att.requests == PAIRS - len(committed)
    final = await cli.run()
    assert final.rc == EXIT_OK, final.stderr
    assert final.requests == 0
    check_equal(out, sim, pairs)
    assert_clean_dataset(out)
    assert sim.stats.requests <= PAIRS * 1.5


# -- 2. SIGTERM: a clean, resumable stop --------------------------------------------------------
async def test_sigterm_stops_with_exit_5_and_resumes(sim: Simulator, tmp_path: Path) -> None:
    sim.latency = 0.02
    pairs = pairs_for(PAIRS, prefix="t-")
    src = write_pairs(tmp_path / "pairs.csv", pairs)
    out = tmp_path / "out"
    cli = Cli(sim, src, out, tmp_path / "logs")

    async def a_third_fetched() -> bool:
        return sim.stats.requests >= PAIRS // 3

    first = await cli.run_until(a_third_fetched, sig=signal.SIGTERM, limit=20)
    assert first.killed_at is not None
    stopped_in = time.time() - first.killed_at
    assert first.rc == EXIT_INTERRUPTED, (first.rc, first.stderr)
    assert stopped_in < 3.0, f"took {stopped_in:.1f}s to stop after SIGTERM"
    assert_no_traceback(first)
    assert "run the same command again to resume" in first.stderr
    assert 0 < first.requests < PAIRS
    assert not (out / "send_stats").exists()  # an interrupted run publishes nothing

    # In-flight requests were allowed to finish and were committed: a SIGTERM wastes none,
    # so the resume asks exactly for the pairs never requested.
    asked_first = set(sim.stats.per_pair)
    second = await cli.run()
    assert second.rc == EXIT_OK, second.stderr
    assert_no_traceback(second)
    assert second.requests < PAIRS
    assert second.requests == PAIRS - len(asked_first), (second.requests, len(asked_first))
    assert sim.stats.requests == PAIRS  # each pair exactly once over both runs
    assert max(sim.stats.per_pair.values()) == 1
    assert f"{len(asked_first):,} done before this session" in second.stdout
    check_equal(out, sim, pairs)
    assert_clean_dataset(out)


# -- 3. a finished run is a no-op -----------------------------------------------------------------
async def test_completed_run_rerun_twice_changes_nothing(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(120, prefix="r-")
    src = write_pairs(tmp_path / "pairs.csv", pairs)
    out = tmp_path / "out"
    cli = Cli(sim, src, out, tmp_path / "logs")
    first = await cli.run()
    assert first.rc == EXIT_OK, first.stderr
    assert first.requests == 120
    before = dataset_files(out)
    stamps = {p: (out / p).stat().st_mtime_ns for p in before}
    manifest = (run_dir(out) / "manifest.json").read_bytes()
    assert before and all(p.endswith(".parquet") for p in before)
    for _ in range(2):
        again = await cli.run()
        assert again.rc == EXIT_OK, again.stderr
        assert_no_traceback(again)
        assert again.requests == 0
        assert "already_complete" in again.stdout or "already complete" in again.stderr
        assert dataset_files(out) == before  # same files, same bytes
        assert {p: (out / p).stat().st_mtime_ns for p in before} == stamps  # not even rewritten
    assert (run_dir(out) / "manifest.json").read_bytes() == manifest
    assert sim.stats.requests == 120
    check_equal(out, sim, pairs)


# -- 4. an output that cannot be written ----------------------------------------------------------
@pytest.mark.parametrize("where", ["parent_is_file", "out_is_file"])
async def test_unwritable_output_is_a_storage_error(sim: Simulator, tmp_path: Path, where: str) -> None:
    # Root ignores permission bits, so make the path impossible instead: a regular file
    # stands where a folder must be.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker / "out" if where == "parent_is_file" else blocker
    src = write_pairs(tmp_path / "pairs.csv", pairs_for(10))
    cli = Cli(sim, src, out, tmp_path / "logs")
    att = await cli.run(limit=20)
    assert att.rc == EXIT_STORAGE, (att.rc, att.stderr)
    assert_no_traceback(att)
    lines = [line for line in att.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, att.stderr  # one clear line, nothing else
    assert "ERROR" in lines[0] and str(blocker) in lines[0] and "Not a directory" in lines[0], lines[0]
    assert att.stdout == ""
    assert sim.stats.requests == 0  # failed before spending any request
    assert blocker.read_text() == "not a folder"


async def test_unwritable_dataset_folder_at_publish_is_a_storage_error(sim: Simulator, tmp_path: Path) -> None:
    """The state folder is fine but a table folder cannot be created: the failure comes
    only at publish, after every request; exit 6, and the run resumes once it is fixed."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "send_stats").write_text("in the way")
    pairs = pairs_for(30, prefix="p-")
    src = write_pairs(tmp_path / "pairs.csv", pairs)
    cli = Cli(sim, src, out, tmp_path / "logs")
    att = await cli.run(limit=20)
    assert att.rc == EXIT_STORAGE, (att.rc, att.stderr)
    assert_no_traceback(att)
    errors = [line for line in att.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "send_stats" in errors[0], att.stderr
    assert att.requests == 30
    (out / "send_stats").unlink()
    fixed = await cli.run()
    assert fixed.rc == EXIT_OK, fixed.stderr
    assert fixed.requests == 0  # committed pairs are not fetched again
    check_equal(out, sim, pairs)
    assert_clean_dataset(out)


async def test_a_failed_publish_redone_with_pairs_of_earlier_days_writes_each_row_once(
    sim: Simulator, tmp_path: Path
) -> None:
    """File numbers are counted per table across dates. A publish fails at its last
    send_stats partition after writing the earlier ones; the rerun adds pairs of earlier days,
    which shifts every partition's numbers, so the files the failed publish left are not
    replaced by name. They are cleared before each partition is written again: every row
    once, and exactly the files the manifest lists."""
    out = tmp_path / "out"
    pairs = pairs_for(80, prefix="e-")
    late = [p for p in pairs if sim.send_date(*p) >= date(2026, 11, 20)]  # days 11-20 .. 11-27
    early = [p for p in pairs if sim.send_date(*p) <= date(2026, 11, 10)]  # days 11-13 .. 11-23
    assert len(late) >= 10 and len(early) >= 10
    (out / "send_stats").mkdir(parents=True)
    (out / "send_stats" / "date=2026-11-27").write_text("in the way")  # the last partition fails
    with pytest.raises(StorageError, match="date=2026-11-27"):
        await run(sim, late, out)
    left = sorted(p.relative_to(out).as_posix() for p in (out / "send_stats").rglob("*.parquet"))
    assert len(left) == 7  # 11-20 .. 11-26, published before the failure
    (out / "send_stats" / "date=2026-11-27").unlink()
    summary = await run(sim, late + early, out)
    assert summary.status == "complete" and summary.pairs_added == len(early)
    check_equal(out, sim, late + early)
    assert_clean_dataset(out)
    assert not set(left) <= {p.relative_to(out).as_posix() for p in (out / "send_stats").rglob("*.parquet")}


# -- --overwrite: the earlier run goes only for a new one, and goes whole --------------------------
def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file of the output, state and documents included, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


async def test_overwrite_with_a_missing_or_bad_pairs_input_deletes_nothing(sim: Simulator, tmp_path: Path) -> None:
    """The input is read and checked before the earlier run is touched: a mistyped path, a
    bad line or an input with no pairs is exit 2 (ConfigError) with the earlier run's data,
    documents and state as they were, and it still reruns as complete. A good input then
    replaces it."""
    out = tmp_path / "out"
    pairs = pairs_for(40, prefix="w-")
    assert (await run(sim, pairs, out)).status == "complete"
    before = _snapshot(out)
    assert sum(name.endswith(".parquet") for name in before) >= 10
    bad = tmp_path / "bad.csv"
    bad.write_text("campaign_id,send_id\nc1,s1\nc2,\n")
    empty = tmp_path / "empty.csv"  # a truncated upstream export: replacing the run with it deletes everything
    empty.write_text("campaign_id,send_id\n")
    cases = ((tmp_path / "typo.csv", "no such file"), (bad, "send_id is empty"), (empty, "holds no pairs"))
    for source, message in cases:
        with pytest.raises(ConfigError, match=message):
            await run(sim, source, out, overwrite=True)
        assert _snapshot(out) == before
    requests = sim.stats.requests
    assert (await run(sim, pairs, out)).status == "already_complete" and sim.stats.requests == requests
    others = pairs_for(12, prefix="x-")
    redo = await run(sim, others, out, overwrite=True)
    assert redo.status == "complete" and redo.pairs_total == 12 and redo.pairs_added == 12
    check_equal(out, sim, others)  # nothing of the earlier run
    assert_clean_dataset(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_while_an_overwrite_reads_its_input_leaves_the_old_run(
    sim: Simulator, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM or SIGINT while ``--overwrite`` reads a large input: the read stops at its
    next pair and rolls back, exit 5, and the old run's files are all there, unchanged. The
    signal used to reach only the fetch: the read went on to the end, was committed, and the
    old run's files were deleted before the exit 5 (an independent tester's repro)."""
    out = tmp_path / "out"
    pairs = pairs_for(40, prefix="w-")
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), out, tmp_path / "logs")
    assert (await cli.run()).rc == EXIT_OK
    data = {k: v for k, v in _snapshot(out).items() if not k.startswith("_bulkexport/")}
    assert sum(name.endswith(".parquet") for name in data) >= 10
    big = write_pairs(tmp_path / "big.csv", pairs_for(1_500_000, prefix="big-"))
    started = time.monotonic()

    async def reading() -> bool:  # start-up is well under 3 s; the read of 1.5M pairs well over
        return time.monotonic() - started >= 3.0

    other = Cli(sim, big, out, tmp_path / "logs2")
    stopped = await other.run_until(reading, "--overwrite", sig=sig, limit=60)
    assert stopped.rc == EXIT_INTERRUPTED, stopped.stderr[-2000:]
    assert "stopped while reading the pairs" in stopped.stderr and "removed run" not in stopped.stderr
    assert {k: v for k, v in _snapshot(out).items() if not k.startswith("_bulkexport/")} == data
    again = await cli.run()  # the old run, still complete
    assert again.rc == EXIT_OK and again.requests == 0, again.stderr
    check_equal(out, sim, pairs)


async def test_overwrite_after_a_failed_publish_removes_the_files_it_left(sim: Simulator, tmp_path: Path) -> None:
    """A publish that failed halfway left files that no table of the state lists: an
    --overwrite with other pairs removes them too (every file of the run in every partition
    it staged rows for), so the dataset holds the new pairs' rows only. The new pairs reach
    none of the old run's days, so its publish (which clears its own generation's names in
    the partitions it writes) cannot be what removes them."""
    out = tmp_path / "out"
    first = [p for p in pairs_for(60, prefix="f-") if sim.send_date(*p) <= date(2026, 11, 10)]  # 11-13 .. 11-23
    others = [p for p in pairs_for(60, prefix="g-") if sim.send_date(*p) >= date(2026, 11, 24)][:10]  # 11-24 ..
    assert len(first) >= 5 and len(others) == 10
    (out / "send_stats").mkdir(parents=True)
    (out / "send_stats" / "date=2026-11-23").write_text("in the way")  # the first run's last day
    with pytest.raises(StorageError):
        await run(sim, first, out)
    assert len(list((out / "send_stats").rglob("*.parquet"))) == 10  # 11-13 .. 11-22
    (out / "send_stats" / "date=2026-11-23").unlink()
    assert (await run(sim, others, out, overwrite=True)).status == "complete"
    check_equal(out, sim, others)
    assert_clean_dataset(out)


@pytest.mark.parametrize("then", ["a plain rerun", "another overwrite"])
async def test_an_overwrite_stopped_before_its_deletions_leaves_them_to_the_next_run(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """The new run's pairs and the list of what to delete are one transaction: an overwrite
    that stops right after it (here: the output fails as the deletions start) leaves them
    recorded, and the next invocation deletes them before it publishes: a plain rerun, or
    another --overwrite (whose own list, of a run with nothing staged yet, adds to it). The
    earlier run's pairs were sent on days the new ones never reach: its partitions are not
    rewritten by the new run's publish, so only the recorded deletions can clear them."""
    out = tmp_path / "out"
    first = [p for p in pairs_for(60, prefix="h-") if sim.send_date(*p) <= date(2026, 11, 10)]  # 11-13 .. 11-23
    others = [p for p in pairs_for(60, prefix="k-") if sim.send_date(*p) >= date(2026, 11, 24)][:10]  # 11-24 ..
    assert len(first) >= 5 and len(others) == 10
    await run(sim, first, out)
    real = RunDocuments.remove_replaced

    def failing(self: RunDocuments, *args: Any) -> int:
        raise StorageError("cannot remove the earlier run: Input/output error")

    monkeypatch.setattr(RunDocuments, "remove_replaced", failing)
    with pytest.raises(StorageError, match="earlier run"):
        await run(sim, others, out, overwrite=True)
    monkeypatch.setattr(RunDocuments, "remove_replaced", real)
    again = await run(sim, others, out, overwrite=then == "another overwrite")
    assert again.status == "complete" and again.pairs_total == 10
    check_equal(out, sim, others)
    assert_clean_dataset(out)


# -- 5. the failures file, and --retry-failed -------------------------------------------------------
async def test_failures_file_and_retry_failed(sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(40, prefix="f-")
    bad = pairs[17]
    rule = FaultRule(kind="status", status=404, times=None, message="send not found", match=lambda c, s: (c, s) == bad)
    sim.faults.append(rule)
    src = write_pairs(tmp_path / "pairs.csv", pairs)
    out = tmp_path / "out"
    cli = Cli(sim, src, out, tmp_path / "logs")

    first = await cli.run()
    assert first.rc == EXIT_PARTIAL, (first.rc, first.stderr)
    assert_no_traceback(first)
    assert sim.stats.per_pair[bad] == 1  # a 404 is not retried
    failures_path = run_dir(out) / "failures.jsonl"
    assert f"failures   {failures_path}" in first.stdout
    lines = failures_path.read_bytes().splitlines()
    assert len(lines) == 1, lines
    rec = orjson.loads(lines[0])
    failed_at = rec.pop("failed_at")
    assert rec == {"campaign_id": bad[0], "send_id": bad[1], "status": 404, "message": "send not found", "attempts": 1}
    assert failed_at.startswith("20")  # an ISO timestamp
    manifest = orjson.loads((run_dir(out) / "manifest.json").read_bytes())
    assert manifest["status"] == "partial" and manifest["failures_total"] == 1
    good = [p for p in pairs if p != bad]
    check_equal(out, sim, good)  # the rest is published and exact

    sim.faults.clear()
    retried = await cli.run("--retry-failed")
    assert retried.rc == EXIT_OK, retried.stderr
    assert_no_traceback(retried)
    assert retried.requests == 1  # only the failed pair
    assert sim.stats.per_pair[bad] == 2
    assert failures_path.read_bytes() == b""
    check_equal(out, sim, pairs)
    assert_clean_dataset(out)


# -- crash windows and re-runs around the end of a run ----------------------------------------------
async def test_kill9_between_publish_and_manifest_then_rerun_writes_manifest(sim: Simulator, tmp_path: Path) -> None:
    """The last steps of a run write the dataset files, then failures.jsonl and
    manifest.json, and only then mark the run published. A kill after files became visible
    but before the manifest must not leave a finished run without its manifest: the re-run
    publishes again (same names) and writes it, without a request."""
    pairs = pairs_for(100, prefix="m-")
    src = write_pairs(tmp_path / "pairs.csv", pairs)
    out = tmp_path / "out"
    manifest = run_dir(out) / "manifest.json"
    cli = Cli(sim, src, out, tmp_path / "logs")

    async def published_no_manifest() -> bool:
        return (out / "send_totals").exists() and not manifest.exists()

    att = await cli.run_until(published_no_manifest)
    assert att.rc == -signal.SIGKILL, "the run ended before the window could be hit"
    assert not manifest.exists()  # the window was hit

    again = await cli.run()
    assert again.rc == EXIT_OK, again.stderr
    assert again.requests == 0
    assert manifest.exists(), f"re-run said {again.stdout.splitlines()[:1]} but the run still has no manifest.json"
    assert (run_dir(out) / "failures.jsonl").read_bytes() == b""
    check_equal(out, sim, pairs)
    assert_clean_dataset(out)


async def test_rerun_of_partial_run_still_reports_the_failure(sim: Simulator, tmp_path: Path) -> None:
    """Exit 3 means some pairs failed for good. Re-running the same command (what a
    scheduler does after a non-zero exit) must not turn that into 0 while the pair is still
    missing from the dataset; it spends no request either."""
    pairs = pairs_for(20, prefix="q-")
    bad = pairs[5]
    sim.faults.append(FaultRule(kind="status", status=404, times=None, match=lambda c, s: (c, s) == bad))
    src = write_pairs(tmp_path / "pairs.csv", pairs)
    cli = Cli(sim, src, tmp_path / "out", tmp_path / "logs")
    first = await cli.run()
    assert first.rc == EXIT_PARTIAL, first.stderr
    again = await cli.run()
    assert again.requests == 0
    assert_no_traceback(again)
    assert again.rc == EXIT_PARTIAL, f"re-run of a partial run exited {again.rc}: {again.stdout.splitlines()[:2]}"

"""Object storage: the same guarantees on S3, against a real S3 API server on loopback
(moto's standalone server, started and stopped by the s3 fixture in conftest), not a mock
of any client."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

import bulkexport
from bulkexport.errors import ConfigError, StorageError
from bulkexport.simulator import Simulator
from bulkexport.storage import open_target

from .helpers import BUCKET, EXIT_OK, RUN_ID, Cli, check_equal, pairs_for, run, write_pairs


def _objects(fs: pafs.S3FileSystem, prefix: str) -> dict[str, int]:
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path: i.size for i in infos if i.type == pafs.FileType.File}


async def test_export_to_s3_and_read_back(s3: pafs.S3FileSystem, sim: Simulator, tmp_path: Path) -> None:
    sim.extras = True
    pairs = pairs_for(150)
    out = f"s3://{BUCKET}/braze"
    summary = await run(sim, pairs, out)
    assert summary.status == "complete" and summary.pairs_done == 150
    check_equal(out, sim, pairs)  # type: ignore[arg-type]
    objects = _objects(s3, f"{BUCKET}/braze")
    data = [p for p in objects if "/_bulkexport/" not in p]
    assert data and all(p.rsplit("/", 1)[1].startswith(f"part-{RUN_ID}-0-") for p in data)
    assert len(data) == summary.files
    assert f"{BUCKET}/braze/_bulkexport/runs/{RUN_ID}/manifest.json" in objects
    assert summary.manifest == f"{out}/_bulkexport/runs/{RUN_ID}/manifest.json"
    # The state stayed on local disk, and a rerun is a no-op.
    assert list((tmp_path / "state").rglob("state.sqlite"))
    requests = sim.stats.requests
    again = await run(sim, pairs, out)
    assert again.status == "already_complete" and sim.stats.requests == requests


async def test_finished_elsewhere_is_not_redone(s3: pafs.S3FileSystem, sim: Simulator, tmp_path: Path) -> None:
    pairs = pairs_for(30)
    out = f"s3://{BUCKET}/other"
    await run(sim, pairs, out)
    requests = sim.stats.requests
    # Another worker VM: no local state, but the run's manifest is next to the data.
    again = await run(sim, pairs, out, state_dir=str(tmp_path / "fresh-vm"))
    assert again.status == "already_complete"
    assert sim.stats.requests == requests


async def test_kill9_and_resume_on_s3_equals_uninterrupted(
    s3: pafs.S3FileSystem, sim: Simulator, tmp_path: Path
) -> None:
    sim.latency = 0.02
    pairs = pairs_for(300)
    out = f"s3://{BUCKET}/killed"
    cli = Cli(sim, write_pairs(tmp_path / "pairs.csv", pairs), out, tmp_path / "logs")  # type: ignore[arg-type]

    async def mid_fetch() -> bool:
        return sim.stats.requests >= 120

    async def publishing() -> bool:
        return any("/send_stats/" in p for p in _objects(s3, f"{BUCKET}/killed"))

    first = await cli.run_until(mid_fetch)
    assert first.rc == -9
    assert not _objects(s3, f"{BUCKET}/killed")  # nothing visible before the run publishes
    second = await cli.run_until(publishing)
    assert second.rc == -9 and second.requests < 300  # committed pairs were not refetched
    final = await cli.run()
    assert final.rc == EXIT_OK, final.stderr
    check_equal(out, sim, pairs)  # type: ignore[arg-type]
    assert sum(a.requests for a in cli.attempts) <= 300 * 1.5
    names = [p.rsplit("/", 1)[1] for p in _objects(s3, f"{BUCKET}/killed") if "/_bulkexport/" not in p]
    assert all(n.startswith("part-") and n.endswith(".parquet") for n in names)  # no temporary objects
    table = bulkexport.read_table(out, "send_totals")
    assert table.num_rows == len({(r["campaign_id"], r["send_id"], r["date"]) for r in table.to_pylist()})


async def test_one_prefix_spelt_two_ways_is_one_run(s3: pafs.S3FileSystem, sim: Simulator) -> None:
    """``s3://b/sp`` and ``s3://b/sp/`` name one prefix, so one run: its local state and lock
    are found under either spelling. Two runs would write the same object names, each
    replacing the other's files (one run's rows lost, then another's doubled)."""
    first, more = pairs_for(80)[:40], pairs_for(80)[40:]
    await run(sim, first, f"s3://{BUCKET}/sp")
    requests = sim.stats.requests
    again = await run(sim, first, f"s3://{BUCKET}/sp/")
    assert again.status == "already_complete" and sim.stats.requests == requests
    added = await run(sim, more, f"s3://{BUCKET}/sp/")  # new pairs join the same run
    assert added.pairs_added == 40 and sim.stats.requests == requests + 40
    check_equal(f"s3://{BUCKET}/sp", sim, first + more)  # type: ignore[arg-type]


@pytest.mark.parametrize("out", [f"s3://{BUCKET}//x", f"s3://{BUCKET}/a/../x", f"s3://{BUCKET}/./x"])
def test_an_output_uri_with_an_empty_or_relative_segment_is_refused(s3: pafs.S3FileSystem, out: str) -> None:
    with pytest.raises(ConfigError, match="path segment"):
        open_target(out)


async def test_a_missing_bucket_fails_before_the_first_request(s3: pafs.S3FileSystem, sim: Simulator) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        await run(sim, pairs_for(20), "s3://no-such-bucket/braze")
    assert sim.stats.requests == 0

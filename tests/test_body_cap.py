"""Response bodies are capped: a huge body (declared, chunked, or a gzip bomb of valid JSON)
is a bad response that is retried and then recorded as failed for good, and it never costs
more memory than the cap, however large it is."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkexport.simulator import FaultRule, Simulator

from .helpers import API_KEY, RUN_ID, check_equal, export_args, pairs_for, run, write_pairs

_KINDS = ("huge_body", "huge_chunked", "huge_gzip")


def _only(pair: tuple[str, str]) -> Any:
    return lambda c, s: (c, s) == pair


def _failures(out: Path) -> dict[tuple[str, str], tuple[int, str, int]]:
    lines = (out / "_bulkexport" / "runs" / RUN_ID / "failures.jsonl").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    return {(f["campaign_id"], f["send_id"]): (f["status"], f["message"], f["attempts"]) for f in records}


async def test_bodies_over_the_cap_are_retried_then_failed_and_the_rest_completes(
    sim: Simulator, tmp_path: Path
) -> None:
    pairs = pairs_for(12)
    huge = {kind: pairs[2 + 3 * i] for i, kind in enumerate(_KINDS)}
    small = pairs[11]  # a large body under the cap is accepted (and is the exact payload)
    for kind, pair in huge.items():
        sim.faults.append(FaultRule(kind=kind, size=5 * 2**20, times=None, match=_only(pair)))
    sim.faults.append(FaultRule(kind="huge_chunked", size=900 * 2**10, times=None, match=_only(small)))
    out = tmp_path / "out"
    summary = await run(sim, pairs, out, max_body_bytes=2**20, max_attempts=3)
    assert (summary.status, summary.pairs_done, summary.pairs_failed) == ("partial", 9, 3)
    reason = "response body larger than 1,048,576 bytes (max_body_bytes); not read"
    assert _failures(out) == {pair: (200, reason, 3) for pair in huge.values()}
    assert {pair: sim.stats.per_pair[pair] for pair in huge.values()} == dict.fromkeys(huge.values(), 3)
    assert summary.retries == 6
    check_equal(out, sim, [p for p in pairs if p not in huge.values()])


_CHILD = """
import resource, sys
from bulkexport.cli import main
code = main(sys.argv[1:])
print(f"peak-rss-kib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


async def _peak_rss(args: list[Any]) -> tuple[int, int, str]:
    """Run the CLI in a child process; return its exit code, its peak RSS in MiB, and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    env["BRAZE_API_KEY"] = API_KEY
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    async with asyncio.timeout(120):
        _, err = await proc.communicate()
    text = err.decode()
    found = re.search(r"peak-rss-kib (\d+)", text)
    assert found and proc.returncode is not None, text
    return proc.returncode, int(found.group(1)) // 1024, text


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
async def test_a_200_mb_body_costs_at_most_the_cap_in_memory(sim: Simulator, tmp_path: Path) -> None:
    normal = pairs_for(8)
    huge = pairs_for(3, prefix="huge")
    for kind, pair in zip(_KINDS, huge, strict=True):
        sim.faults.append(FaultRule(kind=kind, size=200 * 2**20, times=None, match=_only(pair)))
    extra = ("--max-body-mb", "32", "--max-attempts", "2", "--concurrency", "2")
    # The same command over well-behaved pairs only: the baseline of the process's memory.
    code, control, err = await _peak_rss(
        export_args(sim, write_pairs(tmp_path / "normal.csv", normal), tmp_path / "control", *extra)
    )
    assert code == 0, err
    out = tmp_path / "out"
    code, hostile, err = await _peak_rss(
        export_args(sim, write_pairs(tmp_path / "all.csv", normal + huge), out, *extra)
    )
    assert code == 3, err
    assert "Traceback" not in err
    reason = "response body larger than 33,554,432 bytes (max_body_bytes); not read"
    assert _failures(out) == {pair: (200, reason, 2) for pair in huge}
    check_equal(out, sim, normal)
    # Two 32 MiB bodies at most in flight at once; without the cap each would cost 200 MiB+.
    assert hostile - control < 100, f"peak RSS {hostile} MiB against {control} MiB without huge bodies"

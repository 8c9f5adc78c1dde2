"""The README cannot drift from the code: its exit-code table, the flags it shows, the
environment variables and the manifest statuses are read from the README and compared with
what the CLI, the settings and the run summary really define (sqlite-utils' docs tests are
the model)."""

from __future__ import annotations

import argparse
import re
from typing import get_args

from bulkexport import env
from bulkexport.cli import EXIT_CODES, _parser
from bulkexport.settings import ENV, OPTIONS
from bulkexport.simulator.__main__ import _parser as simulator_parser
from bulkexport.summary import Status

from .helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
#: Flags of the benchmark runner, checked against its source below.
BENCHMARK_FLAGS = {"--only", "--smoke", "--with-1m", "--json", "--quick"}
#: Flags of other tools the README shows.
OTHER_FLAGS = {"--strict"}  # mypy


def _section(title: str) -> str:
    start = README.index(f"\n### {title}\n")
    end = README.index("\n#", start + len(title) + 6)
    return README[start:end]


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags(sub)
    return flags


def test_exit_code_table_is_the_cli_s() -> None:
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", _section("Exit codes"), re.M)
    assert [int(code) for code, _ in rows] == sorted(EXIT_CODES)
    for code, meaning in rows:
        # The README explains more; every word of the CLI's text (before its advice) is there.
        short = EXIT_CODES[int(code)].split(";")[0].split(" (")[0]
        words = set(re.findall(r"[a-z]+", meaning.lower()))
        assert set(re.findall(r"[a-z]+", short.lower())) <= words, (code, meaning, short)


def test_every_export_option_is_documented_and_every_documented_flag_exists() -> None:
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README))
    export = {o.flag for o in OPTIONS}
    assert export - shown == set(), "export options the README never mentions"
    known = _flags(_parser()) | _flags(simulator_parser()) | BENCHMARK_FLAGS | OTHER_FLAGS
    assert shown - known == set(), "flags in the README that no parser defines"
    runner = (ROOT / "benchmarks" / "run.py").read_text() + (ROOT / "benchmarks" / "rate_control.py").read_text()
    assert all(f'"{flag}"' in runner for flag in BENCHMARK_FLAGS & shown)


def test_environment_variables_match_env_module() -> None:
    names = {getattr(env, n) for n in env.__all__}
    shown = set(re.findall(r"\b(?:BRAZE|BULKEXPORT)_[A-Z][A-Z_]*[A-Z]\b", README))
    assert names - shown == set(), "variables bulkexport reads that the README never names"
    assert shown - names == set(), "variables the README names that bulkexport does not read"
    assert set(ENV) <= names


def test_manifest_statuses_are_the_summary_s() -> None:
    statuses = set(get_args(Status)) - {"already_complete"}  # an invocation's, never in a manifest
    listed = re.search(r'`"status"` \(([^)]*)\)', README)
    assert listed is not None
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == statuses


def test_code_layout_table_lists_every_module() -> None:
    section = README[README.index("\n## The code, top-down\n"):]
    table = section[: section.index("\n\nTests mirror")]
    listed = set(re.findall(r"`([\w/]+(?:\.py|\.c|/))`", table))
    package = ROOT / "bulkexport"
    modules = {p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "_version.py")}
    modules |= {p.name for p in package.glob("*.c")}
    modules |= {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    lake = {p.name for p in (package / "lakehouse").glob("*.py") if p.name != "__init__.py"}
    sim = {p.name for p in (package / "simulator").glob("*.py") if not p.name.startswith("__")}
    assert modules <= listed, "modules the layout table does not list"
    assert lake | sim <= listed, "lakehouse or simulator modules the table does not name"
    assert listed <= modules | lake | sim, "the table lists modules that do not exist"

"""Every option, fed values a careless user or a broken template produces: each is refused
with exit code 2 and one line on stderr, never a traceback. Also the endpoint rules and the
one rule for ``--ending-at``. The CLI runs in-process (``bulkexport.cli.main``), with
``--dry-run`` so that a value wrongly accepted shows as exit 0 instead of a request."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from bulkexport.cli import main
from bulkexport.errors import ConfigError
from bulkexport.inputs import check_endpoint, default_run_id, parse_ending_at, retention_warning
from bulkexport.settings import OPTIONS, resolve
from bulkexport.simulator import Simulator

from .helpers import API_KEY, cli, no_traceback, pairs_for, run, write_pairs

#: Values that must each be refused, by option (``dest``); "{name}" stands for a file made
#: by :func:`_files`. Bool flags take no value, so ``--flag=value`` is their hostile form.
HOSTILE: dict[str, list[str]] = {
    "pairs": ["", " ", "{missing}", "{dir}", "-", "{bad_ids}", "{empty}", "a\x00b"],
    "pairs_format": ["", "xml", "CSV"],
    "out": ["", " ", "a\x00b", "ftp://host/x", "s3://", "file://", "s3://user:secret@bucket/x", "hdfs://x/y"],
    "endpoint": [
        "", "ftp://x", "http://127.0.0.1:99999", "http://127.0.0.1:0", "http://127.0.0.1:abc", "http://[::1",
        "https://rest.iad-01.braze.com/sends/data_series", "https://rest.iad-01.braze.com/v1/",
        "https://rest.iad-01.braze.com/?x=1", "https://rest.iad-01.braze.com?", "https://rest.iad-01.braze.com#f",
        "http://user:pw@127.0.0.1:8080", "http://127.0.0.1 :80", "http://10.0.0.1", "https://evil.example",
        "http://127.0.0.1:80\n80",
    ],
    "allow_custom_endpoint": ["yes"],
    "api_key_file": ["", "{missing}", "{dir}", "{short_key}", "{empty}", "{binary}", "{big}", "/dev/zero"],
    "length": ["0", "-1", "101", "inf", "nan", "1.5", "", "abc", "9" * 30, "1e3"],
    "ending_at": [
        "", "yesterday", "2026-13-01", "2026-11-27T25:00", "0001-01-01", "9999-12-31T23:59:59-05:00",
        "2026-11-27T00:00+25:00", "1700000000",
    ],
    "run_id": ["", "../x", "a/b", "x" * 200, "-x", "a b", ".hidden", "a\nb"],
    "state_dir": ["", " ", "a\x00b"],
    "overwrite": ["yes"],
    "retry_failed": ["yes"],
    "dry_run": ["yes"],
    "rate_limit": ["0", "-5", "inf", "nan", "1.5", "", "x", "9" * 30],
    "share": ["0", "-0.1", "1.5", "inf", "nan", "", "x", "1e-300"],
    "reserve": ["-0.1", "1", "1.5", "inf", "nan", "", "0.9999999999"],
    "max_rate": ["0", "-1", "inf", "nan", "", "1e-300", "1e300"],
    "burst": ["0", "-1", "inf", "", "9" * 30, "300000"],
    "concurrency": ["0", "-1", "100000", "inf", "", "1.5"],
    "request_timeout": ["0", "-1", "inf", "-inf", "nan", "1e300", "", "x"],
    "max_attempts": ["0", "-1", "1000", "inf", ""],
    "max_body_mb": ["0", "-1", "100000", "inf", "1.5", ""],
    "max_outage": ["0", "-1", "inf", "nan", "1e300", "", "x"],
    "wait": ["yes"],
    "checkpoint_interval": ["0", "-1", "inf", "nan", "1e-300", "1e300", ""],
    "log_level": ["", "verbose", "INFO"],
    "log_format": ["", "xml"],
    "table_format": ["", "csv", "DELTA", "hudi"],
    # Any catalog setting is refused without --table-format iceberg (the base call has none).
    "catalog_uri": ["", " ", "a\x00b", "sqlite:///catalog.db"],
    "catalog_type": ["", " ", "sql"],
    "rows_per_commit": ["0", "-1", "inf", "1.5", "", "9" * 30],
}  # fmt: skip
_FLAG = {o.dest: o for o in OPTIONS}


def _files(tmp: Path) -> dict[str, str]:
    (tmp / "dir").mkdir(exist_ok=True)
    write_pairs(tmp / "pairs.csv", pairs_for(5))
    (tmp / "bad_ids.csv").write_text("campaign_id,send_id\nc1,s1\nc2,s\t2\n")
    (tmp / "empty.csv").write_bytes(b"")
    (tmp / "short_key").write_text("k-123\n")
    (tmp / "binary").write_bytes(b"\xff\xfe" * 40)
    (tmp / "big").write_bytes(b"k" * 5000)
    return {
        "missing": str(tmp / "nope.csv"), "dir": str(tmp / "dir"), "bad_ids": str(tmp / "bad_ids.csv"),
        "empty": str(tmp / "empty.csv"), "short_key": str(tmp / "short_key"), "binary": str(tmp / "binary"),
        "big": str(tmp / "big"), "pairs": str(tmp / "pairs.csv"),
    }  # fmt: skip


def _one_error_line(code: int, out: str, err: str, *, mentions: tuple[str, ...]) -> str:
    assert code == 2, f"exit {code}: {out}{err}"
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    flat = lines[0].replace("-", " ").replace("_", " ").lower()
    wanted = [m.replace("-", " ").replace("_", " ").lower() for m in mentions if m.strip()]
    assert any(m in flat for m in wanted), f"{lines[0]!r} names none of {mentions}"
    return lines[0]


def test_every_export_option_refuses_hostile_values_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(HOSTILE) == set(_FLAG), "every export option needs hostile values here"
    for var in ("BRAZE_REST_ENDPOINT", "BRAZE_API_KEY_FILE", "BULKEXPORT_CONFIG", "BULKEXPORT_LOG_LEVEL",
                "BULKEXPORT_LOG_FORMAT", "BULKEXPORT_STATE_DIR", "BULKEXPORT_CATALOG_URI"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BRAZE_API_KEY", API_KEY)
    files = _files(tmp_path)
    base = ["export", "--pairs", files["pairs"], "--out", str(tmp_path / "out"),
            "--endpoint", "http://127.0.0.1:9", "--ending-at", date.today().isoformat(), "--dry-run"]  # fmt: skip
    assert main(base) == 0, capsys.readouterr().err  # the base call is fine
    capsys.readouterr()
    cases = 0
    for dest, values in HOSTILE.items():
        option = _FLAG[dest]
        for raw in values:
            value = raw.format(**files)
            code = main([*base, f"{option.flag}={value}"])
            out, err = capsys.readouterr()
            key = ("api key",) if dest == "api_key_file" else ()
            _one_error_line(code, out, err, mentions=(dest, option.flag, value, *key))
            cases += 1
    assert cases >= 150
    assert not (tmp_path / "out").exists()  # nothing was created by a refused call


async def test_two_hostile_values_through_the_real_console_script(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.csv", pairs_for(3))
    common = ["export", "--pairs", pairs, "--out", tmp_path / "out"]
    code, out, err = await cli(*common, "--endpoint", "http://127.0.0.1:8080", "--timeout", "inf")
    line = _one_error_line(code, out, err, mentions=("--timeout",))
    assert "request_timeout (--timeout) must be a number greater than 0 and at most 3,600, got inf" in line
    code, out, err = await cli(*common, "--endpoint", "http://127.0.0.1:99999")
    line = _one_error_line(code, out, err, mentions=("endpoint",))
    assert "'http://127.0.0.1:99999' is not a valid URL: its port must be a number from 1 to 65535" in line
    no_traceback(err)


#: Hostile TOML values by key; "{missing}" is a file that does not exist.
TOML_HOSTILE: dict[str, list[str]] = {
    "pairs": ['""', "5", "[1]", "true", '"a\\u0000b"'],
    "pairs_format": ['"xml"', "1"],
    "out": ['""', "5", '"ftp://h/x"'],
    "endpoint": ['""', '"http://127.0.0.1:99999"', '"https://rest.iad-01.braze.com/sends/data_series"', "{}"],
    "allow_custom_endpoint": ['"maybe"', "2", "[]"],
    "api_key_file": ['""', '"{missing}"', "7"],
    "length": ["0", "inf", "nan", '"ten"', "1.5", "true", "9223372036854775807", "-inf"],
    "ending_at": ['""', '"tomorrow"', "12:00:00", "0001-01-01", "5"],
    "run_id": ['""', '"../x"', "5"],
    "state_dir": ['""', "5"],
    "overwrite": ['"maybe"', "1"],
    "retry_failed": ['"maybe"'],
    "dry_run": ['"maybe"'],
    "rate_limit": ["0", "inf", "nan", "-1", "1.5", '"many"'],
    "share": ["0", "inf", "nan", "-0.5", "2", '"half"'],
    "reserve": ["1", "inf", "nan", "-0.5"],
    "max_rate": ["0", "inf", "nan", "-1", "1e300"],
    "burst": ["0", "inf", "9223372036854775807"],
    "concurrency": ["0", "100000", "inf", "1.5"],
    "request_timeout": ["0", "inf", "nan", "-1", "1e300"],
    "max_attempts": ["0", "1000", "inf"],
    "max_body_mb": ["0", "100000", "inf", "1.5"],
    "max_outage": ["0", "-1", "1e300", '"soon"'],
    "wait": ['"maybe"'],
    "checkpoint_interval": ["0", "inf", "nan", "1e-300"],
    "log_level": ['"verbose"', "1"],
    "log_format": ['"xml"', "[]"],
    "table_format": ['"csv"', "1", '""'],
    "catalog_uri": ['""', "5", '"sqlite:///catalog.db"'],
    "catalog_type": ['""', "[]", '"sql"'],
    "rows_per_commit": ["0", "inf", "1.5", '"many"', "-5"],
}


def test_config_files_with_hostile_values_are_refused_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(TOML_HOSTILE) == set(_FLAG)
    for var in ("BRAZE_API_KEY", "BRAZE_API_KEY_FILE", "BRAZE_REST_ENDPOINT", "BULKEXPORT_CONFIG",
                "BULKEXPORT_CATALOG_URI"):
        monkeypatch.delenv(var, raising=False)
    files = _files(tmp_path)
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    good = {"pairs": f'"{files["pairs"]}"', "out": f'"{tmp_path / "out"}"', "endpoint": '"http://127.0.0.1:9"',
            "ending_at": f"{date.today().isoformat()}", "dry_run": "true", "api_key_file": f'"{key_file}"'}  # fmt: skip
    path = tmp_path / "bulkexport.toml"
    path.write_text("[export]\n" + "".join(f"{k} = {v}\n" for k, v in good.items()))
    assert main(["export", "--config", str(path)]) == 0, capsys.readouterr().err  # a TOML date works
    capsys.readouterr()
    for key, values in TOML_HOSTILE.items():
        for value in values:
            settings = {**good, key: value.replace("{missing}", files["missing"])}
            path.write_text("[export]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
            code = main(["export", "--config", str(path)])
            out, err = capsys.readouterr()
            extra = ("api key", files["missing"]) if key == "api_key_file" else ()
            _one_error_line(code, out, err, mentions=(key, *extra))

    # The file itself: empty path, missing, a folder, a device, not UTF-8, not TOML.
    (tmp_path / "latin1.toml").write_bytes(b'pairs = "caf\xe9.csv"\n')
    (tmp_path / "broken.toml").write_text("reserve = [\n")
    for config in ["", files["missing"], files["dir"], "/dev/zero", str(tmp_path / "latin1.toml"),
                   str(tmp_path / "broken.toml")]:  # fmt: skip
        code = main(["export", "--config", config, "--pairs", files["pairs"], "--out", str(tmp_path / "o")])
        out, err = capsys.readouterr()
        _one_error_line(code, out, err, mentions=("config",))
    # A hostile environment: a log level nobody knows, an endpoint with a path.
    monkeypatch.setenv("BRAZE_API_KEY", API_KEY)
    base = ["export", "--pairs", files["pairs"], "--out", str(tmp_path / "o"), "--dry-run"]
    for var, value in [("BULKEXPORT_LOG_LEVEL", "verbose"), ("BRAZE_REST_ENDPOINT", "https://rest.iad-01.braze.com/x")]:
        monkeypatch.setenv(var, value)
        code = main(base)
        out, err = capsys.readouterr()
        _one_error_line(code, out, err, mentions=(var, "endpoint"))
        monkeypatch.delenv(var)


# -- the endpoint -------------------------------------------------------------------------


def test_endpoint_is_normalised_to_its_root() -> None:
    assert check_endpoint("https://rest.iad-01.braze.com/") == "https://rest.iad-01.braze.com"
    assert check_endpoint(" HTTPS://REST.fra-01.Braze.EU ") == "https://rest.fra-01.braze.eu"
    assert check_endpoint("http://[::1]:8080") == "http://[::1]:8080"
    assert check_endpoint("http://localhost:65535/") == "http://localhost:65535"
    for bad in ("https://rest.iad-01.braze.com/sends/data_series", "https://rest.iad-01.braze.com/#",
                "http://127.0.0.1:65536", "https://rest.iad-01.braze.com:0"):  # fmt: skip
        with pytest.raises(ConfigError):
            check_endpoint(bad)


# -- --ending-at: one rule ------------------------------------------------------------------


def test_every_date_only_spelling_means_the_last_second_of_that_day_utc() -> None:
    end = datetime(2025, 3, 1, 23, 59, 59, tzinfo=UTC)
    for value in ("20250301", "2025-03-01", " 2025-03-01 ", "2025-W09-6", "2025W096", date(2025, 3, 1)):
        assert parse_ending_at(value) == end, value
        assert default_run_id(parse_ending_at(value)) == "2025-03-01"
    # A datetime keeps its own time and offset; without an offset it is UTC.
    assert parse_ending_at("2025-03-01T06:30") == datetime(2025, 3, 1, 6, 30, tzinfo=UTC)
    assert parse_ending_at("20250301T063000") == datetime(2025, 3, 1, 6, 30, tzinfo=UTC)
    plus2 = parse_ending_at("2025-03-01T06:30:00+02:00")
    assert plus2.utcoffset() == timedelta(hours=2) and plus2.hour == 6
    assert default_run_id(parse_ending_at("2025-03-01T23:30:00-05:00")) == "2025-03-01"


def test_retention_warning_when_the_series_lies_wholly_outside_what_braze_holds() -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    old = retention_warning(datetime(2026, 11, 13, 23, 59, 59, tzinfo=UTC), 15, now)
    assert old == (
        "the series ends 2026-11-13, more than 14 days ago: Braze keeps send analytics 14 days, "
        "so the requests will most likely return no data"
    )
    assert retention_warning(datetime(2026, 11, 14, 23, 59, 59, tzinfo=UTC), 15, now) is None
    assert retention_warning(datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC), 15, now) is None
    assert retention_warning(datetime(2026, 12, 12, 23, 59, 59, tzinfo=UTC), 15, now) is None  # starts today
    future = retention_warning(datetime(2026, 12, 13, 23, 59, 59, tzinfo=UTC), 15, now)
    assert future == "the series starts 2026-11-29, after now: the requests will return no data"


def test_dry_run_shows_the_rule_and_the_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRAZE_API_KEY", API_KEY)
    files = _files(tmp_path)
    base = ["export", "--pairs", files["pairs"], "--out", str(tmp_path / "o"), "--endpoint", "http://127.0.0.1:9",
            "--dry-run"]  # fmt: skip
    seen = []
    for value in ("20200301", "2020-03-01", "2020-W09-7"):
        assert main([*base, "--ending-at", value]) == 0
        seen.append(capsys.readouterr().out.splitlines()[:3])
    assert seen == [[
        "run        2020-03-01 (dry run: no request sent)",
        "series     15 days ending 2020-03-01T23:59:59Z",
        "warning    the series ends 2020-03-01, more than 14 days ago: Braze keeps send analytics 14 days, "
        "so the requests will most likely return no data",
    ]] * 3
    assert main([*base, "--ending-at", "2999-01-01"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == (
        "warning    the series starts 2998-12-18, after now: the requests will return no data"
    )
    today = date.today().isoformat()
    assert main([*base, "--ending-at", today]) == 0
    assert not any(line.startswith("warning") for line in capsys.readouterr().out.splitlines())


async def test_a_run_outside_retention_logs_the_warning(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bulkexport")
    summary = await run(sim, pairs_for(3), tmp_path, ending_at="2020-03-01")
    assert (summary.status, summary.run_id, summary.stats_rows) == ("complete", "2020-03-01", 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "the series ends 2020-03-01, more than 14 days ago: Braze keeps send analytics 14 days, "
        "so the requests will most likely return no data"
    ]


def test_toml_dates_are_ending_at_values(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("ending_at = 2026-11-27\n")
    assert resolve({"config": str(path), "pairs": "p", "out": "o"}, {})["ending_at"] == "2026-11-27"
    path.write_text("ending_at = 2026-11-27T06:00:00+02:00\n")
    assert resolve({"config": str(path), "pairs": "p", "out": "o"}, {})["ending_at"] == "2026-11-27T06:00:00+02:00"

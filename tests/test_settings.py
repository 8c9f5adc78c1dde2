"""Settings precedence (flags > environment > TOML file > defaults), the key file, and
``--dry-run``: pure functions and the real CLI, no request sent."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from bulkexport.errors import ConfigError
from bulkexport.settings import OPTIONS, resolve

from .helpers import API_KEY


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bulkexport.toml"
    path.write_text(text)
    return str(path)


def test_defaults_then_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = _toml(tmp_path, '[export]\npairs = "file.csv"\nout = "/lake"\nreserve = 0.3\nconcurrency = 8\n'
                'endpoint = "https://rest.iad-01.braze.com"\nlog_format = "json"\n')
    env = {"BRAZE_REST_ENDPOINT": "https://rest.fra-01.braze.eu", "BRAZE_API_KEY": "k-env",
           "BULKEXPORT_LOG_FORMAT": "text"}
    s = resolve({"config": cfg, "concurrency": 32}, env)
    assert s["pairs"] == "file.csv" and s["out"] == "/lake"  # from the file
    assert s["reserve"] == 0.3  # file beats default
    assert s["endpoint"] == "https://rest.fra-01.braze.eu"  # env beats file
    assert s["log_format"] == "text"  # env beats file
    assert s["concurrency"] == 32  # flag beats file
    assert s["length"] == 15 and s["share"] == 1.0  # defaults
    assert s["api_key"] == "k-env"


def test_every_option_has_a_default_and_help() -> None:
    for o in OPTIONS:
        assert o.help and o.flag.startswith("--")
        assert o.dest == o.flag[2:].replace("-", "_") or o.dest == "request_timeout"


def test_key_file_wins_over_env_and_is_stripped(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("  k-file\n")
    s = resolve({"pairs": "p", "out": "o", "api_key_file": str(key)}, {"BRAZE_API_KEY": "k-env"})
    assert s["api_key"] == "k-file"
    s = resolve({"pairs": "p", "out": "o"}, {"BRAZE_API_KEY_FILE": str(key)})
    assert s["api_key"] == "k-file"


@pytest.mark.parametrize(
    "text, message",
    [
        ('api_key = "secret"\n', "do not put the API key in a config file"),
        ("unknown_thing = 1\n", "unknown setting(s) unknown_thing"),
        ('length = "ten"\n', "length must be int"),
        ("reserve = [\n", "not valid TOML"),
        ('log_format = "xml"\n', "log_format must be one of text, json"),
    ],
)
def test_bad_config_files_are_clear(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve({"config": _toml(tmp_path, text), "pairs": "p", "out": "o"}, {})
    assert message in str(err.value)


def test_missing_required_and_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--out is required"):
        resolve({"pairs": "p"}, {})
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        resolve({"pairs": "p", "out": "o", "api_key_file": str(tmp_path / "nope")}, {})


def test_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("campaign_id,send_id\n" + "".join(f"c{i},s{i}\n" for i in range(500)) + "c1,s1\n")
    key = tmp_path / "key"
    key.write_text(API_KEY)
    cfg = _toml(tmp_path, f'pairs = "{pairs}"\nreserve = 0.3\n')
    out = tmp_path / "out"
    # Today: a series Braze still holds, so the plan has no retention warning on any day.
    today = date.today().isoformat()
    # The endpoint is a Braze host on the real internet: a dry run must not touch it.
    proc = subprocess.run(
        [sys.executable, "-m", "bulkexport.cli", "export", "--config", cfg, "--out", str(out),
         "--endpoint", "https://rest.iad-01.braze.com", "--api-key-file", str(key), "--dry-run",
         "--ending-at", f"{today}T23:59:59Z"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"run        {today} (dry run: no request sent)",
        f"series     15 days ending {today}T23:59:59Z",
        "pairs      500 unique of 501 read",
        "requests   500 (one per pair to fetch, before retries)",
        "pace       69.4 requests/s, at most 175,000 per 3600s window",
        "duration   about 0h00m10s if nobody else spends the budget",
    ]
    assert not out.exists()
    assert API_KEY not in proc.stdout + proc.stderr

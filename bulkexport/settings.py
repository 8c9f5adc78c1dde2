"""Where the CLI's settings come from, and which source wins.

Precedence, highest first: command-line flags, environment variables, the TOML file given by
``--config`` (or ``$BULKEXPORT_CONFIG``), built-in defaults. One table (:data:`OPTIONS`)
declares every ``export`` option once: its flag, type, default and help, so the parser, the
TOML keys and the README cannot drift apart.

The API key is deliberately not an option: it comes from ``--api-key-file`` (a file a secret
manager mounts), ``$BRAZE_API_KEY``, or ``api_key_file`` in the TOML file, never from a flag
or a TOML value, which would end up in shell history or version control.
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from . import env
from .config import DEFAULT_MAX_BODY_BYTES, TABLE_FORMATS, ExportConfig
from .errors import ConfigError
from .limiter import MIN_BURST

__all__ = ["ENV", "OPTIONS", "Option", "add_export_options", "resolve"]

#: A config file or key file larger than this is not one (``/dev/zero`` given by mistake
#: must not be read to the end of memory).
MAX_CONFIG_BYTES = 1 << 20
MAX_KEY_FILE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Option:
    """One ``export`` setting."""

    dest: str  # key in the resolved settings and in the TOML file
    flag: str
    type: type
    default: Any
    help: str
    group: str = "export"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


_FIELDS = {f.name: f for f in dataclasses.fields(ExportConfig)}
_MAX_BODY_MB: int = DEFAULT_MAX_BODY_BYTES // 2**20  # the flag counts MiB, the field bytes


def _field(dest: str, flag: str, help: str, *, type: type | None = None, **kw: Any) -> Option:
    """An option that sets the :class:`ExportConfig` field ``dest``: its default (and so the
    ``{default}`` in its help) is the field's, never restated here."""
    default = _FIELDS[dest].default
    return Option(dest, flag, type or builtins.type(default), default, help.format(default=default), **kw)


OPTIONS: tuple[Option, ...] = (
    Option("pairs", "--pairs", str, None,
           "pairs file: CSV with header campaign_id,send_id, JSON Lines, or Parquet; '-' reads standard input "
           "(with --pairs-format)", metavar="FILE"),
    Option("pairs_format", "--pairs-format", str, None, "format of --pairs when its extension does not tell",
           choices=("csv", "jsonl", "parquet")),
    Option("out", "--out", str, None, "output root: a folder, or an object-store URI such as s3://bucket/prefix",
           metavar="DIR|URI"),
    Option("endpoint", "--endpoint", str, None,
           "REST endpoint, e.g. https://rest.iad-01.braze.com (env BRAZE_REST_ENDPOINT)", metavar="URL"),
    Option("allow_custom_endpoint", "--allow-custom-endpoint", bool, False,
           "accept an https endpoint that is not a rest.<cluster>.braze.(com|eu) host"),
    Option("api_key_file", "--api-key-file", str, None,
           "read the API key from this file (e.g. mounted by a secret manager) instead of BRAZE_API_KEY",
           metavar="PATH"),
    _field("length", "--length", "days of series per pair, 1-100 (default {default}: the 14-day retention plus one "
           "day of time-zone margin; length costs no extra requests)", metavar="DAYS"),
    Option("ending_at", "--ending-at", str, None,
           "end of the series, ISO-8601 (default: now); a date alone (2026-11-27, 20261127) means its last "
           "second, 23:59:59 UTC", metavar="ISO"),
    Option("run_id", "--run-id", str, None,
           "run id (default: the date of --ending-at); the same id resumes the same run", metavar="ID"),
    Option("state_dir", "--state-dir", str, None,
           "local folder for run state when --out is an object store (default ~/.cache/bulkexport; "
           "env BULKEXPORT_STATE_DIR)", metavar="DIR"),
    _field("overwrite", "--overwrite", "delete this run's earlier output and redo it"),
    _field("table_format", "--table-format", "parquet: files appended per run (default); delta or iceberg: tables "
           "holding the latest value per key, merged by each run (pip install 'bulkexport[delta]' / "
           "'bulkexport[iceberg]')", group="tables", choices=TABLE_FORMATS),
    _field("catalog_uri", "--catalog-uri", "Iceberg catalog URI (REST, Glue, Hive, SQL; env BULKEXPORT_CATALOG_URI); "
           "default: an embedded SQLite catalog in OUT/_bulkexport/iceberg_catalog.db", group="tables", metavar="URI",
           type=str),
    _field("catalog_type", "--catalog-type", "Iceberg catalog type when the URI does not tell (rest, glue, hive, "
           "sql)", group="tables", metavar="TYPE", type=str),
    _field("rows_per_commit", "--rows-per-commit", "delta/iceberg: rows merged per atomic commit (default "
           "{default:,}); each chunk is held in memory while merged", group="tables", metavar="N"),
    Option("retry_failed", "--retry-failed", bool, False, "fetch again only the pairs this run recorded as failed"),
    Option("dry_run", "--dry-run", bool, False,
           "read and check the pairs, print the plan (requests, estimated duration), send nothing"),
    _field("rate_limit", "--rate-limit", "workspace limit per hour, until Braze's headers say otherwise "
           "(default {default:,})", group="rate", metavar="N"),
    _field("share", "--share", "fraction of the limit to pace at, at most (default {default})", group="rate",
           metavar="F"),
    _field("reserve", "--reserve", "fraction of each hour's budget never touched, left to production traffic "
           "(default {default})", group="rate", metavar="F"),
    _field("max_rate", "--max-rate", "hard cap in requests per second", group="rate", metavar="R", type=float),
    _field("burst", "--burst", "most requests started at once (default: a second of the pace; "
           f"{MIN_BURST} until Braze's first answer; at most a twentieth of a window's pace)", group="rate",
           metavar="N", type=int),
    _field("concurrency", "--concurrency", "most requests in flight (default {default})", group="rate", metavar="N"),
    _field("request_timeout", "--timeout", "per-request timeout in seconds (default {default:g})",
           group="requests", metavar="S"),
    _field("max_attempts", "--max-attempts", "attempts per pair for 5xx, timeouts and bad bodies (default "
           "{default}; 429s are not counted)", group="requests", metavar="N"),
    Option("max_body_mb", "--max-body-mb", int, _MAX_BODY_MB,
           f"largest response body read, in MiB, 1-1024 (default {_MAX_BODY_MB}); a "
           "larger one is retried like a 5xx, then the pair is recorded as failed", group="requests", metavar="MIB"),
    _field("max_outage", "--max-outage", "stop the run (exit 8, resumable) when Braze gives no usable answer to any "
           "request for this many seconds (default {default:g}); shorter outages are ridden out with probes",
           group="requests", metavar="S"),
    Option("wait", "--wait", bool, False,
           "if another process is exporting this run, wait for it to end, then resume or no-op "
           "(default: exit 7 at once)"),
    _field("checkpoint_interval", "--checkpoint-interval", "seconds between checkpoints (default {default:g}): a "
           "crash costs about this much work, plus one checkpoint write and the requests in flight",
           group="requests", metavar="S"),
    Option("log_level", "--log-level", str, "info", "log level (default info)", group="logging",
           choices=("debug", "info", "warning", "error")),
    Option("log_format", "--log-format", str, "text", "text for people, json for log shippers (default text)",
           group="logging", choices=("text", "json")),
)  # fmt: skip

#: Environment variables and the settings they provide.
ENV: Mapping[str, str] = {
    env.ENDPOINT: "endpoint",
    env.API_KEY_FILE: "api_key_file",
    env.LOG_LEVEL: "log_level",
    env.LOG_FORMAT: "log_format",
    env.CATALOG_URI: "catalog_uri",
}
_BY_DEST = {o.dest: o for o in OPTIONS}


def add_export_options(parser: argparse.ArgumentParser) -> None:
    """Declare every option with a SUPPRESS default, so only flags really given are seen."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file of settings (keys as below with underscores; env BULKEXPORT_CONFIG)")
    for o in OPTIONS:
        group = groups.get(o.group)
        if group is None:
            title = None if o.group == "export" else o.group
            group = groups[o.group] = parser.add_argument_group(title)
        if o.type is bool:
            group.add_argument(o.flag, dest=o.dest, action="store_true", default=argparse.SUPPRESS, help=o.help)
        else:
            group.add_argument(o.flag, dest=o.dest, type=o.type, default=argparse.SUPPRESS, help=o.help,
                               metavar=o.metavar, choices=o.choices)


def _check_text(label: str, value: str) -> str:
    """A text setting given explicitly must say something: an empty ``--run-id ""`` or
    ``endpoint = ""`` silently meant "the default" before, which hid the mistake."""
    if not value.strip():
        raise ConfigError(f"{label} is empty")
    if "\0" in value:
        raise ConfigError(f"{label} contains a NUL character")
    return value


def _coerce(o: Option, value: Any, source: str) -> Any:
    if o.type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise ConfigError(f"{source}: {o.dest} must be true or false, got {value!r}")
    if o.dest == "ending_at" and isinstance(value, date | datetime):
        # TOML has dates and datetimes of its own: `ending_at = 2026-11-27` is natural there.
        return value.isoformat()
    if o.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, o.type) or isinstance(value, bool):
        try:
            value = o.type(value) if isinstance(value, str) else None
        except ValueError:
            value = None
        if value is None:
            raise ConfigError(f"{source}: {o.dest} must be {o.type.__name__}") from None
    if isinstance(value, str):
        _check_text(f"{source}: {o.dest}", value)
    if o.choices and value not in o.choices:
        raise ConfigError(f"{source}: {o.dest} must be one of {', '.join(o.choices)}, got {value!r}")
    return value


def read_small_file(path: str, limit: int, what: str) -> bytes:
    """The bytes of a file that must be small (a key, a config file); reads at most ``limit``
    + 1 bytes, so a device or a huge file given by mistake is refused, not read to the end."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise ConfigError(f"cannot read {what} {path!r}: {exc}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is larger than {limit:,} bytes; is it the right file?")
    return data


def _toml(path: str) -> dict[str, Any]:
    data = read_small_file(path, MAX_CONFIG_BYTES, "config file")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = doc.get("export", doc)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [export] must be a table")
    if "api_key" in section:
        raise ConfigError(f"config file {path}: do not put the API key in a config file; use api_key_file")
    unknown = sorted(set(section) - set(_BY_DEST))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return {k: _coerce(_BY_DEST[k], v, f"config file {path}") for k, v in section.items()}


def resolve(given: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Merge flags (``given``), environment, config file and defaults; also read the key.

    Returns every option by ``dest`` plus ``api_key`` (a string, or None when no source has
    one: the library then reports the missing key with its usual message).
    """
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {o.dest: o.default for o in OPTIONS}
    flags = {k: v for k, v in given.items() if k in _BY_DEST}
    for dest, value in flags.items():
        if isinstance(value, str):
            _check_text(_BY_DEST[dest].flag, value)
    config_path = given.get("config")
    if config_path is not None and not str(config_path).strip():
        raise ConfigError("--config: the path is empty")
    config_path = config_path or environ.get(env.CONFIG)
    if config_path:
        settings.update(_toml(config_path))
    for var, dest in ENV.items():
        if environ.get(var):
            settings[dest] = _coerce(_BY_DEST[dest], environ[var], f"${var}")
    settings.update(flags)
    for required in ("pairs", "out"):
        if not settings.get(required):
            raise ConfigError(f"--{required} is required (or '{required}' in the config file)")
    key_file = given.get("api_key_file") or environ.get(env.API_KEY_FILE)
    if key_file:
        settings["api_key"] = _read_key(key_file)
    elif environ.get(env.API_KEY) is not None:
        settings["api_key"] = environ[env.API_KEY]
    elif settings.get("api_key_file"):
        settings["api_key"] = _read_key(settings["api_key_file"])
    else:
        settings["api_key"] = None
    return settings


def _read_key(path: str) -> str:
    data = read_small_file(path, MAX_KEY_FILE_BYTES, "the API key file")
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"the API key file {path} is not UTF-8 text; is it the right file?") from None
    if not key:
        raise ConfigError(f"the API key file {path} is empty")
    return key

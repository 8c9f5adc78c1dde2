"""Run state on disk: the pairs to export, what is durably done, and what failed.

One SQLite database per run (``<out>/_bulkexport/runs/<run_id>/state.sqlite``). SQLite gives
us, from the standard library, the three things a resumable run needs: a spool of pairs
that costs no memory (a million pairs is a file, not a set), duplicate removal by a unique
index, and atomic commits, so "these files hold these pairs" becomes true in one step or
not at all, whatever kills the process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .errors import ConfigError, StorageError
from .pairs import Pair
from .storage import private_file

__all__ = ["DONE", "FAILED", "PENDING", "Doomed", "Failure", "Ingested", "PartRecord", "RunState"]

PENDING, DONE, FAILED = 0, 1, 2
_SCHEMA_VERSION = 1
_UNPUBLISHED = (
    "SELECT seq, tbl, date, batch, rows, file FROM parts WHERE gen IS NULL AND (? IS NULL OR tbl = ?) "
    "ORDER BY tbl, date, seq"
)  # publishing order, served by the index parts_unpublished
#: An --overwrite forgets the old run (in the transaction that ingests the new one); not what
#: an earlier --overwrite, killed before its deletions, still has to delete.
_FORGET_RUN = (
    "DELETE FROM failures", "DELETE FROM published", "DELETE FROM parts", "DELETE FROM pairs",
    "DELETE FROM meta WHERE key != 'schema_version'",
)
_UPSERT_META = "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    send_id TEXT NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    seq INTEGER,
    UNIQUE (campaign_id, send_id)
);
CREATE TABLE IF NOT EXISTS failures (
    pair_id INTEGER PRIMARY KEY REFERENCES pairs(id),
    status INTEGER,
    message TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    seq INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    date TEXT NOT NULL,
    batch INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    file TEXT NOT NULL,
    gen INTEGER,
    PRIMARY KEY (seq, tbl, date)
);
-- Publishing reads the unpublished parts in (tbl, date, seq) order: from this index, not
-- through a sort whose memory grows with the run (a 300,000-pair publish held 3.5 MB in it).
CREATE INDEX IF NOT EXISTS parts_unpublished ON parts (gen, tbl, date, seq);
CREATE TABLE IF NOT EXISTS published (
    path TEXT PRIMARY KEY,
    tbl TEXT NOT NULL,
    date TEXT NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
-- What an --overwrite replaced and has yet to delete from the output (see RunState.ingest).
CREATE TABLE IF NOT EXISTS doomed (kind TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (kind, path));
"""


#: What an --overwrite left to delete: ("partition", folder) for the old run's published
#: files there, ("document", name) for its manifest and failures file.
Doomed = list[tuple[str, str]]


class Ingested(NamedTuple):
    """What one ingest of a pairs input did to the run."""

    read: int  # records read, duplicates included
    unique: int  # distinct pairs in this input
    added: int  # pairs new to the run (the rest were in it already)


@dataclass(frozen=True, slots=True)
class Failure:
    """A pair that failed for good, as recorded in the failures table and file."""

    campaign_id: str
    send_id: str
    status: int | None
    message: str
    attempts: int
    failed_at: str


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One staged record batch: rows of one table and one date inside a checkpoint file."""

    seq: int
    table: str
    date: str
    batch: int
    rows: int
    file: str


class RunState:
    """The run's database; every method is one short transaction.

    The connection may be used from a worker thread (the ingest of a large pairs file) but
    never from two threads at once: the pipeline serialises all access.
    """

    __slots__ = ("_db", "_fresh", "path")

    def __init__(self, path: Path) -> None:
        self.path = path  # the database file
        self._fresh = False  # the ingest in progress goes straight into an empty run
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            private_file(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_DDL)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open run state {path}: {exc}") from exc
        if self.get("schema_version") is None:
            self.put("schema_version", _SCHEMA_VERSION)

    def close(self) -> None:
        self._db.close()

    # -- small key/value facts: parameters, phase, counters -------------------------------
    def get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        self._write(_UPSERT_META, (key, orjson.dumps(value).decode()))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: committed as a whole, rolled back on any error, and SQLite's
        errors (disk full, read-only) reported as :class:`StorageError`."""
        try:
            self._db.execute("BEGIN")
            yield self._db
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StorageError(f"cannot write run state {self.path}: {exc}") from exc
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write run state {self.path}: {exc}") from exc

    # -- pairs -------------------------------------------------------------------------------
    def ingest(self, pairs: Iterable[Pair], chunk: int = 10_000, *, replace: Doomed | None = None) -> Ingested:
        """Add pairs to the run, in one transaction; duplicates and pairs already in the run
        are ignored, so ingesting the same input twice changes nothing, and a new input adds
        exactly its new pairs (the run's pairs are the union of its inputs).

        ``replace`` (``--overwrite``): the input becomes a new run in place of this one, in
        the same transaction, and ``replace`` (what the old run left in the output) is kept
        in :meth:`doomed` for the caller to delete. So an input that fails its checks (a bad
        line, a missing file) leaves the old run as it was, and a crash between the commit
        and the deletions leaves them recorded for the next invocation."""
        self.begin_ingest(replace=replace is not None)
        read = 0
        buf: list[Pair] = []
        try:
            for pair in pairs:
                buf.append(pair)
                if len(buf) >= chunk:
                    read += self.insert(buf)
            read += self.insert(buf)
        except BaseException:
            self.abort_ingest()
            raise
        unique, added = self.finish_ingest(replace)
        return Ingested(read, unique, added)

    def begin_ingest(self, *, replace: bool = False) -> None:
        """Start spooling; until :meth:`finish_ingest` nothing is visible to a resume.

        An empty run takes the pairs directly. A run that has pairs gets them through a
        temporary table first (on disk, like the run), which tells the input's own
        duplicates from the pairs the run already had; the extra pass costs time only on
        reruns, never memory.
        """
        try:
            self._fresh = self.count() == 0 and not replace
            self._db.execute("BEGIN")
            if not self._fresh:
                self._db.execute(
                    "CREATE TEMP TABLE incoming (campaign_id TEXT NOT NULL, send_id TEXT NOT NULL, "
                    "UNIQUE (campaign_id, send_id))"
                )
        except sqlite3.Error as exc:
            self.abort_ingest()
            raise StorageError(f"cannot write run state {self.path}: {exc}") from exc

    def insert(self, buf: list[Pair]) -> int:
        """Add a chunk of pairs to the spool (inside :meth:`begin_ingest`); clears ``buf``."""
        sql = (
            "INSERT OR IGNORE INTO pairs(campaign_id, send_id) VALUES (?, ?)"
            if self._fresh
            else "INSERT OR IGNORE INTO temp.incoming(campaign_id, send_id) VALUES (?, ?)"
        )
        try:
            self._db.executemany(sql, buf)
        except sqlite3.Error as exc:
            self.abort_ingest()
            raise StorageError(f"cannot write run state {self.path}: {exc}") from exc
        n = len(buf)
        buf.clear()
        return n

    def finish_ingest(self, replace: Doomed | None = None) -> tuple[int, int]:
        """Commit the spool; return ``(unique pairs in the input, pairs new to the run)``.
        With ``replace`` (from ``begin_ingest(replace=True)``), the spool replaces the run:
        see :meth:`ingest`."""
        try:
            if replace is not None:
                if not self._db.execute("SELECT 1 FROM temp.incoming LIMIT 1").fetchone():
                    self.abort_ingest()
                    raise ConfigError("--overwrite with a pairs input that holds no pairs would delete the "
                                      "run's data and export nothing (a truncated upstream file?); nothing "
                                      "was changed")  # fmt: skip
                for sql in _FORGET_RUN:
                    self._db.execute(sql)
                self._db.executemany("INSERT OR IGNORE INTO doomed(kind, path) VALUES (?, ?)", replace)
            if self._fresh:
                unique = added = self.count()
            else:
                unique = int(self._db.execute("SELECT count(*) FROM temp.incoming").fetchone()[0])
                added = self._db.execute(
                    "INSERT OR IGNORE INTO pairs(campaign_id, send_id) "
                    "SELECT campaign_id, send_id FROM temp.incoming ORDER BY rowid"
                ).rowcount
                self._db.execute("DROP TABLE temp.incoming")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.abort_ingest()
            raise StorageError(f"cannot write run state {self.path}: {exc}") from exc
        return unique, added

    def abort_ingest(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")  # the temporary table goes with it

    def count_absent_from(self, other: Path) -> int:
        """How many of these pairs the run state at ``other`` does not hold (a dry run's
        "new to the run"); one index lookup per pair, nothing loaded in memory."""
        try:
            self._db.execute("ATTACH DATABASE ? AS other", (str(other),))
            try:
                row = self._db.execute(
                    "SELECT count(*) FROM main.pairs p WHERE NOT EXISTS (SELECT 1 FROM other.pairs o "
                    "WHERE o.campaign_id = p.campaign_id AND o.send_id = p.send_id)"
                ).fetchone()
            finally:
                self._db.execute("DETACH DATABASE other")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read run state {other}: {exc}") from exc
        return int(row[0])

    def count(self, status: int | None = None) -> int:
        if status is None:
            row = self._db.execute("SELECT count(*) FROM pairs").fetchone()
        else:
            row = self._db.execute("SELECT count(*) FROM pairs WHERE status = ?", (status,)).fetchone()
        return int(row[0])

    def pending(self, page: int = 1000) -> Iterator[tuple[int, Pair]]:
        """Pairs not yet done or failed, in input order, a page at a time.

        Reads through a connection of its own: checkpoints commit from a worker thread on the
        main connection while this runs on the event loop (WAL lets both proceed).
        """
        reader = sqlite3.connect(self.path, check_same_thread=False)
        try:
            last = 0
            while True:
                rows = reader.execute(
                    "SELECT id, campaign_id, send_id FROM pairs WHERE status = 0 AND id > ? ORDER BY id LIMIT ?",
                    (last, page),
                ).fetchall()
                if not rows:
                    return
                for pid, cid, sid in rows:
                    yield pid, Pair(cid, sid)
                last = rows[-1][0]
        finally:
            reader.close()

    def a_done_pair(self) -> Pair | None:
        """One pair of the run Braze answered well (the fetch's canary), if any."""
        row = self._db.execute("SELECT campaign_id, send_id FROM pairs WHERE status = ? LIMIT 1", (DONE,)).fetchone()
        return None if row is None else Pair(*row)

    def reset_failed(self) -> int:
        """Make failed pairs pending again (``--retry-failed``); return how many."""
        with self._transaction() as db:
            n = db.execute("UPDATE pairs SET status = 0 WHERE status = 2").rowcount
            db.execute("DELETE FROM failures")
        return n

    # -- checkpoints ------------------------------------------------------------------------
    def commit_checkpoint(
        self,
        seq: int,
        parts: list[PartRecord],
        done: list[int],
        failed: list[tuple[int, int | None, str, int, str]],
    ) -> None:
        """Make one checkpoint durable: its staged parts, and the pairs they complete."""
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO parts(seq, tbl, date, batch, rows, file) VALUES (?, ?, ?, ?, ?, ?)",
                [(p.seq, p.table, p.date, p.batch, p.rows, p.file) for p in parts],
            )
            db.executemany("UPDATE pairs SET status = 1, seq = ? WHERE id = ?", [(seq, i) for i in done])
            db.executemany(
                "INSERT OR REPLACE INTO failures(pair_id, status, message, attempts, failed_at) VALUES (?, ?, ?, ?, ?)",
                failed,
            )
            db.executemany("UPDATE pairs SET status = 2 WHERE id = ?", [(f[0],) for f in failed])
            db.execute(_UPSERT_META, ("next_seq", str(seq + 1)))

    def unpublished_parts(self, page: int = 1_000, table: str | None = None) -> Iterator[PartRecord]:
        """Staged batches not yet compacted into the dataset (of one ``table``, or all), in
        publishing order, streamed (a million pairs stage a hundred thousand parts) through a
        connection of its own, so the publishing thread may read while the run records what
        it published."""
        reader = sqlite3.connect(self.path, check_same_thread=False)
        try:
            cursor = reader.execute(_UNPUBLISHED, (table, table))
            while rows := cursor.fetchmany(page):
                for r in rows:
                    yield PartRecord(*r)
        finally:
            reader.close()

    def staged_files(self) -> set[str]:
        """Checkpoint files that still hold unpublished rows."""
        return {r[0] for r in self._db.execute("SELECT DISTINCT file FROM parts WHERE gen IS NULL")}

    def mark_published(self, gen: int) -> None:
        """The publish of generation ``gen`` is complete: its staged parts are no longer needed."""
        with self._transaction() as db:
            db.execute("UPDATE parts SET gen = ? WHERE gen IS NULL", (gen,))
            db.execute(_UPSERT_META, ("published_gen", str(gen)))

    def failures(self) -> Iterator[Failure]:
        rows = self._db.execute(
            "SELECT p.campaign_id, p.send_id, f.status, f.message, f.attempts, f.failed_at "
            "FROM failures f JOIN pairs p ON p.id = f.pair_id ORDER BY p.id"
        )
        for r in rows:
            yield Failure(*r)

    # -- publishing -------------------------------------------------------------------------
    def record_published(self, files: Iterable[tuple[str, str, str, int, int]]) -> None:
        """(path, table, date, rows, bytes) of files a publish made visible, in one transaction
        (one fsync, not one a file)."""
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO published(path, tbl, date, rows, bytes) VALUES (?, ?, ?, ?, ?)",
                           files)  # fmt: skip

    def partitions(self) -> list[tuple[str, str]]:
        """(table, date) of every part this run staged, published or not: where its files are."""
        return list(self._db.execute("SELECT DISTINCT tbl, date FROM parts ORDER BY tbl, date"))

    def doomed(self) -> Doomed:
        """What an ``--overwrite`` replaced and has yet to delete (see :meth:`ingest`)."""
        return list(self._db.execute("SELECT kind, path FROM doomed ORDER BY kind, path"))

    def clear_doomed(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM doomed")

    def published(self) -> list[tuple[str, str, str, int, int]]:
        return list(self._db.execute("SELECT path, tbl, date, rows, bytes FROM published ORDER BY path"))

    def rows_committed(self) -> dict[str, int]:
        """Rows per table, staged or published, of this run."""
        rows = self._db.execute("SELECT tbl, sum(rows) FROM parts GROUP BY tbl")
        return {t: int(n) for t, n in rows}

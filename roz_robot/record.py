"""What a robot remembers across restarts: the last delivery it received on each host's link and
the outcome of every command and task it was given, in one SQLite file.

This record is what makes a resent delivery harmless: an item in it as finished is answered from
it (its terminal report sent again) and never run twice. An item is written here as received in
the same transaction as the delivery's sequence, so that a robot that stops between receiving an
item and finishing it knows, when it starts again, that the item was interrupted (the server
does not send it again: its sequence was received).

Calls are synchronous and short; the client makes them through `asyncio.to_thread`, so one lock
serialises them and the connection is shared between threads. Every commit is synced
(synchronous=FULL): a robot can lose power, and a "finished" that is not on disk is a command
run twice.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD_FILE = "robot-link.sqlite3"
SCHEMA_VERSION = 1
# Finished and answered items are forgotten after this long: the server resends only what was
# never acknowledged, and nothing stays unacknowledged for weeks.
KEEP_SECONDS = 30 * 24 * 3600

SCHEMA = """
CREATE TABLE IF NOT EXISTS links (
    host_id TEXT PRIMARY KEY,
    last_received_sequence INTEGER NOT NULL CHECK (last_received_sequence >= 0)
);
CREATE TABLE IF NOT EXISTS bound_hosts (
    key_digest TEXT PRIMARY KEY,
    host_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    kind TEXT NOT NULL CHECK (kind IN ('command', 'task')),
    item_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '{}',
    report_id TEXT NOT NULL DEFAULT '',
    answered INTEGER NOT NULL DEFAULT 0 CHECK (answered IN (0, 1)),
    receive_time REAL NOT NULL,
    finish_time REAL,
    PRIMARY KEY (kind, item_id)
);
"""


class ItemKind(enum.StrEnum):
    COMMAND = "command"
    TASK = "task"


# The state of an item received and not yet finished. Every other state is a terminal one,
# spelled as the proto's enum value without its prefix ("COMPLETED", "SUCCEEDED", "CANCELLED").
RECEIVED = "RECEIVED"
CANCELLED = "CANCELLED"
# The terminal states a robot reports itself; the server's are every other one.
ROBOT_OUTCOMES = frozenset({"COMPLETED", "SUCCEEDED", "FAILED"})


@dataclass(frozen=True)
class ItemRecord:
    """One command or task as the robot remembers it."""

    kind: ItemKind
    item_id: str
    state: str
    reason: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)
    report_id: str = ""
    answered: bool = False

    @property
    def finished(self) -> bool:
        return self.state != RECEIVED

    @property
    def ended_by_robot(self) -> bool:
        """Finished with an outcome this robot reported (COMPLETED, SUCCEEDED, FAILED), not
        ended by the server (CANCELLED, TIMED_OUT, …): only the former is reported again."""
        return self.state in ROBOT_OUTCOMES


class Record:
    """The SQLite record; open with `Record.open(directory)`, close when done."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, directory: Path) -> Record:
        """Opens (creating if needed) the record in `directory`, a private directory."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / RECORD_FILE
        # isolation_level=None: no implicit transactions, each method says BEGIN itself.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA busy_timeout = 5000")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path} was written by a newer roz-robot (schema {version}); "
                    "use a newer roz-robot or another state directory"
                )
            connection.executescript(SCHEMA)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            connection.close()
            raise
        return cls(connection, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            # IMMEDIATE: take the write lock now, so that two robot processes sharing a state
            # directory by mistake wait for each other rather than fail half-way.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- the link ----------------------------------------------------------------------------

    def last_sequence(self, host_id: str) -> int:
        """The highest sequence received on `host_id`'s link; 0 for a host never linked."""
        with self._lock:
            row = self._db.execute(
                "SELECT last_received_sequence FROM links WHERE host_id = ?", (host_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    def rewind(self, host_id: str, sequence: int) -> None:
        """The server resumes after `sequence`, below what we hold: its word counts from now."""
        with self._transaction() as db:
            _set_sequence(db, host_id, sequence)

    def bound_host(self, key_digest: str) -> str:
        """The host the server last named for a key (by digest); "" when never linked."""
        with self._lock:
            row = self._db.execute(
                "SELECT host_id FROM bound_hosts WHERE key_digest = ?", (key_digest,)
            ).fetchone()
        return str(row[0]) if row else ""

    def bind_host(self, key_digest: str, host_id: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO bound_hosts (key_digest, host_id) VALUES (?, ?) "
                "ON CONFLICT (key_digest) DO UPDATE SET host_id = excluded.host_id",
                (key_digest, host_id),
            )

    # -- deliveries --------------------------------------------------------------------------

    def receive(
        self, host_id: str, sequence: int, kind: ItemKind, item_id: str
    ) -> ItemRecord | None:
        """Records a delivered item as received, with its sequence, in one transaction.

        Returns what was known of the item before (None: never seen, now RECEIVED).
        """
        with self._transaction() as db:
            _advance_sequence(db, host_id, sequence)
            known = _item(db, kind, item_id)
            if known is None:
                db.execute(
                    "INSERT INTO items (kind, item_id, host_id, state, receive_time) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (kind.value, item_id, host_id, RECEIVED, time.time()),
                )
        return known

    def cancel(
        self, host_id: str, sequence: int, kind: ItemKind, item_id: str, reason: str
    ) -> ItemRecord | None:
        """Records a cancellation delivery with its sequence: the item becomes CANCELLED unless
        it had already finished (a finished item keeps its outcome). Returns what was known."""
        with self._transaction() as db:
            _advance_sequence(db, host_id, sequence)
            return _end_by_server(db, host_id, kind, item_id, CANCELLED, reason)

    def end_by_server(
        self, host_id: str, kind: ItemKind, item_id: str, state: str, reason: str
    ) -> ItemRecord | None:
        """The server says the item ended (`state`) while this robot held it: same rules as a
        cancellation, for an ending learned from the answer to a report."""
        with self._transaction() as db:
            return _end_by_server(db, host_id, kind, item_id, state, reason)

    def acknowledge(self, host_id: str, sequence: int) -> None:
        """Records a delivery that carries nothing to remember (one this robot cannot read)."""
        with self._transaction() as db:
            _advance_sequence(db, host_id, sequence)

    # -- outcomes ----------------------------------------------------------------------------

    def finish(
        self,
        kind: ItemKind,
        item_id: str,
        state: str,
        *,
        reason: str = "",
        result: Mapping[str, Any] | None = None,
        report_id: str = "",
    ) -> bool:
        """Records a received item's terminal outcome, before its report is sent.

        False when the item was not RECEIVED any more (a cancellation came first): then its
        outcome is the one already recorded and no report goes out.
        """
        if state == RECEIVED:
            raise ValueError("finish() records a terminal state")
        document = json.dumps(dict(result or {}), sort_keys=True)
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE items SET state = ?, reason = ?, result = ?, report_id = ?, "
                "answered = 0, finish_time = ? WHERE kind = ? AND item_id = ? AND state = ?",
                (state, reason, document, report_id, time.time(), kind.value, item_id, RECEIVED),
            ).rowcount
        return changed == 1

    def mark_answered(self, kind: ItemKind, item_id: str) -> None:
        """The server has answered the item's terminal report: nothing left to tell it."""
        with self._transaction() as db:
            db.execute(
                "UPDATE items SET answered = 1 WHERE kind = ? AND item_id = ?",
                (kind.value, item_id),
            )

    def item(self, kind: ItemKind, item_id: str) -> ItemRecord | None:
        with self._lock:
            return _item(self._db, kind, item_id)

    def fail_interrupted(self, reason: str) -> list[ItemRecord]:
        """Every item still RECEIVED becomes FAILED with `reason`; returns them, oldest first.

        For a start after a crash (nothing runs yet) and the end of a run (nothing runs any
        more): an item this robot began and cannot finish is reported failed, not left to the
        server's timeout.
        """
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE state = ? ORDER BY receive_time, rowid",
                (RECEIVED,),
            ).fetchall()
            db.execute(
                "UPDATE items SET state = 'FAILED', reason = ?, result = '{}', answered = 0, "
                "finish_time = ? WHERE state = ?",
                (reason, time.time(), RECEIVED),
            )
        return [
            ItemRecord(ItemKind(row[0]), row[1], "FAILED", reason=reason, report_id=row[5])
            for row in rows
        ]

    def unanswered(self) -> list[ItemRecord]:
        """Terminal outcomes reported (or about to be) that the server has not answered."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE state != ? AND answered = 0 "
                "ORDER BY finish_time, rowid",
                (RECEIVED,),
            ).fetchall()
        return [_row_to_item(row) for row in rows]

    def forget_before(self, cutoff: float) -> int:
        """Drops answered outcomes finished before `cutoff` (a time.time()); returns how many."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM items WHERE answered = 1 AND state != ? AND finish_time < ?",
                (RECEIVED, cutoff),
            ).rowcount


_COLUMNS = "kind, item_id, state, reason, result, report_id, answered"


def _item(db: sqlite3.Connection, kind: ItemKind, item_id: str) -> ItemRecord | None:
    row = db.execute(
        f"SELECT {_COLUMNS} FROM items WHERE kind = ? AND item_id = ?", (kind.value, item_id)
    ).fetchone()
    return _row_to_item(row) if row else None


def _row_to_item(row: tuple[Any, ...]) -> ItemRecord:
    kind, item_id, state, reason, result, report_id, answered = row
    return ItemRecord(
        kind=ItemKind(kind),
        item_id=item_id,
        state=state,
        reason=reason,
        result=json.loads(result),
        report_id=report_id,
        answered=bool(answered),
    )


def _end_by_server(
    db: sqlite3.Connection, host_id: str, kind: ItemKind, item_id: str, state: str, reason: str
) -> ItemRecord | None:
    known = _item(db, kind, item_id)
    now = time.time()
    # Nothing is left to report about an item the server ended: it is answered from the start.
    if known is None:
        # Not seen yet (or forgotten): remembered as ended so that it never runs here.
        db.execute(
            "INSERT INTO items (kind, item_id, host_id, state, reason, answered, receive_time, "
            "finish_time) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
            (kind.value, item_id, host_id, state, reason, now, now),
        )
    elif not known.finished:
        db.execute(
            "UPDATE items SET state = ?, reason = ?, answered = 1, finish_time = ? "
            "WHERE kind = ? AND item_id = ?",
            (state, reason, now, kind.value, item_id),
        )
    return known


def _advance_sequence(db: sqlite3.Connection, host_id: str, sequence: int) -> None:
    db.execute(
        "INSERT INTO links (host_id, last_received_sequence) VALUES (?, ?) "
        "ON CONFLICT (host_id) DO UPDATE SET last_received_sequence = "
        "max(last_received_sequence, excluded.last_received_sequence)",
        (host_id, sequence),
    )


def _set_sequence(db: sqlite3.Connection, host_id: str, sequence: int) -> None:
    db.execute(
        "INSERT INTO links (host_id, last_received_sequence) VALUES (?, ?) "
        "ON CONFLICT (host_id) DO UPDATE SET "
        "last_received_sequence = excluded.last_received_sequence",
        (host_id, sequence),
    )

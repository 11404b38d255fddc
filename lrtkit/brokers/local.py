"""The embedded default broker: a queue in one SQLite file, shared by processes on one machine.

One database file (``LRT_LOCAL_DB``) can hold several queues (``LRT_QUEUE``). Two tables:

* ``lrt_messages``: one row per job waiting or in flight. ``visible_at`` is a wall-clock time
  (``time.time()``; every process on the machine shares it); a row is *waiting* when it has no
  lease token or its lease ran out, and *in flight* while its lease token is set and
  ``visible_at`` lies in the future. ``deliveries`` counts receives.
* ``lrt_dead``: dead letters with their original body, the reason and the delivery count.

A receive runs in a ``BEGIN IMMEDIATE`` transaction, so exactly one process or thread takes a
given message: it writes a fresh random lease token and ``visible_at = now + lease``. Every
later ``extend``/``ack``/``release``/``dead_letter`` names that token and raises
:class:`~lrtkit.errors.LeaseLost` when the row no longer carries it (the lease ran out and the
message went to someone else). A message whose next delivery would go past
``LRT_MAX_DELIVERIES`` is dead-lettered with reason ``delivery_limit`` instead of delivered,
as RabbitMQ's ``x-delivery-limit`` does: it guards against a job that kills its worker.

The database runs in WAL mode with a busy timeout; each thread has its own connection.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lrtkit.broker import Broker, Check, DeadLetter, Delivery, Depth, Message, SetupReport
from lrtkit.errors import BrokerConfigError, BrokerError, LeaseLost, PayloadTooLarge
from lrtkit.jobs import job_id_of

if TYPE_CHECKING:
    from lrtkit.config import Settings

DELIVERY_LIMIT = "delivery_limit"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lrt_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        job_id TEXT NOT NULL,
        body BLOB NOT NULL,
        visible_at REAL NOT NULL,
        deliveries INTEGER NOT NULL DEFAULT 0,
        lease TEXT,
        enqueued_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS lrt_messages_ready ON lrt_messages (queue, visible_at)",
    """CREATE TABLE IF NOT EXISTS lrt_dead (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        job_id TEXT NOT NULL,
        body BLOB NOT NULL,
        reason TEXT NOT NULL,
        deliveries INTEGER NOT NULL,
        dead_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS lrt_dead_queue ON lrt_dead (queue, id)",
)
_TABLES = ("lrt_messages", "lrt_dead")
_INSERT = (
    "INSERT INTO lrt_messages (queue, job_id, body, visible_at, deliveries, enqueued_at)"
    " VALUES (?, ?, ?, ?, 0, ?)"
)


@dataclass(frozen=True)
class _Lease:
    """The local broker's lease handle: which row, and the token it must still carry."""

    row_id: int
    token: str


class LocalBroker(Broker):
    """A durable queue in a SQLite file; several worker processes on one machine share it."""

    name: ClassVar[str] = "local"
    timed_lease: ClassVar[bool] = True

    #: Largest body accepted; bigger ones raise PayloadTooLarge before anything is written.
    max_body_bytes: ClassVar[int] = 16 * 1024 * 1024
    #: Longest sleep between two polls of an empty queue while ``receive`` waits.
    poll_interval: ClassVar[float] = 0.2
    #: How long a statement waits for another process's write lock before giving up.
    busy_timeout: ClassVar[float] = 30.0

    def __init__(
        self,
        path: str | Path,
        queue: str = "lrtkit-jobs",
        *,
        lease_seconds: float = 60.0,
        max_deliveries: int = 10,
    ) -> None:
        if lease_seconds <= 0:
            raise BrokerConfigError(f"LRT_LEASE_SECONDS must be positive, got {lease_seconds}")
        if max_deliveries < 1:
            raise BrokerConfigError(f"LRT_MAX_DELIVERIES must be at least 1, got {max_deliveries}")
        self.path = Path(path).expanduser().absolute()
        self.queue = queue
        self.lease_seconds = float(lease_seconds)
        self.max_deliveries = int(max_deliveries)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._pid = os.getpid()
        self._schema_ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBroker:
        return cls(
            settings.local_db,
            settings.queue,
            lease_seconds=settings.lease_seconds,
            max_deliveries=settings.max_deliveries,
        )

    def __repr__(self) -> str:
        return f"LocalBroker(path={str(self.path)!r}, queue={self.queue!r})"

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, and anew after a fork)."""
        if os.getpid() != self._pid:
            # A forked child must never use its parent's connections: forget them unclosed.
            with self._lock:
                self._connections = []
                self._pid = os.getpid()
                self._local = threading.local()
                self._schema_ready = False
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                # The worker starts threads per job: close the connections of threads that
                # have ended, or a long-running worker runs out of file descriptors.
                alive = []
                for thread, old in self._connections:
                    if thread.is_alive():
                        alive.append((thread, old))
                    else:
                        with contextlib.suppress(sqlite3.Error):
                            old.close()
                alive.append((threading.current_thread(), conn))
                self._connections = alive
        if not self._schema_ready:
            self._create_schema(conn)
            self._schema_ready = True
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BrokerConfigError(
                f"cannot create the folder of the local queue database {self.path}: "
                f"{exc.strerror or exc}; set LRT_LOCAL_DB to a path in a writable folder"
            ) from None
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise BrokerConfigError(
                f"the folder of the local queue database {self.path} is not writable; "
                "set LRT_LOCAL_DB to a path in a writable folder"
            )
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,  # only close() crosses threads
            )
        except sqlite3.Error as exc:
            raise self._error("open", exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise BrokerConfigError(
                    f"the local queue database {self.path} cannot use WAL mode (got {mode!r}); "
                    "put LRT_LOCAL_DB on a local disk, not a network share"
                )
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("open", exc) from None
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn, "create the tables in"):
            for statement in _SCHEMA:
                conn.execute(statement)

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection, action: str) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error, sqlite errors wrapped."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(action, exc) from None
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise self._error(action, exc) from None

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            with self._transaction(conn, action):
                yield conn
        except sqlite3.Error as exc:
            raise self._error(action, exc) from None

    def _read(self, action: str, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        conn = self._conn()
        try:
            return list(conn.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise self._error(action, exc) from None

    def _error(self, action: str, exc: sqlite3.Error) -> BrokerError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return BrokerError(
                f"could not {action} the local queue database {self.path}: {text} "
                f"(another process held it for over {self.busy_timeout:.0f}s)"
            )
        if isinstance(exc, sqlite3.OperationalError) and (
            "unable to open" in text or "readonly" in text or "read-only" in text
        ):
            return BrokerConfigError(
                f"could not {action} the local queue database {self.path}: {text}; "
                "check that LRT_LOCAL_DB names a file in a writable folder"
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return BrokerConfigError(
                f"LRT_LOCAL_DB={self.path} is not an lrtkit queue database: {text}"
            )
        return BrokerError(f"could not {action} the local queue database {self.path}: {text}")

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
            mine = os.getpid() == self._pid
        if mine:
            for _thread, conn in connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    # -- lifecycle -----------------------------------------------------------------------------

    def ensure(self) -> SetupReport:
        """Create the tables (the local broker also does so on first use); say what existed."""
        existed = set(_TABLES) if self._schema_ready else self._existing_tables()
        self._conn()
        report = SetupReport()
        for table in _TABLES:
            entry = f"table {table} in {self.path}"
            (report.existing if table in existed else report.created).append(entry)
        return report

    def diagnose(self) -> list[Check]:
        """The database file opens in WAL mode and the queue answers ``depth()``."""
        fix = "set LRT_LOCAL_DB to a file in a writable folder on a local disk"
        try:
            self._conn()
        except BrokerError as exc:
            return [Check("local queue database", "fail", str(exc), fix)]
        checks = [
            Check(
                "local queue database",
                "ok",
                f"{self.path} (SQLite {sqlite3.sqlite_version}): serves workers on this machine "
                "only",
            )
        ]
        try:
            d = self.depth()
        except BrokerError as exc:
            return [*checks, Check(f"local queue {self.queue!r}", "fail", str(exc), fix)]
        detail = f"waiting {d.waiting}, in flight {d.in_flight}, dead {d.dead}"
        return [*checks, Check(f"local queue {self.queue!r}", "ok", detail)]

    def _existing_tables(self) -> set[str]:
        if not self.path.exists():
            return set()
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=self.busy_timeout)) as c:
                rows = c.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        except sqlite3.Error as exc:
            raise self._error("read", exc) from None
        return {str(r[0]) for r in rows}

    # -- producing -----------------------------------------------------------------------------

    def publish(self, messages: Sequence[Message]) -> None:
        for message in messages:
            if len(message.body) > self.max_body_bytes:
                raise PayloadTooLarge(
                    f"job {message.job_id!r}: body is {len(message.body)} bytes, the local "
                    f"broker accepts at most {self.max_body_bytes}"
                )
        if not messages:
            return
        now = time.time()
        rows = [(self.queue, m.job_id, bytes(m.body), now, now) for m in messages]
        with self._write("publish to") as conn:
            conn.executemany(
                _INSERT,
                rows,
            )

    # -- consuming -----------------------------------------------------------------------------

    def receive(self, wait: float) -> Delivery | None:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            started = time.monotonic()
            delivery, next_visible = self._take()
            if delivery is not None:
                delivery.lease_deadline = started + self.lease_seconds
                return delivery
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            pause = min(self.poll_interval, remaining)
            if next_visible is not None:
                pause = min(pause, max(0.01, next_visible - time.time()))
            time.sleep(pause)

    def _take(self) -> tuple[Delivery | None, float | None]:
        """Lease the oldest visible message, or return when the next one becomes visible."""
        with self._write("receive from") as conn:
            while True:
                now = time.time()
                row = conn.execute(
                    "SELECT id, job_id, body, deliveries FROM lrt_messages"
                    " WHERE queue = ? AND visible_at <= ? ORDER BY id LIMIT 1",
                    (self.queue, now),
                ).fetchone()
                if row is None:
                    nxt = conn.execute(
                        "SELECT MIN(visible_at) FROM lrt_messages WHERE queue = ?",
                        (self.queue,),
                    ).fetchone()[0]
                    return None, (float(nxt) if nxt is not None else None)
                row_id, job_id, body, deliveries = row
                if deliveries + 1 > self.max_deliveries:
                    self._move_to_dead(
                        conn,
                        row_id,
                        job_id=job_id,
                        body=body,
                        reason=DELIVERY_LIMIT,
                        deliveries=deliveries,
                    )
                    continue
                token = secrets.token_hex(16)
                conn.execute(
                    "UPDATE lrt_messages SET lease = ?, visible_at = ?, deliveries = ?"
                    " WHERE id = ?",
                    (token, now + self.lease_seconds, deliveries + 1, row_id),
                )
                delivery = Delivery(
                    body=bytes(body),
                    delivery_count=deliveries + 1,
                    handle=_Lease(row_id, token),
                    headers={"job_id": job_id},
                )
                return delivery, None

    def _move_to_dead(
        self,
        conn: sqlite3.Connection,
        row_id: int,
        *,
        job_id: str,
        body: bytes,
        reason: str,
        deliveries: int,
    ) -> None:
        conn.execute(
            "INSERT INTO lrt_dead (queue, job_id, body, reason, deliveries, dead_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (self.queue, job_id, body, reason, deliveries, time.time()),
        )
        conn.execute("DELETE FROM lrt_messages WHERE id = ?", (row_id,))

    @staticmethod
    def _lease(delivery: Delivery) -> _Lease:
        handle = delivery.handle
        if not isinstance(handle, _Lease):
            raise BrokerError(f"not a delivery of the local broker: handle {handle!r}")
        return handle

    def _lost(self, delivery: Delivery) -> LeaseLost:
        delivery.lost = True
        return LeaseLost(
            f"the lease on this message of queue {self.queue!r} ran out and the message was "
            "given to another holder (or is gone)"
        )

    def _extend(self, delivery: Delivery, seconds: float) -> None:
        lease = self._lease(delivery)
        with self._write("extend a lease in") as conn:
            cur = conn.execute(
                "UPDATE lrt_messages SET visible_at = ? WHERE id = ? AND lease = ?",
                (time.time() + seconds, lease.row_id, lease.token),
            )
            if cur.rowcount != 1:
                raise self._lost(delivery)

    def _ack(self, delivery: Delivery) -> None:
        lease = self._lease(delivery)
        with self._write("acknowledge in") as conn:
            cur = conn.execute(
                "DELETE FROM lrt_messages WHERE id = ? AND lease = ?",
                (lease.row_id, lease.token),
            )
            if cur.rowcount != 1:
                raise self._lost(delivery)

    def _release(self, delivery: Delivery, delay: float) -> None:
        lease = self._lease(delivery)
        with self._write("release in") as conn:
            cur = conn.execute(
                "UPDATE lrt_messages SET lease = NULL, visible_at = ? WHERE id = ? AND lease = ?",
                (time.time() + max(0.0, delay), lease.row_id, lease.token),
            )
            if cur.rowcount != 1:
                raise self._lost(delivery)

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        lease = self._lease(delivery)
        with self._write("dead-letter in") as conn:
            row = conn.execute(
                "SELECT job_id, body, deliveries FROM lrt_messages WHERE id = ? AND lease = ?",
                (lease.row_id, lease.token),
            ).fetchone()
            if row is None:
                raise self._lost(delivery)
            self._move_to_dead(
                conn, lease.row_id, job_id=row[0], body=row[1], reason=reason, deliveries=row[2]
            )

    # -- inspection ----------------------------------------------------------------------------

    def depth(self) -> Depth:
        now = time.time()
        rows = self._read(
            "read the depth of",
            "SELECT"
            " (SELECT COUNT(*) FROM lrt_messages WHERE queue = ?1"
            "   AND (lease IS NULL OR visible_at <= ?2)),"
            " (SELECT COUNT(*) FROM lrt_messages WHERE queue = ?1"
            "   AND lease IS NOT NULL AND visible_at > ?2),"
            " (SELECT COUNT(*) FROM lrt_dead WHERE queue = ?1)",
            (self.queue, now),
        )
        waiting, in_flight, dead = rows[0]
        return Depth(int(waiting), int(in_flight), int(dead))

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        rows = self._read(
            "list the dead letters of",
            "SELECT job_id, reason, deliveries, body FROM lrt_dead WHERE queue = ?"
            " ORDER BY id LIMIT ?",
            (self.queue, -1 if limit is None else max(0, limit)),
        )
        # The listed job id is the body's own (None for a body without a valid one), as on
        # every broker; the id it was published under only serves redrive-by-id.
        return [
            DeadLetter(
                job_id=job_id_of(bytes(r[3])), reason=r[1], deliveries=int(r[2]), body=bytes(r[3])
            )
            for r in rows
        ]

    def redrive(self, job_ids: Sequence[str] | None = None) -> int:
        """Move dead letters back to the back of the queue with a fresh delivery count."""
        now = time.time()
        with self._write("redrive in") as conn:
            if job_ids is None:
                rows = conn.execute(
                    "SELECT id, job_id, body FROM lrt_dead WHERE queue = ? ORDER BY id",
                    (self.queue,),
                ).fetchall()
            else:
                wanted = list(dict.fromkeys(job_ids))
                rows = []
                for chunk in (wanted[i : i + 500] for i in range(0, len(wanted), 500)):
                    marks = ",".join("?" * len(chunk))
                    rows += conn.execute(
                        f"SELECT id, job_id, body FROM lrt_dead WHERE queue = ?"  # noqa: S608
                        f" AND job_id IN ({marks}) ORDER BY id",
                        (self.queue, *chunk),
                    ).fetchall()
            conn.executemany(
                _INSERT,
                [(self.queue, r[1], r[2], now, now) for r in rows],
            )
            conn.executemany("DELETE FROM lrt_dead WHERE id = ?", [(r[0],) for r in rows])
        return len(rows)

"""Transactions and locking shared by every repository in the store.

Two kinds of concurrency meet here:

* several *processes* (the CLI and the controller daemon) share one database
  file. SQLite serialises them; we start every write transaction with
  ``BEGIN IMMEDIATE`` so the write lock is taken up front and waited for with
  the busy timeout. A deferred transaction that later tries to write can fail
  at once with ``SQLITE_BUSY`` in WAL mode, which would surface as random
  errors under load.
* several *threads* of one process share one connection
  (``check_same_thread=False``). SQLite's own mutex makes single calls safe,
  but a transaction is per connection, so without a lock one thread's
  ``COMMIT`` would commit another thread's half-done work. Every repository
  method therefore holds a per-database re-entrant lock.

Nesting is allowed: an inner ``transaction()`` becomes a savepoint, so a caller
can group ``claws.set_state(...)`` and ``audit.append(...)`` into one atomic
unit.
"""

from __future__ import annotations

import secrets
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlite_utils import Database


@dataclass
class _TxState:
    lock: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    # Run just before the outermost COMMIT, while the write lock is still held
    # (the audit log uses this to publish its head file in chain order).
    before_commit: list[Callable[[], None]] = field(default_factory=list)


# Keyed by the Database object (sqlite3.Connection cannot be weakly referenced);
# entries disappear with the Database, so tests opening many DBs do not leak.
_STATES: weakref.WeakKeyDictionary[Database, _TxState] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(db: Database) -> _TxState:
    with _STATES_LOCK:
        state = _STATES.get(db)
        if state is None:
            state = _STATES[db] = _TxState()
        return state


@contextmanager
def locked(db: Database) -> Iterator[Database]:
    """Hold the connection for a read, so no other thread's open transaction
    interleaves with it (reads would otherwise see uncommitted rows)."""
    with _state(db).lock:
        yield db


@contextmanager
def read_snapshot(db: Database) -> Iterator[Database]:
    """A consistent view across several SELECTs (one read transaction)."""
    state = _state(db)
    with state.lock:
        if db.conn.in_transaction:
            yield db
            return
        db.conn.execute("BEGIN")
        try:
            yield db
        finally:
            db.conn.execute("ROLLBACK")


@contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """A write transaction: ``BEGIN IMMEDIATE`` at the outermost level, a
    savepoint when nested. Commits on success, rolls back on any exception."""
    state = _state(db)
    with state.lock:
        if state.depth > 0 or db.conn.in_transaction:
            yield from _savepoint(db, state)
            return
        db.conn.execute("BEGIN IMMEDIATE")
        state.depth = 1
        try:
            yield db
            for hook in state.before_commit:
                hook()
            db.conn.execute("COMMIT")
        except BaseException:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            raise
        finally:
            state.depth = 0
            state.before_commit.clear()


def _savepoint(db: Database, state: _TxState) -> Iterator[Database]:
    name = f"clawden_{secrets.token_hex(8)}"
    db.conn.execute(f"SAVEPOINT {name}")
    state.depth += 1
    try:
        yield db
    except BaseException:
        # A RAISE(ABORT) from a trigger leaves the transaction open, but other
        # errors can end it; only unwind what still exists.
        if db.conn.in_transaction:
            db.conn.execute(f"ROLLBACK TO {name}")
            db.conn.execute(f"RELEASE {name}")
        raise
    else:
        db.conn.execute(f"RELEASE {name}")
    finally:
        state.depth -= 1


def before_commit(db: Database, hook: Callable[[], None]) -> None:
    """Run ``hook`` once, just before the enclosing outermost transaction
    commits (still under the write lock). Registering the same hook twice in
    one transaction runs it once."""
    state = _state(db)
    if state.depth == 0:
        raise RuntimeError("before_commit() needs an open transaction()")
    if hook not in state.before_commit:
        state.before_commit.append(hook)


def to_iso(moment: datetime) -> str:
    """The store's timestamp form, ISO 8601 UTC with microseconds: it sorts
    lexically, so SQL can compare it, and parses with ``from_iso``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def utc_now() -> str:
    return to_iso(datetime.now(UTC))

"""The one edge where SQLAlchemy and driver errors become StoreError; and the outbox's LeaseLost."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from ._engine import Place

# The store talks to the drivers directly for message bodies (blob I/O, COPY): their own
# errors are translated here too.
_DATABASE_ERRORS = (SQLAlchemyError, sqlite3.Error, psycopg.Error)


class LeaseLost(StoreError):
    """A worker tried to finish an attempt on a message it no longer holds.

    Its lease expired and another worker claimed the message (or an administrator deleted
    it): that worker's attempt, not this one's, decides the message's state.  The worker
    drops the message; if it had in fact sent it, the recipient may get it twice, which is
    the price of never losing one (at-least-once delivery).
    """

    default_entry = "R365-LEASE-LOST"


def _reason(exc: BaseException) -> str:
    # The driver's own words (SQLAlchemy's wrapper adds the SQL and a link): one line of them.
    orig = getattr(exc, "orig", None)
    return " ".join(str(orig if orig is not None else exc).split())


@contextmanager
def connecting(where: Place) -> Iterator[None]:
    """Failures to reach the database: 'cannot open the SQLite database at PATH: why'."""
    try:
        yield
    except _DATABASE_ERRORS as exc:
        raise StoreError(f"{where.cannot_connect}: {_reason(exc)}") from exc


@contextmanager
def running(where: Place, doing: str) -> Iterator[None]:
    """Failures of a statement: 'the SQLite database at PATH failed while DOING: why'."""
    try:
        yield
    except _DATABASE_ERRORS as exc:
        raise StoreError(f"{where.name} failed while {doing}: {_reason(exc)}") from exc

"""The one edge where SQLAlchemy and driver errors become StoreError."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from ._engine import Place


def _reason(exc: BaseException) -> str:
    # The driver's own words (SQLAlchemy's wrapper adds the SQL and a link): one line of them.
    orig = getattr(exc, "orig", None)
    return " ".join(str(orig if orig is not None else exc).split())


@contextmanager
def connecting(where: Place) -> Iterator[None]:
    """Failures to reach the database: 'cannot open the SQLite database at PATH: why'."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(f"{where.cannot_connect}: {_reason(exc)}") from exc


@contextmanager
def running(where: Place, doing: str) -> Iterator[None]:
    """Failures of a statement: 'the SQLite database at PATH failed while DOING: why'."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(f"{where.name} failed while {doing}: {_reason(exc)}") from exc

"""What the state kept as numbered revisions shares (thresholds, model versions): one table of rows keyed
by (model, revision), created by whichever worker or replica comes first, read newest first in pages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from sqlalchemy import Column, Select, Table, func, inspect, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateTable

# The author of the revisions the service writes itself: a model's defaults, the version served at
# start-up, a new version going live by itself.
STORE_AUTHOR = "model store"


def utc(moment: datetime) -> datetime:
    """A time read back from the database, in UTC: SQLite keeps no zone, and every time written is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def create_tables(engine: Engine, tables: Sequence[Table]) -> None:
    """Create the tables that are missing, and add to a table made by an earlier release the columns it
    lacks (each has a server default, so the rows already there get it)."""
    for table in tables:
        try:
            with engine.begin() as conn:
                conn.execute(CreateTable(table, if_not_exists=True))
        except DBAPIError:
            # Workers and replicas start together; PostgreSQL can refuse a racing CREATE even with IF NOT EXISTS.
            if not inspect(engine).has_table(table.name):
                raise
        present = {column["name"] for column in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                _add_column(engine, table, column)


def _add_column(engine: Engine, table: Table, column: Column) -> None:
    kind = column.type.compile(engine.dialect)
    default = "" if column.server_default is None else f" DEFAULT {_default_sql(engine, column)}"
    null = "" if column.nullable else " NOT NULL"
    try:
        with engine.begin() as conn:
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{default}{null}'))
    except DBAPIError:
        # Another worker added it first.
        if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
            raise


def _default_sql(engine: Engine, column: Column) -> str:
    arg = column.server_default.arg  # type: ignore[union-attr]
    if isinstance(arg, str):
        return "'" + arg.replace("'", "''") + "'"
    return str(arg.compile(dialect=engine.dialect))


def newest_revisions(conn: Connection, table: Table) -> dict[str, int]:
    """Every model's newest revision number: one aggregate over the primary key's index (revisions are
    rare, so the table stays small), what a worker's follower reads to notice a change anywhere."""
    query = select(table.c.model, func.max(table.c.revision)).group_by(table.c.model)
    return {model: revision for model, revision in conn.execute(query)}


def history_query(table: Table, model: str, limit: int, before: int | None) -> Select:
    """Revisions of `model`, newest first: at most `limit`, only those older than `before` if given."""
    query = select(table).where(table.c.model == model)
    if before is not None:
        query = query.where(table.c.revision < before)
    return query.order_by(table.c.revision.desc()).limit(limit)


class Numbered(Protocol):
    revision: int


Revision = TypeVar("Revision", bound=Numbered)


def page_of(revisions: list[Revision], limit: int) -> tuple[list[Revision], int | None]:
    """`revisions` read with `limit + 1` -> (the page of `limit`, the `before` of the next page or None)."""
    page = revisions[:limit]
    return page, page[-1].revision if len(revisions) > limit else None

"""Frames kept for review: production images, so opt-in, and bounded in count and in bytes.

A frame is kept with what is known about it (for a shadow run: both answers and where they
disagreed), under a source (`shadow`) and a run (the revision that started the shadow run). Each run
keeps at most the count its owner asked for (the first frames that qualified), and all runs together
at most `INSPECTION_KEPT_FRAMES_MAX_BYTES`; a frame over either bound is not kept, and the caller
counts it. In the thresholds' database, so that every worker and every server of a line share them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
)

from service.revisions import create_tables, utc

log = logging.getLogger(__name__)

_metadata = MetaData()
kept_frames = Table(
    "kept_frames",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(64), nullable=False, index=True),
    Column("source", String(16), nullable=False),
    Column("run", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("content_type", String(64), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("details", Text, nullable=False),  # JSON
    Column("image", LargeBinary, nullable=False),
)


@dataclass(frozen=True)
class KeptFrame:
    id: int
    model: str
    source: str
    run: int
    created_at: datetime
    content_type: str
    size_bytes: int
    details: dict[str, Any]


class FrameStore:
    """Kept frames, on the engine of the thresholds' database (its opener disposes of it)."""

    def __init__(self, engine: Engine, max_bytes: int) -> None:
        self._engine = engine
        self.max_bytes = max_bytes
        create_tables(engine, _metadata.sorted_tables)

    def keep(
        self,
        *,
        model: str,
        source: str,
        run: int,
        limit: int,
        image: bytes,
        content_type: str,
        details: dict[str, Any],
    ) -> int | None:
        """Keep a frame unless its run has `limit` frames already or the store would grow past its
        bytes; returns its id, or None when it was not kept."""
        run_of = (kept_frames.c.model == model) & (kept_frames.c.source == source) & (kept_frames.c.run == run)
        with self._engine.begin() as conn:
            count = conn.execute(select(func.count()).select_from(kept_frames).where(run_of)).scalar_one()
            stored = conn.execute(select(func.coalesce(func.sum(kept_frames.c.size_bytes), 0))).scalar_one()
            if count >= limit or stored + len(image) > self.max_bytes:
                return None
            frame_id = conn.execute(
                insert(kept_frames).values(
                    model=model,
                    source=source,
                    run=run,
                    created_at=datetime.now(UTC),
                    content_type=content_type,
                    size_bytes=len(image),
                    details=json.dumps(details),
                    image=image,
                )
            ).inserted_primary_key[0]
        # Workers keep frames at once: past the run's limit, the later ones go again (this one, maybe,
        # by another worker's hand).
        with self._engine.begin() as conn:
            first = select(kept_frames.c.id).where(run_of).order_by(kept_frames.c.id).limit(limit)
            conn.execute(delete(kept_frames).where(run_of, kept_frames.c.id.not_in(first)))
        return frame_id if self._exists(frame_id) else None

    def list(self, model: str, source: str, run: int, limit: int = 100, after: int = 0) -> list[KeptFrame]:
        """A run's kept frames, oldest first, without their images: at most `limit`, ids after `after`."""
        columns = [c for c in kept_frames.c if c.name != "image"]
        query = (
            select(*columns)
            .where(
                kept_frames.c.model == model,
                kept_frames.c.source == source,
                kept_frames.c.run == run,
                kept_frames.c.id > after,
            )
            .order_by(kept_frames.c.id)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [_frame(row) for row in conn.execute(query).mappings()]

    def count(self, model: str, source: str, run: int) -> int:
        with self._engine.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(kept_frames)
                .where(kept_frames.c.model == model, kept_frames.c.source == source, kept_frames.c.run == run)
            ).scalar_one()

    def image(self, model: str, frame_id: int) -> tuple[bytes, str] | None:
        """A kept frame's image and its content type; None when there is no such frame of `model`."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(kept_frames.c.image, kept_frames.c.content_type).where(
                    kept_frames.c.id == frame_id, kept_frames.c.model == model
                )
            ).first()
        return None if row is None else (bytes(row[0]), row[1])

    def _exists(self, frame_id: int) -> bool:
        with self._engine.connect() as conn:
            return conn.execute(select(kept_frames.c.id).where(kept_frames.c.id == frame_id)).first() is not None


def _frame(row: Any) -> KeptFrame:
    return KeptFrame(
        id=row["id"],
        model=row["model"],
        source=row["source"],
        run=row["run"],
        created_at=utc(row["created_at"]),
        content_type=row["content_type"],
        size_bytes=row["size_bytes"],
        details=json.loads(row["details"]),
    )

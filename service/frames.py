"""Frames kept for review: production images, so opt-in, and bounded in count and in bytes.

A frame is kept with what is known about it, under a source and a run:
- `shadow`: a shadow run's disagreeing frames, with both answers, under the revision that started the
  run; it keeps the first frames that qualified, at most the count its owner asked for;
- `rejected`: live frames the service rejected, with their answer (`RejectedFrames`), when
  `INSPECTION_KEEP_REJECTED_FRAMES` asks for them (off by default: these are production images); the
  newest that many per model, older ones dropped.
All runs together keep at most `INSPECTION_KEPT_FRAMES_MAX_BYTES`; a frame over a bound is not kept.
In the thresholds' database, so that every worker and every server of a line share them, and the QA
console reviews them (`docs/console.md`).
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
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

from service.pipeline.decode import SUPPORTED_FORMATS, sniff_format
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
        newest: bool = False,
    ) -> int | None:
        """Keep a frame unless its run has `limit` frames already (with `newest`: keep it, and drop the
        run's oldest past `limit`) or the store would grow past its bytes; returns its id, or None when
        it was not kept."""
        run_of = (kept_frames.c.model == model) & (kept_frames.c.source == source) & (kept_frames.c.run == run)
        with self._engine.begin() as conn:
            count = conn.execute(select(func.count()).select_from(kept_frames).where(run_of)).scalar_one()
            stored = conn.execute(select(func.coalesce(func.sum(kept_frames.c.size_bytes), 0))).scalar_one()
            if (count >= limit and not newest) or limit <= 0 or stored + len(image) > self.max_bytes:
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
            order = kept_frames.c.id.desc() if newest else kept_frames.c.id
            kept = select(kept_frames.c.id).where(run_of).order_by(order).limit(limit)
            conn.execute(delete(kept_frames).where(run_of, kept_frames.c.id.not_in(kept)))
        return frame_id if self._exists(frame_id) else None

    def list(
        self, model: str, source: str, run: int, limit: int = 100, after: int = 0, newest_first: bool = False
    ) -> list[KeptFrame]:
        """A run's kept frames, oldest first (or newest first), without their images: at most `limit`, ids
        after `after`."""
        columns = [c for c in kept_frames.c if c.name != "image"]
        query = (
            select(*columns)
            .where(
                kept_frames.c.model == model,
                kept_frames.c.source == source,
                kept_frames.c.run == run,
                kept_frames.c.id > after,
            )
            .order_by(kept_frames.c.id.desc() if newest_first else kept_frames.c.id)
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

    def image(self, model: str, source: str, frame_id: int) -> tuple[bytes, str] | None:
        """A kept frame's image and its content type; None when `model` kept no such frame from `source`."""
        query = select(kept_frames.c.image, kept_frames.c.content_type).where(
            kept_frames.c.id == frame_id, kept_frames.c.model == model, kept_frames.c.source == source
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else (bytes(row[0]), row[1])

    def _exists(self, frame_id: int) -> bool:
        with self._engine.connect() as conn:
            return conn.execute(select(kept_frames.c.id).where(kept_frames.c.id == frame_id)).first() is not None


def frame_bytes(frame: Any) -> tuple[bytes, str]:
    """A frame as an image file: as it came (bytes), or raw pixels (an array) as a PNG."""
    if isinstance(frame, bytes):  # one the model decoded: a supported format
        return frame, SUPPORTED_FORMATS.get(sniff_format(frame) or "", "application/octet-stream")
    from PIL import Image

    pixels = np.ascontiguousarray(frame)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue(), "image/png"


REJECTED = "rejected"


class RejectedFrames:
    """Keeps the live frames a worker rejected, off the request path: a prediction hands its frame and
    answer over (`offer`, a queue put), and a thread of this worker's writes them to the frame store.
    When the writer falls behind, frames are dropped rather than queued without bound."""

    QUEUE = 32

    def __init__(self, frames: FrameStore, per_model: int) -> None:
        self._frames = frames
        self.per_model = per_model
        self._queue: queue.Queue[tuple[str, Any, Any] | None] = queue.Queue(self.QUEUE)
        self._thread = threading.Thread(target=self._run, name="rejected-frames", daemon=True)
        self._thread.start()

    def offer(self, model: str, frame: Any, answer: Any) -> None:
        """`answer`: the frame's (typed) answer, turned to JSON in the writer's thread."""
        try:
            self._queue.put_nowait((model, frame, answer))
        except queue.Full:
            pass  # the writer is behind: this frame is not kept

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            model, frame, answer = item
            try:
                image, content_type = frame_bytes(frame)
                self._frames.keep(
                    model=model,
                    source=REJECTED,
                    run=0,
                    limit=self.per_model,
                    image=image,
                    content_type=content_type,
                    details={"answer": answer.model_dump(mode="json")},
                    newest=True,
                )
            except Exception:
                log.exception("could not keep a rejected frame of %s", model)


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

"""Where predictions live: a small interface, and SQLite (WAL mode) as the embedded default.

Nothing outside this module writes SQL. Records are kept whole as JSON, with the columns needed to list and
recover them beside it.
"""

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

TERMINAL = ("succeeded", "failed", "canceled", "aborted")
RESTART_ERROR = "the server restarted before this prediction finished; please run it again"


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # RFC 3339 UTC with microseconds, as Replicate writes timestamps


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime(TIME_FORMAT)


def now() -> str:
    return iso(time.time())


def seconds_between(start: str, end: str) -> float:
    return (datetime.strptime(end, TIME_FORMAT) - datetime.strptime(start, TIME_FORMAT)).total_seconds()


@dataclass
class Prediction:
    id: str
    model: str  # owner/name the client asked for
    version: str  # "hidden" for the official model names, else the version the client gave
    input: dict[str, Any]  # echo of the client's input
    created_at: str = field(default_factory=now)
    status: str = "starting"  # starting | processing | succeeded | failed | canceled | aborted
    output: str | None = None  # path of the output file under the data dir, e.g. files/<token>/output.webp
    error: str | None = None
    logs: str = ""
    started_at: str | None = None
    completed_at: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    webhook: str | None = None
    webhook_events_filter: list[str] = field(default_factory=lambda: ["output", "completed"])  # Replicate's default
    deadline: str | None = None
    deployment: str | None = None
    source: str = "api"  # api (Replicate routes) | openai
    base_url: str = ""  # where the client reached us: the base of every URL we hand out for this prediction

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass
class WebhookMessage:
    """A webhook delivery waiting in the outbox; kept until it is delivered or given up."""

    message_id: str  # the same across retries, so receivers can deduplicate
    url: str
    body: str
    attempt: int = 0
    due: float = 0.0  # unix time of the next attempt


class PredictionStore(ABC):
    """The operations the server needs; a shared database can implement the same interface."""

    @abstractmethod
    def create(self, prediction: Prediction) -> None: ...

    @abstractmethod
    def get(self, prediction_id: str) -> Prediction | None: ...

    @abstractmethod
    def update(self, prediction: Prediction) -> None: ...

    @abstractmethod
    def page(self, limit: int, before: tuple[str, str] | None = None) -> list[Prediction]:
        """Newest first; `before` = (created_at, id) of the last record of the previous page."""

    @abstractmethod
    def recover(self) -> list[Prediction]:
        """After a restart: fail every prediction that was queued or running, and return them."""

    @abstractmethod
    def outbox_put(self, message: WebhookMessage) -> None:
        """Add or update a webhook delivery."""

    @abstractmethod
    def outbox_remove(self, message_id: str) -> None: ...

    @abstractmethod
    def outbox(self) -> list[WebhookMessage]:
        """Every pending delivery, soonest first."""


class SQLiteStore(PredictionStore):
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS predictions ("
                " id TEXT PRIMARY KEY, created_at TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS by_time ON predictions (created_at DESC, id DESC)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS webhook_outbox ("
                " message_id TEXT PRIMARY KEY, url TEXT NOT NULL, body TEXT NOT NULL, attempt INTEGER NOT NULL,"
                " due REAL NOT NULL)"
            )

    def create(self, prediction: Prediction) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO predictions (id, created_at, status, data) VALUES (?, ?, ?, ?)",
                (prediction.id, prediction.created_at, prediction.status, json.dumps(asdict(prediction))),
            )

    def get(self, prediction_id: str) -> Prediction | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM predictions WHERE id = ?", (prediction_id,)).fetchone()
        return Prediction(**json.loads(row[0])) if row else None

    def update(self, prediction: Prediction) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE predictions SET status = ?, data = ? WHERE id = ?",
                (prediction.status, json.dumps(asdict(prediction)), prediction.id),
            )

    def page(self, limit: int, before: tuple[str, str] | None = None) -> list[Prediction]:
        query, args = "SELECT data FROM predictions", []
        if before is not None:
            query += " WHERE (created_at, id) < (?, ?)"
            args = list(before)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
        return [Prediction(**json.loads(row[0])) for row in rows]

    def recover(self) -> list[Prediction]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM predictions WHERE status IN ('starting', 'processing')"
            ).fetchall()
        recovered = []
        for row in rows:
            prediction = Prediction(**json.loads(row[0]))
            prediction.status, prediction.error, prediction.completed_at = "failed", RESTART_ERROR, now()
            self.update(prediction)
            recovered.append(prediction)
        return recovered

    def outbox_put(self, message: WebhookMessage) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO webhook_outbox (message_id, url, body, attempt, due) VALUES (?, ?, ?, ?, ?)",
                (message.message_id, message.url, message.body, message.attempt, message.due),
            )

    def outbox_remove(self, message_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM webhook_outbox WHERE message_id = ?", (message_id,))

    def outbox(self) -> list[WebhookMessage]:
        with self._lock:
            rows = self._db.execute(
                "SELECT message_id, url, body, attempt, due FROM webhook_outbox ORDER BY due"
            ).fetchall()
        return [WebhookMessage(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

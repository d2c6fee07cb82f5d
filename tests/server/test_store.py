"""The SQLite prediction store: round trips, pages, recovery after a restart."""

from pathlib import Path

from server.store import RESTART_ERROR, Prediction, SQLiteStore, WebhookMessage


def test_round_trip_update_and_pages(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    for i in range(5):
        store.create(Prediction(id=f"p{i}", model="m", version="hidden", input={"i": i},
                                created_at=f"2026-01-01T00:00:0{i}.000000Z"))
    p = store.get("p3")
    assert p is not None and p.input == {"i": 3} and p.status == "starting"
    p.status, p.output = "succeeded", "files/x/output.png"
    store.update(p)
    assert store.get("p3") == p and store.get("nope") is None
    first = store.page(2)
    second = store.page(2, before=(first[-1].created_at, first[-1].id))
    rest = store.page(10, before=(second[-1].created_at, second[-1].id))
    assert [x.id for x in first + second + rest] == ["p4", "p3", "p2", "p1", "p0"]


def test_recover_fails_what_was_queued_or_running_and_keeps_the_rest(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    for pid, status in (("queued", "starting"), ("running", "processing"), ("done", "succeeded")):
        store.create(Prediction(id=pid, model="m", version="hidden", input={}, status=status))
    store.close()
    reopened = SQLiteStore(tmp_path / "p.db")
    assert sorted(p.id for p in reopened.recover()) == ["queued", "running"]
    for pid in ("queued", "running"):
        p = reopened.get(pid)
        assert p.status == "failed" and p.error == RESTART_ERROR and p.completed_at
    assert reopened.get("done").status == "succeeded"
    assert reopened.recover() == []


def test_webhook_outbox_survives_reopening(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    store.outbox_put(WebhookMessage("m2", "http://x/2", "{}", due=20.0))
    store.outbox_put(WebhookMessage("m1", "http://x/1", "{}", due=10.0))
    store.outbox_put(WebhookMessage("m2", "http://x/2", "{}", attempt=1, due=5.0))  # a retry replaces it
    store.close()
    reopened = SQLiteStore(tmp_path / "p.db")
    assert [(m.message_id, m.attempt) for m in reopened.outbox()] == [("m2", 1), ("m1", 0)]
    reopened.outbox_remove("m2")
    assert [m.message_id for m in reopened.outbox()] == ["m1"]

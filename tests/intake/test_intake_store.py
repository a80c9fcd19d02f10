"""IntakeStore: what is written is read back, also from other connections while writes go on."""

from __future__ import annotations

import threading
import time

from llmship.intake.store import IntakeStore


def _add(store: IntakeStore, kind: str, n: int, status: int = 202, payload_id: str = "p") -> int:
    return store.add_request(method="POST", path="/x", kind=kind, status=status, payload_id=payload_id,
                             api_key_present=True, content_encoding="gzip", body_bytes=10 * n,
                             records=[{"i": i, "kind": kind} for i in range(n)] if status == 202 else None)


def test_requests_and_records_round_trip(tmp_path):
    with IntakeStore(tmp_path / "db.sqlite") as store:
        rid = _add(store, "logs", 2, payload_id="abc")
        _add(store, "series", 1)
        store.add_request(method="POST", path="/api/v2/logs", kind="logs", status=503, payload_id="abc",
                          api_key_present=False, content_encoding=None, body_bytes=5, fault="fail_first",
                          reason="injected fault")
        store.add_records("events", None, [{"title": "t"}])
        logs = store.records("logs")
        assert [r["data"] for r in logs] == [{"i": 0, "kind": "logs"}, {"i": 1, "kind": "logs"}]
        assert all(r["payload_id"] == "abc" and r["request_id"] == rid and r["kind"] == "logs" for r in logs)
        assert [r["kind"] for r in store.records()] == ["logs", "logs", "series", "events"]
        first, _, faulted = store.requests()
        assert first["items"] == 2 and first["bytes"] == 20 and first["api_key_present"] is True
        assert faulted == {**faulted, "status": 503, "fault": "fail_first", "api_key_present": False, "items": 0}
        assert [r["status"] for r in store.requests("logs")] == [202, 503]


def test_readers_see_each_request_together_with_its_records_while_another_connection_writes(tmp_path):
    path = tmp_path / "db.sqlite"
    writer = IntakeStore(path)
    total_requests = 300
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        store = IntakeStore(path)  # its own connection, like the server process
        try:
            for i in range(total_requests):
                _add(store, "logs", 1 + i % 5)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)
        finally:
            store.close()
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    reader = IntakeStore(path)
    reads = 0
    while not done.is_set() or reads == 0:
        accepted_items = sum(r["items"] for r in reader.requests("logs"))
        # records are read after requests: every request seen must already have all of its records
        assert len(reader.records("logs")) >= accepted_items
        reads += 1
    thread.join()
    assert not errors
    assert len(reader.requests("logs")) == total_requests
    assert len(reader.records("logs")) == sum(1 + i % 5 for i in range(total_requests))
    writer.close()
    reader.close()


def test_opening_an_existing_store_does_not_need_the_write_lock(tmp_path):
    path = tmp_path / "db.sqlite"
    writer = IntakeStore(path)
    _add(writer, "logs", 1)
    writer._db.execute("BEGIN IMMEDIATE")  # the server in the middle of a write
    try:
        began = time.monotonic()
        with IntakeStore(path) as reader:  # would wait busy_timeout (5 s) if opening tried to write
            assert len(reader.records("logs")) == 1
        assert time.monotonic() - began < 1.0
    finally:
        writer._db.execute("ROLLBACK")
        writer.close()

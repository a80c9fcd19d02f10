"""The TCP logs source over real sockets: JSON and plain lines, oversize lines, idle and garbage clients."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from llmship.config import load_config_text
from llmship.sources.logs import LogsSource
from llmship.telemetry import Telemetry
from llmship.transforms.logs import TRUNCATED_TAG


class Pipeline:
    """What the source talks to: collects records; ``overloaded`` is set by the test."""

    def __init__(self) -> None:
        self.telemetry = Telemetry()
        self.records: list[dict] = []
        self.is_overloaded = False

    def submit_logs(self, records):
        self.records.extend(records)

    def overloaded(self, kind: str) -> bool:
        assert kind == "logs"
        return self.is_overloaded


async def wait_until(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def source_factory():
    started: list[LogsSource] = []

    async def start(max_line_bytes: int = 262144, idle_timeout_secs: float = 60.0):
        cfg = load_config_text(f"""
[sources.logs]
tcp = "127.0.0.1:0"
http = ""
max_line_bytes = {max_line_bytes}
idle_timeout_secs = {idle_timeout_secs}
""")
        pipeline = Pipeline()
        source = LogsSource(cfg, pipeline)
        await source.start()
        started.append(source)
        return source, pipeline

    yield start
    for source in started:
        await source.shutdown(time.monotonic() + 2)


async def connect(source: LogsSource):
    host, port = source.tcp_address
    return await asyncio.open_connection(host, port)


def messages(pipeline: Pipeline) -> list:
    return [r.get("message") for r in pipeline.records]


async def test_json_lines_plain_lines_and_arrays(source_factory):
    source, pipeline = await source_factory()
    _, writer = await connect(source)
    writer.write(b'{"message": "json one", "service": "chat", "prompt": "hi"}\n'
                 b"a plain line\r\n"
                 b"\n"
                 b'[{"message": "in array 1"}, {"message": "in array 2"}, 7]\n'
                 b'{"message": broken json}\n'
                 b'"a json string"\n'
                 b"\xff\xfe not utf-8\n")
    await writer.drain()
    await wait_until(lambda: len(pipeline.records) == 8, what="8 records")
    assert pipeline.records[0] == {"message": "json one", "service": "chat", "prompt": "hi"}
    assert messages(pipeline)[1:] == ["a plain line", "in array 1", "in array 2", "7", '{"message": broken json}',
                                      '"a json string"', "\ufffd\ufffd not utf-8"]
    tel = pipeline.telemetry.component("logs_tcp")
    assert tel.get("received") == 8
    assert tel.get("plain_lines") == 4  # a line that is not a JSON object or array is kept as sent
    writer.close()


async def test_a_line_split_across_writes_and_the_last_line_without_newline(source_factory):
    source, pipeline = await source_factory()
    _, writer = await connect(source)
    for piece in (b'{"mess', b'age": "sp', b'lit"}\n{"message": "la', b'st"}'):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.01)  # separate segments on purpose; nothing waits on this
    await wait_until(lambda: len(pipeline.records) == 1, what="the split line")
    writer.close()  # EOF: the unterminated last line is a log too
    await wait_until(lambda: len(pipeline.records) == 2, what="the last line")
    assert messages(pipeline) == ["split", "last"]


async def test_an_oversize_line_is_truncated_and_flagged_and_the_next_line_is_intact(source_factory):
    source, pipeline = await source_factory(max_line_bytes=1024)
    _, writer = await connect(source)
    long_line = b'{"message": "' + b"x" * 5000 + b'"}'
    writer.write(long_line + b"\n" + b'{"message": "after"}\n')
    # and one arriving in pieces, longer than the limit before its newline shows up
    for _ in range(10):
        writer.write(b"y" * 1000)
    writer.write(b"\nlast\n")
    await writer.drain()
    await wait_until(lambda: len(pipeline.records) == 4, what="4 records")
    first, after, pieces, last = pipeline.records
    assert first["message"] == long_line[:1024].decode()
    assert first["ddtags"] == TRUNCATED_TAG and first["llmship"] == {"line_bytes": len(long_line)}
    assert after == {"message": "after"}
    assert pieces["message"] == "y" * 1024 and pieces["llmship"] == {"line_bytes": 10_000}
    assert last == {"message": "last"}
    assert pipeline.telemetry.component("logs_tcp").get("truncated_lines") == 2


async def test_an_idle_client_does_not_block_another_and_is_closed(source_factory):
    source, pipeline = await source_factory(idle_timeout_secs=0.5)
    idle_reader, idle_writer = await connect(source)
    idle_writer.write(b'{"message": "never fini')  # a partial line, then silence
    await idle_writer.drain()
    _, busy = await connect(source)
    started = time.monotonic()
    busy.write(b"".join(orjson.dumps({"message": f"busy {i}"}) + b"\n" for i in range(100)))
    await busy.drain()
    await wait_until(lambda: len(pipeline.records) >= 100, what="the busy client's records")
    assert time.monotonic() - started < 0.5  # not held up by the idle client
    busy.close()
    # the idle client is closed after the timeout and its partial line kept
    assert await asyncio.wait_for(idle_reader.read(), timeout=5) == b""
    await wait_until(lambda: len(pipeline.records) == 101, what="the idle client's partial line")
    assert pipeline.records[-1] == {"message": '{"message": "never fini'}
    assert pipeline.telemetry.component("logs_tcp").get("closed", reason="idle") == 1


async def test_a_garbage_client_does_not_disturb_others_and_buffers_little(source_factory):
    source, pipeline = await source_factory(max_line_bytes=4096)
    _, garbage = await connect(source)
    _, good = await connect(source)
    chunk = bytes(range(256)).replace(b"\n", b"") * 256  # ~65 kB without a newline
    for i in range(64):  # 4 MB of garbage, no newline
        garbage.write(chunk)
        good.write(orjson.dumps({"message": f"good {i}"}) + b"\n")
        await garbage.drain()
        await good.drain()
    await wait_until(lambda: len([m for m in messages(pipeline) if str(m).startswith("good")]) == 64,
                     what="the good client's records")
    # white-box: however much garbage arrived, a connection holds at most one line's head
    assert max(len(c._splitter._buf) + len(c._splitter._head or b"") for c in source._connections) <= 4096
    garbage.close()
    await wait_until(lambda: any(r.get("llmship", {}).get("line_bytes") == len(chunk) * 64 for r in pipeline.records),
                     what="the garbage line, truncated")


async def test_reading_pauses_while_overloaded_and_resumes(source_factory):
    source, pipeline = await source_factory()
    pipeline.is_overloaded = True
    _, writer = await connect(source)
    writer.write(b"first\n")
    await writer.drain()
    await wait_until(lambda: messages(pipeline) == ["first"], what="the first line")
    await wait_until(lambda: pipeline.telemetry.component("logs_tcp").get("paused") == 1, what="a pause")
    writer.write(b"second\n")
    await writer.drain()
    await asyncio.sleep(0.3)  # give a wrongly unpaused source time to read; the assertion is what fails
    assert messages(pipeline) == ["first"]
    pipeline.is_overloaded = False
    await wait_until(lambda: messages(pipeline) == ["first", "second"], what="reading to resume")


async def test_shutdown_submits_partial_lines_and_stops_listening(source_factory):
    source, pipeline = await source_factory()
    _, writer = await connect(source)
    writer.write(b"unterminated")
    await writer.drain()
    await wait_until(lambda: pipeline.telemetry.component("logs_tcp").get("received_bytes") == 12, what="bytes")
    address = source.tcp_address
    await source.shutdown(time.monotonic() + 2)
    assert messages(pipeline) == ["unterminated"]
    with pytest.raises(OSError):
        await asyncio.open_connection(*address)
    await source.shutdown(time.monotonic() + 2)  # idempotent


def test_the_splitter_gives_the_same_records_however_the_stream_is_cut():
    """Lines are read where they lie in each read: every way of cutting a stream into reads (a line split
    anywhere, CRLF, blank, plain, oversize, an object then garbage) gives what one read of it gives."""
    import random

    from llmship.sources.logs import LineSplitter
    from llmship.telemetry import Component

    stream = (b'{"message": "one"}\n{"a": [1, 2]}\r\n\n  \nplain text\n' + b'{"message": "' + b"x" * 300 + b'"}\n'
              + b'{"broken": \n[{"message": "in an array"}]\n{"message": "two"}{\n"just a string"\n{}\n'
              + b'{"message": "caf\xc3\xa9"}\n{"unterminated": "end"}')

    def records(pieces: list[bytes]) -> list:
        splitter, out = LineSplitter(200, Component("logs_tcp")), []
        for piece in pieces:
            splitter.feed(piece, out)
        splitter.finish(out)
        return out

    whole = records([stream])
    assert whole[0] == {"message": "one"} and whole[1] == {"a": [1, 2]} and whole[2] == {"message": "plain text"}
    assert whole[3]["llmship"] == {"line_bytes": 315} and whole[-1] == {"unterminated": "end"}
    assert len(whole) == 11
    for cut in range(1, len(stream)):  # every line completed by the next read, at every point of it
        assert records([stream[:cut], stream[cut:]]) == whole, cut
    rng = random.Random(5)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(1, 12)))
        assert records([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]) == whole, cuts

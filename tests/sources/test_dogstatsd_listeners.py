"""The DogStatsD listeners on real UDP, unix datagram and unix stream sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import sys
import time

import pytest
import uvloop

from llmship.config import load_config_text
from llmship.sources.dogstatsd import DogStatsDSource
from llmship.telemetry import Telemetry


class Recorder:
    """The emitter as the source sees it: telemetry, add_metric, two submit methods."""

    def __init__(self) -> None:
        self.telemetry = Telemetry()
        self.samples: list[tuple] = []
        self.events: list[dict] = []
        self.checks: list[dict] = []

    def add_metric(self, name, mtype, value, tags="", rate=1.0, host=None, timestamp=None) -> None:
        self.samples.append((name, mtype, value, tags))

    def add_metrics(self, samples) -> None:  # the lines of one datagram, as the aggregator's add_many
        for sample in samples:
            self.add_metric(*sample)

    def submit_dsd_event(self, event: dict) -> None:
        self.events.append(event)

    def submit_service_check(self, check: dict) -> None:
        self.checks.append(check)

    def counter(self, name: str, **labels: str) -> float:
        return self.telemetry.component("dogstatsd").get(name, **labels)


async def until(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)  # hand the loop to the listener, then check again


def make_source(tmp_path, **dsd) -> tuple[DogStatsDSource, Recorder]:
    settings = {"udp": "127.0.0.1:0", **dsd}
    body = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in settings.items())
    cfg = load_config_text(f'[agent]\nhostname = "test-host"\n[sources.dogstatsd]\n{body}\n')
    pipeline = Recorder()
    return DogStatsDSource(cfg, pipeline), pipeline


@pytest.fixture
async def started(tmp_path):
    sources = []

    async def start(**dsd):
        source, pipeline = make_source(tmp_path, **dsd)
        await source.start()
        sources.append(source)
        return source, pipeline

    yield start
    for source in sources:
        await source.shutdown(time.monotonic() + 5)


# ---------------------------------------------------------------------------------------------- UDP


async def test_udp_single_and_buffered_datagrams(started):
    source, pipeline = await started()
    host, port = source.udp_address
    assert host == "127.0.0.1" and port > 0
    single = b"llm.requests:1|c|#env:prod\n"
    buffered = b"llm.tokens.input:120|d|#model:gpt-4o\nllm.queue:3|g\n_sc|llm.up|0\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(single, (host, port))
        client.sendto(buffered, (host, port))
    await until(lambda: len(pipeline.samples) == 3 and pipeline.checks, what="samples over UDP")
    assert pipeline.samples == [("llm.requests", "c", 1.0, "env:prod"),
                                ("llm.tokens.input", "d", 120.0, "model:gpt-4o"), ("llm.queue", "g", 3.0, "")]
    assert pipeline.counter("datagrams_received") == 2
    assert pipeline.counter("received") == 4
    assert pipeline.counter("received_bytes") == len(single) + len(buffered)


async def test_udp_receive_buffer_and_kernel_drops_are_reported(started):
    source, pipeline = await started(receive_buffer_bytes=1 << 20)
    comp = pipeline.telemetry.component("dogstatsd")
    assert comp.info["udp_receive_buffer_bytes"] >= 1 << 20 or sys.platform != "linux"
    if sys.platform == "linux":
        assert comp.gauges["kernel_drops"]() == 0


@pytest.mark.skipif(sys.platform != "linux", reason="the drops column is Linux's /proc/net/udp")
async def test_kernel_drops_counts_what_overflowed_the_receive_buffer(started):
    source, pipeline = await started(receive_buffer_bytes=4096)
    comp = pipeline.telemetry.component("dogstatsd")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for _ in range(200):  # sent without yielding to the loop: the small buffer overflows
            client.sendto(b"m:1|c|#" + b"x" * 1000, source.udp_address)
    assert comp.gauges["kernel_drops"]() > 0
    await until(lambda: pipeline.counter("datagrams_received") > 0, what="the datagrams that fitted")
    assert pipeline.counter("datagrams_received") + comp.gauges["kernel_drops"]() == 200


async def test_udp_datagram_over_max_packet_bytes_is_dropped_and_counted(started):
    source, pipeline = await started(max_packet_bytes=512)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"big:1|c|#" + b"x" * 600, source.udp_address)
        client.sendto(b"small:1|c", source.udp_address)
    await until(lambda: pipeline.samples, what="the small datagram")
    assert pipeline.samples == [("small", "c", 1.0, "")]
    assert pipeline.counter("discarded", reason="packet_too_large") == 1


async def test_shutdown_parses_what_the_kernel_already_holds(tmp_path):
    source, pipeline = make_source(tmp_path)
    await source.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for i in range(300):  # more than one wake-up's worth, all queued before the loop runs the reader
            client.sendto(f"m{i}:1|c".encode(), source.udp_address)
    await source.shutdown(time.monotonic() + 5)
    assert len(pipeline.samples) == 300
    await source.shutdown(time.monotonic() + 5)  # idempotent


async def test_udp_port_in_use_fails_at_start(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        source, _ = make_source(tmp_path, udp=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(OSError, match="cannot listen on udp"):
            await source.start()


async def test_an_empty_address_disables_the_listener(started):
    source, _ = await started(udp="")
    assert source.udp_address is None and source.socket_path is None and source.stream_socket_path is None


# ---------------------------------------------------------------------------------------------- unix datagram


async def test_unix_datagram_socket(started, tmp_path):
    path = str(tmp_path / "run" / "llmship" / "dsd.socket")  # parent directories do not exist yet
    source, pipeline = await started(udp="", socket=path)
    assert source.socket_path == path
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o722
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"llm.requests:2|c|#env:prod\n_e{2,2}:hi|yo\n", path)
    await until(lambda: pipeline.samples and pipeline.events, what="a sample and an event over the socket")
    assert pipeline.samples == [("llm.requests", "c", 2.0, "env:prod")]
    assert pipeline.events[0]["title"] == "hi" and pipeline.events[0]["host"] == "test-host"
    assert pipeline.telemetry.component("dogstatsd").info["socket_receive_buffer_bytes"] > 0
    await source.shutdown(time.monotonic() + 5)
    assert not os.path.exists(path)


async def test_a_stale_socket_file_is_replaced(started, tmp_path):
    path = str(tmp_path / "dsd.socket")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # the file stays behind, as after a crash
    source, pipeline = await started(udp="", socket=path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"m:1|c", path)
    await until(lambda: pipeline.samples, what="a sample on the new socket")


async def test_a_socket_in_use_or_a_regular_file_is_left_alone(tmp_path):
    live_path = str(tmp_path / "live.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(live_path)
        source, _ = make_source(tmp_path, udp="", socket=live_path)
        with pytest.raises(OSError, match="in use"):
            await source.start()
        assert os.path.exists(live_path)
    file_path = tmp_path / "not-a-socket"
    file_path.write_text("keep me")
    source, _ = make_source(tmp_path, udp="", socket=str(file_path))
    with pytest.raises(OSError, match="not a socket"):
        await source.start()
    assert file_path.read_text() == "keep me"


async def test_a_failed_start_releases_what_it_had_bound(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    source, _ = make_source(tmp_path, udp=f"127.0.0.1:{port}", socket=str(blocker))
    with pytest.raises(OSError):
        await source.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # free again: the UDP listener was closed


async def test_shutdown_leaves_a_socket_file_another_process_now_owns(tmp_path):
    path = str(tmp_path / "dsd.socket")
    source, _ = make_source(tmp_path, udp="", socket=path)
    await source.start()
    os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as successor:
        successor.bind(path)
        await source.shutdown(time.monotonic() + 5)
        assert os.path.exists(path)


# ---------------------------------------------------------------------------------------------- unix stream


def frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


async def stream_client(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(path)


async def test_unix_stream_frames_split_and_joined_anyhow(started, tmp_path):
    path = str(tmp_path / "dsd-stream.socket")
    source, pipeline = await started(udp="", stream_socket=path)
    assert source.stream_socket_path == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o722
    reader, writer = await stream_client(path)
    data = frame(b"a:1|c\nb:2|g\n") + frame(b"") + frame(b"c:3|h") + frame(b"_sc|svc|1|m:slow")
    for i in range(0, len(data), 3):  # three bytes at a time: prefixes and payloads cut anywhere
        writer.write(data[i:i + 3])
        await writer.drain()
    writer.write(frame(b"d:4|d") + frame(b"e:5|ms"))  # two frames in one write
    await writer.drain()
    await until(lambda: len(pipeline.samples) == 5 and pipeline.checks, what="every frame")
    assert [s[0] for s in pipeline.samples] == ["a", "b", "c", "d", "e"]
    assert pipeline.checks[0]["message"] == "slow"
    assert pipeline.counter("datagrams_received") == 6
    assert pipeline.counter("received") == 6
    assert pipeline.counter("received_bytes") == len(data) - 4 * 4 + 5 + 6
    writer.close()
    await source.shutdown(time.monotonic() + 5)
    assert not os.path.exists(path)


async def test_unix_stream_absurd_length_closes_the_connection(started, tmp_path):
    path = str(tmp_path / "dsd-stream.socket")
    source, pipeline = await started(udp="", stream_socket=path, max_packet_bytes=1024)
    reader, writer = await stream_client(path)
    writer.write(frame(b"ok:1|c") + struct.pack("<I", 0xFFFFFFF0) + b"garbage")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the agent closed its side
    assert pipeline.samples == [("ok", "c", 1.0, "")]
    assert pipeline.counter("discarded", reason="packet_too_large") == 1
    writer.close()
    reader, writer = await stream_client(path)  # the listener itself carries on
    writer.write(frame(b"next:1|c"))
    await writer.drain()
    await until(lambda: len(pipeline.samples) == 2, what="a sample on a new connection")
    writer.close()


async def test_unix_stream_client_leaving_mid_frame_is_counted(started, tmp_path):
    path = str(tmp_path / "dsd-stream.socket")
    source, pipeline = await started(udp="", stream_socket=path)
    reader, writer = await stream_client(path)
    writer.write(frame(b"whole:1|c") + frame(b"cut:1|c")[:-3])
    await writer.drain()
    writer.close()
    await until(lambda: pipeline.counter("discarded", reason="truncated_frame") == 1, what="the cut frame")
    assert pipeline.samples == [("whole", "c", 1.0, "")]


async def test_shutdown_closes_open_stream_connections(tmp_path):
    path = str(tmp_path / "dsd-stream.socket")
    source, pipeline = make_source(tmp_path, udp="", stream_socket=path)
    await source.start()
    reader, writer = await stream_client(path)
    writer.write(frame(b"a:1|c"))
    await writer.drain()
    await until(lambda: pipeline.samples, what="the sample")
    await source.shutdown(time.monotonic() + 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


# ---------------------------------------------------------------------------------------------- uvloop


def test_every_listener_on_uvloop(tmp_path):
    """The tests above run on asyncio's loop; the agent runs on uvloop: one round trip per listener there."""
    dgram_path, stream_path = str(tmp_path / "d.socket"), str(tmp_path / "s.socket")

    async def scenario():
        source, pipeline = make_source(tmp_path, socket=dgram_path, stream_socket=stream_path)
        await source.start()
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
            udp.sendto(b"via.udp:1|c", source.udp_address)
            unix.sendto(b"via.unix:2|c", dgram_path)
        reader, writer = await stream_client(stream_path)
        writer.write(frame(b"via.stream:3|c"))
        await writer.drain()
        await until(lambda: len(pipeline.samples) == 3, what="one sample per listener")
        writer.close()
        await source.shutdown(time.monotonic() + 5)
        return sorted(pipeline.samples)

    assert uvloop.run(scenario()) == [("via.stream", "c", 3.0, ""), ("via.udp", "c", 1.0, ""),
                                      ("via.unix", "c", 2.0, "")]


@pytest.mark.skipif(sys.platform != "linux", reason="the drops column is Linux's /proc/net/udp")
def test_kernel_drops_of_an_unknown_socket_is_unavailable_with_its_reason_not_zero():
    from llmship.sources.dogstatsd import GaugeUnavailable, linux_udp_drops

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as not_udp:  # an inode no /proc/net/udp row has
        inode = os.fstat(not_udp.fileno()).st_ino
        with pytest.raises(GaugeUnavailable, match=f"no row for socket inode {inode}"):
            linux_udp_drops(inode)
        telemetry = Telemetry()
        telemetry.component("dogstatsd").gauge("kernel_drops", lambda: linux_udp_drops(inode))
        doc = telemetry.snapshot()["components"]["dogstatsd"]
    assert doc["gauges"]["kernel_drops"] is None
    assert f"no row for socket inode {inode}" in doc["info"]["gauge_errors"]["kernel_drops"]

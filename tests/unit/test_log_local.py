"""The ``local`` log format and driver: records, rotation, reading back."""
from __future__ import annotations

import asyncio
import gzip
import os

import pytest

from engine.plugins.log import _localfile as lf
from engine.plugins.log.local import LocalLogDriver, log_path
from engine.plugins.log.local_writer import create
from engine.sdk.drivers import DriverContext, LogContext
from engine.sdk.errors import InvalidArgument


def driver(tmp_path) -> LocalLogDriver:
    return LocalLogDriver(DriverContext(name="local", state_dir=str(tmp_path / "state")))


def read(drv, log: LogContext, **kw) -> list:
    async def go():
        return [e async for e in drv.read(log, **kw)]
    return asyncio.run(go())


def test_records_round_trip_and_a_torn_tail_is_left():
    blob = lf.encode("stdout", b"hello\n", 5) + lf.encode("stderr", b"", 6, lf.PARTIAL)
    torn = lf.encode("stdout", b"next\n", 7)[:-3]
    records, used = lf.decode(blob + torn)
    assert records == [("stdout", b"hello\n", 5), ("stderr", b"", 6)]
    assert used == len(blob)


def test_corrupt_record_is_an_error():
    blob = bytearray(lf.encode("stdout", b"hello\n", 5))
    blob[-1] ^= 0xFF  # trailer length no longer matches
    with pytest.raises(ValueError, match="corrupt"):
        lf.decode(bytes(blob))


def test_writer_splits_lines_and_keeps_partials_per_stream(tmp_path):
    ctx = {"container_id": "c" * 64, "log_dir": str(tmp_path), "options": {}}
    w = create(ctx)
    w.write("stdout", b"one\ntw", 1)
    w.write("stderr", b"err\n", 2)
    w.write("stdout", b"o\nthree", 3)
    w.close()
    records = list(lf.iter_records(lf.Rotation(log_path(str(tmp_path)), {})))
    assert [(s, d) for s, d, _ in records] == [
        ("stdout", b"one\n"), ("stderr", b"err\n"), ("stdout", b"two\n"), ("stdout", b"three")]


def test_long_line_is_written_in_pieces(tmp_path):
    w = create({"container_id": "c", "log_dir": str(tmp_path), "options": {}})
    w.write("stdout", b"x" * 40000 + b"\n", 1)
    w.close()
    data = [d for _, d, _ in lf.iter_records(lf.Rotation(log_path(str(tmp_path)), {}))]
    assert [len(d) for d in data] == [16384, 16384, 40000 - 32768 + 1]
    assert b"".join(data) == b"x" * 40000 + b"\n"


@pytest.mark.parametrize("compress", ["true", "false"])
def test_rotation_keeps_max_file_files_and_every_line_once_in_order(tmp_path, compress):
    opts = {"max-size": "2k", "max-file": "3", "compress": compress}
    ctx = {"container_id": "c", "log_dir": str(tmp_path), "options": opts}
    w = create(ctx)
    n = 2000
    for i in range(n):
        w.write("stdout", f"line {i:05d}\n".encode(), i)
    w.close()
    files = sorted(os.listdir(tmp_path / "local-logs"))
    ext = ".gz" if compress == "true" else ""
    assert files == ["container.log", f"container.log.1{ext}", f"container.log.2{ext}"]
    if ext:
        with gzip.open(tmp_path / "local-logs" / "container.log.1.gz") as f:
            lf.decode(f.read())
    for name in files:
        size = os.path.getsize(tmp_path / "local-logs" / name)
        assert size <= 2048
    log = LogContext(container_id="c", log_dir=str(tmp_path), options=opts)
    lines = [int(e.data.split()[1]) for e in read(driver(tmp_path), log)]
    # a contiguous run that ends with the last line: nothing lost inside, no repeats
    assert lines == list(range(n - len(lines), n))
    assert len(lines) > 100


def test_max_file_one_truncates(tmp_path):
    opts = {"max-size": "1k", "max-file": "1"}
    w = create({"container_id": "c", "log_dir": str(tmp_path), "options": opts})
    for i in range(500):
        w.write("stdout", f"{i}\n".encode(), i)
    w.close()
    assert os.listdir(tmp_path / "local-logs") == ["container.log"]
    log = LogContext(container_id="c", log_dir=str(tmp_path), options=opts)
    lines = [int(e.data) for e in read(driver(tmp_path), log)]
    assert lines[-1] == 499 and lines == list(range(lines[0], 500))


def test_read_tail_since_until_and_remove(tmp_path):
    log = LogContext(container_id="c", log_dir=str(tmp_path), options={})
    w = create({"container_id": "c", "log_dir": str(tmp_path), "options": {}})
    for i in range(10):
        w.write("stdout" if i % 2 else "stderr", f"{i}\n".encode(), 1000 + i)
    w.close()
    drv = driver(tmp_path)
    assert [e.data for e in read(drv, log, tail=3)] == [b"7\n", b"8\n", b"9\n"]
    assert read(drv, log, tail=0) == []
    got = read(drv, log, since_ns=1003, until_ns=1005)
    assert [(e.stream, e.data, e.time_ns) for e in got] == [
        ("stdout", b"3\n", 1003), ("stderr", b"4\n", 1004), ("stdout", b"5\n", 1005)]
    asyncio.run(drv.remove(log))
    assert not os.path.exists(log_path(str(tmp_path)))


def test_follow_sees_new_lines_and_stops(tmp_path):
    log = LogContext(container_id="c", log_dir=str(tmp_path), options={})
    w = create({"container_id": "c", "log_dir": str(tmp_path), "options": {}})
    w.write("stdout", b"before\n", 1)
    drv = driver(tmp_path)
    done = False

    async def go():
        nonlocal done
        got = []

        async def produce():
            nonlocal done
            await asyncio.sleep(0.15)
            w.write("stdout", b"after\n", 2)
            w.close()
            done = True

        task = asyncio.create_task(produce())
        async for e in drv.read(log, follow=True, stopped=lambda: done):
            got.append(e.data)
        await task
        return got

    assert asyncio.run(asyncio.wait_for(go(), 5)) == [b"before\n", b"after\n"]


@pytest.mark.parametrize("opts, message", [
    ({"max-size": "lots"}, "invalid size"),
    ({"max-file": "0"}, "max-file cannot be less than 1"),
    ({"compress": "maybe"}, "invalid boolean"),
    ({"mode": "sometimes"}, "unknown mode"),
    ({"max-buffer-size": "-5"}, "invalid size"),
    ({"syslog-address": "udp://x"}, "unknown log opt"),
])
def test_invalid_options(tmp_path, opts, message):
    with pytest.raises(InvalidArgument, match=message):
        driver(tmp_path).validate_options(opts)


def test_valid_options(tmp_path):
    driver(tmp_path).validate_options({"max-size": "10m", "max-file": "3", "compress": "false",
                                       "mode": "non-blocking", "max-buffer-size": "4m"})


@pytest.mark.parametrize("compress", ["true", "false"])
def test_follow_across_rotations_loses_nothing(tmp_path, compress):
    opts = {"max-size": "4k", "max-file": "5", "compress": compress}
    log = LogContext(container_id="c", log_dir=str(tmp_path), options=opts)
    w = create({"container_id": "c", "log_dir": str(tmp_path), "options": opts})
    drv = driver(tmp_path)
    done = False

    async def go():
        nonlocal done
        got = []

        async def produce():
            nonlocal done
            for i in range(600):
                w.write("stdout", f"{i:04d}\n".encode(), i)
                if i % 40 == 0:
                    await asyncio.sleep(0.12)  # the reader polls between rotations
            w.close()
            done = True

        task = asyncio.create_task(produce())
        async for e in drv.read(log, follow=True, stopped=lambda: done):
            got.append(int(e.data))
        await task
        return got

    got = asyncio.run(asyncio.wait_for(go(), 20))
    assert got == list(range(600))


def test_rotate_files_keeps_at_most_keep_files_whatever_their_compression(tmp_path):
    import gzip

    from engine.plugins.log._common import rotate_files

    path = str(tmp_path / "c.log")
    # an older run rotated without compression, this one compresses
    for name, data in (("c.log.1", b"one"), ("c.log.2.gz", gzip.compress(b"two"))):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "c.log").write_bytes(b"live")
    rotate_files(path, 3, compress=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.log.1.gz", "c.log.2"]
    assert gzip.decompress((tmp_path / "c.log.1.gz").read_bytes()) == b"live"
    assert (tmp_path / "c.log.2").read_bytes() == b"one"
    (tmp_path / "c.log").write_bytes(b"again")
    rotate_files(path, 1, compress=False)
    assert (tmp_path / "c.log").read_bytes() == b""

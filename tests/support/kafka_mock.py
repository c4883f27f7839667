"""librdkafka's mock cluster in its own process: the Kafka stand-in of the integration tests.

No real Kafka broker can be installed on the development and CI machines (see the README),
so the Kafka sink is tested against the mock cluster that ships inside librdkafka, the C
library bundled in the `confluent-kafka` wheel (a dev dependency). It is a real TCP server
speaking the Kafka protocol, written by librdkafka's authors for their own tests; it is not
Kafka (topics are auto-created on first produce, no CreateTopics, fake timestamps).

The child process drives librdkafka's C API through ctypes rather than through
`confluent_kafka.Producer`, because the Python binding does not expose the mock-cluster
handle, and the handle is what makes outage tests possible:

- librdkafka has no setting for the mock broker's port (`test.mock.broker.port` does not
  exist; the listener binds port 0). But `rd_kafka_mock_broker_set_down()` closes every
  connection and stops listening while *keeping the port bound*, and
  `rd_kafka_mock_broker_set_up()` listens on the same port again, with the cluster's data
  intact. So "the broker is down" is a real refused TCP connection on the address the
  client was given, and "it is back" is the same broker with the same log.

- `rd_kafka_mock_push_request_errors_array()` makes the next requests of one API fail with
  the given error codes: how a test provokes a broker error the client must handle
  (`OutOfOrderSequenceNumber`, `MessageSizeTooLarge`, ...) without a misbehaving broker.

The child prints `127.0.0.1:<port>` once the cluster listens, then obeys one command per
line on stdin (`down`, `up`, `errors <api key> <code> [<code> ...]`, `quit`), answering
`ok` or `error <text>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import os
import sys
from pathlib import Path

BROKER_ID = 1  # mock brokers are numbered from 1


def _librdkafka() -> ctypes.CDLL:
    import confluent_kafka  # the wheel bundles librdkafka next to the package

    base = Path(confluent_kafka.__file__).resolve().parent
    found = sorted(glob.glob(str(base.parent / "confluent_kafka.libs" / "librdkafka*.so*")))
    found += sorted(glob.glob(str(base / ".libs" / "librdkafka*.so*")))  # older wheel layout
    if not found:
        raise RuntimeError(f"librdkafka not found next to {base}")
    lib = ctypes.CDLL(found[0])
    vp, cp, i32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32
    sigs = {
        "rd_kafka_conf_new": ([], vp),
        "rd_kafka_conf_set": ([vp, cp, cp, cp, ctypes.c_size_t], ctypes.c_int),
        "rd_kafka_new": ([ctypes.c_int, vp, cp, ctypes.c_size_t], vp),
        "rd_kafka_mock_cluster_new": ([vp, ctypes.c_int], vp),
        "rd_kafka_mock_cluster_bootstraps": ([vp], cp),
        "rd_kafka_mock_broker_set_down": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_broker_set_up": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_push_request_errors_array": (
            [vp, ctypes.c_int16, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)],
            None,
        ),
        "rd_kafka_mock_cluster_destroy": ([vp], None),
        "rd_kafka_destroy": ([vp], None),
        "rd_kafka_err2str": ([ctypes.c_int], cp),
    }
    for name, (args, result) in sigs.items():
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = result
    return lib


def _serve() -> None:
    """The child process: run the cluster until `quit` or end of stdin."""
    lib = _librdkafka()
    errstr = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    # The handle that owns the cluster is a producer that never produces; keep it quiet.
    lib.rd_kafka_conf_set(conf, b"log_level", b"3", errstr, len(errstr))
    rk = lib.rd_kafka_new(0, conf, errstr, len(errstr))  # 0 = RD_KAFKA_PRODUCER
    if not rk:
        raise RuntimeError(f"rd_kafka_new: {errstr.value.decode()}")
    cluster = lib.rd_kafka_mock_cluster_new(rk, 1)
    if not cluster:
        raise RuntimeError("rd_kafka_mock_cluster_new failed")
    print(lib.rd_kafka_mock_cluster_bootstraps(cluster).decode(), flush=True)
    actions = {"down": lib.rd_kafka_mock_broker_set_down, "up": lib.rd_kafka_mock_broker_set_up}
    for line in sys.stdin:
        command, *args = line.split() or [""]
        if command == "quit":
            break
        if command == "errors" and len(args) >= 2:
            codes = (ctypes.c_int * (len(args) - 1))(*(int(a) for a in args[1:]))
            lib.rd_kafka_mock_push_request_errors_array(cluster, int(args[0]), len(codes), codes)
            print("ok", flush=True)
            continue
        if command not in actions:
            print(f"error unknown command {command!r}", flush=True)
            continue
        err = actions[command](cluster, BROKER_ID)
        print("ok" if err == 0 else f"error {lib.rd_kafka_err2str(err).decode()}", flush=True)
    lib.rd_kafka_mock_cluster_destroy(cluster)
    lib.rd_kafka_destroy(rk)


class MockKafka:
    """Handle on a mock cluster child process (one broker)."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.bootstrap = ""

    @classmethod
    async def start(cls, timeout: float = 20.0) -> MockKafka:
        self = cls()
        root = Path(__file__).resolve().parents[2]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.kafka_mock",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
        )  # fmt: skip
        self.bootstrap = (await self._line(timeout)).strip()
        if not self.bootstrap.startswith("127.0.0.1:"):
            await self.stop()
            raise RuntimeError(f"mock cluster did not start: {self.bootstrap!r}")
        return self

    @property
    def port(self) -> int:
        return int(self.bootstrap.rpartition(":")[2])

    async def _line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"mock cluster exited with {await self.proc.wait()}")
        return raw.decode()

    async def _command(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        answer = (await self._line(10)).strip()
        if answer != "ok":
            raise RuntimeError(f"mock cluster {command}: {answer}")

    async def down(self) -> None:
        """Close every connection and refuse new ones; the port and the data are kept."""
        await self._command("down")

    async def up(self) -> None:
        """Accept connections again, on the same port, with the same data."""
        await self._command("up")

    async def fail_next(self, api_key: int, *codes: int) -> None:
        """The next requests of `api_key` (0 = Produce) are answered with these error codes,
        one request each (Kafka protocol codes, e.g. 45 = OUT_OF_ORDER_SEQUENCE_NUMBER)."""
        await self._command(f"errors {api_key} {' '.join(str(c) for c in codes)}")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


if __name__ == "__main__":
    _serve()

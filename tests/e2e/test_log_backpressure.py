"""A blocked log pipe does not stop decisions (issue 11, "Logging never blocks").

The enforcer runs as a real process with its real dependencies (classifier, rate
limiter on Redis, Tansu; tests/e2e/meshes.py), but its stderr is a pipe this test
never reads. Once the pipe is full every write to it would block; the test then
sends thousands of ScreenPrompt calls over real gRPC and requires an answer to each,
then a clean SIGTERM drain. Before log records left the event loop through a queue,
the enforcer answered nothing here (main thread stuck in `StreamHandler.emit`).

Deadlines are generous: they fail only on a hang, never on a slow machine."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import termios
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from safeguards.v1 import safeguards_pb2 as pb
from safeguards.v1 import safeguards_pb2_grpc

from tests.e2e.meshes import REGION, backends, write_config
from tests.support import ROOT, free_port
from tools.embedded import die_with_parent

CALL_DEADLINE_S = 60.0  # per ScreenPrompt: only a hang takes this long
CALLS = 5000  # at DEBUG, several records each: more than the 10,000-record log queue holds
CONCURRENCY = 32
TENANTS = 10  # spread over tenants so the e2e rate limit (1000/hour each) does not throttle


class UnreadStderrEnforcer:
    """`python -m services.enforcer` whose stderr is a pipe nobody reads (the read
    end is kept open, so writes block instead of failing); stdout is read for the
    'listening on' line."""

    def __init__(self, args: list[str]) -> None:
        self._stderr_r, stderr_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.enforcer", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=stderr_w,
            text=True,
            preexec_fn=die_with_parent,
        )
        os.close(stderr_w)
        self.address = ""
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(120) or not self.address:
            self.close()
            raise RuntimeError("enforcer did not start")

    def _pump(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            if " listening on " in line and not self.address:
                self.address = line.split(" listening on ", 1)[1].split()[0]
                self._ready.set()
        self._ready.set()

    def stderr_pipe_full(self) -> bool:
        """True when the unread pipe holds all it can (the next log line would block):
        no line fits in what is left (lines are under 4 KiB, written whole)."""
        capacity = fcntl.fcntl(self._stderr_r, fcntl.F_GETPIPE_SZ)
        pending = bytearray(4)
        fcntl.ioctl(self._stderr_r, termios.FIONREAD, pending)
        return int.from_bytes(pending, sys.byteorder) > capacity - 4096

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self._stderr_r)


@contextmanager
def enforcer_with_unread_stderr(tmp: Path) -> Iterator[tuple[UnreadStderrEnforcer, int]]:
    policies, rl_config, key = write_config(tmp)
    with backends(tmp, rl_config) as b:
        metrics_port = free_port()
        args = b.enforcer_args(region=REGION, policies=policies, key=key, metrics_listen=f"127.0.0.1:{metrics_port}")
        # No cap on decision lines and DEBUG: as many lines as possible go to the pipe.
        enf = UnreadStderrEnforcer([*args, "--log-level", "DEBUG", "--log-decisions-per-s", "0"])
        try:
            yield enf, metrics_port
        finally:
            enf.close()


async def screen_many(address: str, n: int, first: int = 0) -> list[int]:
    """`n` ScreenPrompt calls, CONCURRENCY at a time; the action of each, in order."""
    actions: list[int] = [pb.ACTION_UNSPECIFIED] * n
    async with grpc.aio.insecure_channel(address) as ch:
        stub = safeguards_pb2_grpc.SafeguardsServiceStub(ch)

        async def worker(start: int) -> None:
            for i in range(start, n, CONCURRENCY):
                k = first + i
                req = pb.ScreenPromptRequest(
                    context=pb.RequestContext(
                        tenant=f"pipe-{k % TENANTS}", account=f"acct-{k % 97}", model="claude", region=REGION,
                        request_id=f"req-{k}", project="proj-7",
                    ),
                    messages=[pb.ChatMessage(role="user", content=f"What is the capital of country number {k}?")],
                )  # fmt: skip
                resp = await stub.ScreenPrompt(req, timeout=CALL_DEADLINE_S)
                actions[i] = resp.decision.action

        await asyncio.gather(*(worker(s) for s in range(CONCURRENCY)))
    return actions


def test_decisions_are_answered_while_stderr_is_never_read(tmp_path: Path) -> None:
    with enforcer_with_unread_stderr(tmp_path) as (enf, metrics_port):
        # Fill the pipe first, so every call below runs with a log sink that blocks.
        sent = 0
        while not enf.stderr_pipe_full():
            assert sent < 20 * CALLS, "the stderr pipe never filled"
            assert all(a != pb.ACTION_UNSPECIFIED for a in asyncio.run(screen_many(enf.address, 200, sent)))
            sent += 200

        actions = asyncio.run(screen_many(enf.address, CALLS, sent))
        assert len(actions) == CALLS and all(a != pb.ACTION_UNSPECIFIED for a in actions)
        assert actions.count(pb.ACTION_ALLOW) > CALLS // 2  # decided, not refused
        assert enf.stderr_pipe_full()

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
        dropped = next(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('safeguards_log_records_dropped_total{reason="queue_full"}')
        )
        assert dropped > 0  # the log queue overflowed, and what it could not hold is counted

        # SIGTERM still drains and exits 0: the writer stuck on stderr does not hold the exit.
        enf.proc.send_signal(signal.SIGTERM)
        assert enf.proc.wait(120) == 0

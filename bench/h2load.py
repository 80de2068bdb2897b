"""Drive a unary gRPC method with h2load (Debian package nghttp2-client).

gRPC is HTTP/2: a POST to /package.Service/Method with `content-type:
application/grpc` and `te: trailers`, whose body is the length-prefixed message
(1 byte compression flag 0, 4 bytes big-endian length, the serialized request).
h2load only sees the HTTP status (always 200 for gRPC; the gRPC status travels in
the trailers), so callers must check gRPC codes elsewhere (the service's
`grpc_server_handled_total`). h2load prints mean/max latency but no percentiles;
with --log-file it writes one line per request (start us, HTTP status, latency
us), from which p50/p99 are computed here.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import percentile

INSTALL_HINT = (
    "h2load not found: it drives the gRPC load. Install it with `apt-get install -y nghttp2-client` "
    "(Debian/Ubuntu) or `brew install nghttp2` (macOS), then run the benchmark again."
)


def find_h2load() -> str | None:
    return shutil.which("h2load")


def version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message, uncompressed."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass
class H2Result:
    clients: int
    streams: int
    rps_per_client: int | None
    duration_s: float
    req_per_s: float = 0.0
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    timeouts: int = 0
    status_2xx: int = 0
    non_2xx: int = 0
    latencies_us: list[float] = field(default_factory=list, repr=False)
    returncode: int = 0
    output: str = field(default="", repr=False)

    def p(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return percentile(self.latencies_us, q) / 1000

    @property
    def max_ms(self) -> float:
        return self.latencies_us[-1] / 1000 if self.latencies_us else float("nan")

    @property
    def client_failures(self) -> int:
        """Requests h2load saw fail: connection failures, errors, timeouts, HTTP status not 2xx."""
        return self.failed + self.errored + self.timeouts + self.non_2xx


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def command(
    binary: str,
    url: str,
    body_file: Path,
    *,
    clients: int,
    streams: int,
    duration_s: float,
    rps_per_client: int | None = None,
    log_file: Path | None = None,
    threads: int = 1,
) -> list[str]:
    cmd = [
        binary,
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-t",
        str(min(threads, clients)),
        "-D",
        f"{round(duration_s * 1000)}ms",
        "-d",
        str(body_file),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    if rps_per_client:
        cmd += ["--rps", str(rps_per_client)]
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    return [*cmd, url]


def parse(output: str, result: H2Result) -> H2Result:
    if m := _FINISHED.search(output):
        result.req_per_s = float(m.group(3))
    if m := _REQUESTS.search(output):
        result.total, _started, _done, result.succeeded, result.failed, result.errored, result.timeouts = map(
            int, m.groups()
        )
    if m := _STATUS.search(output):
        s2, s3, s4, s5 = map(int, m.groups())
        result.status_2xx, result.non_2xx = s2, s3 + s4 + s5
    return result


def read_log(path: Path) -> tuple[list[float], int]:
    """Per-request latencies (us, ascending) of HTTP 200 answers, and the count of others."""
    lat: list[float] = []
    bad = 0
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        if parts[1] == "200":
            lat.append(float(parts[2]))
        else:
            bad += 1
    lat.sort()
    return lat, bad


def start(
    binary: str,
    url: str,
    body_file: Path,
    *,
    clients: int,
    streams: int,
    duration_s: float,
    rps_per_client: int | None = None,
) -> tuple[subprocess.Popen, Path, H2Result]:
    """Start h2load in the background; `finish()` waits for it and parses its output."""
    log_file = Path(tempfile.mkstemp(prefix="h2load-", suffix=".log")[1])
    cmd = command(
        binary,
        url,
        body_file,
        clients=clients,
        streams=streams,
        duration_s=duration_s,
        rps_per_client=rps_per_client,
        log_file=log_file,
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, log_file, H2Result(clients, streams, rps_per_client, duration_s)


def finish(proc: subprocess.Popen, log_file: Path, result: H2Result, timeout_s: float) -> H2Result:
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    result.returncode = proc.returncode
    result.output = output
    parse(output, result)
    try:
        result.latencies_us, _bad = read_log(log_file)
    finally:
        log_file.unlink(missing_ok=True)
    return result

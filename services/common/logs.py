"""JSON logs, one object per line, with the request id of the RPC being served.

Privacy rule (DESIGN.md): no raw prompt or completion text in logs, ever. Log
call sites pass identifiers, sizes and decisions in `extra`, never content; a
test greps the log bytes of real processes for the text it sent.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

#: Request id of the RPC being served (set by the server interceptor).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, region: str) -> None:
        super().__init__()
        self._static = {"service": service, "region": region}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(service: str, region: str, level: str = "INFO") -> None:
    """Route all logging to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, region))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka and grpc are chatty at INFO about reconnects we already report.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))

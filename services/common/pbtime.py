"""Protobuf timestamps and durations from the two clocks the services keep: Unix seconds (floats,
`time.time()`) and aware datetimes (PostgreSQL rows). One helper for every service."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2


def timestamp(when: float | datetime) -> timestamp_pb2.Timestamp:
    """`when` as a `google.protobuf.Timestamp` (a datetime must be timezone-aware or UTC)."""
    ts = timestamp_pb2.Timestamp()
    if isinstance(when, datetime):
        ts.FromDatetime(when)
    else:
        ts.FromNanoseconds(int(when * 1e9))
    return ts


def duration(seconds: float) -> duration_pb2.Duration:
    """`seconds` as a `google.protobuf.Duration`."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d

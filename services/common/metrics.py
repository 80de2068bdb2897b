"""Prometheus metrics: a registry per server object, RED metrics per RPC, and the
/metrics HTTP endpoint.

Label values are bounded: RPC names, status codes, and names from configuration,
never request content. `BoundedLabels` caps label sets that come from
configuration so a careless config cannot explode cardinality.
"""

from __future__ import annotations

import os
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from services.common.settings import split_host_port

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class RpcMetrics:
    """RED metrics per RPC, named like go-grpc-prometheus so existing dashboards work."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            ["grpc_service", "grpc_method"],
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from RPC start to its final status.",
            ["grpc_service", "grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._methods: dict[tuple[str, str], MethodMetrics] = {}

    def method(self, service: str, method: str) -> MethodMetrics:
        """Children of one RPC, resolved once (`labels()` costs more than `inc()`)."""
        found = self._methods.get((service, method))
        if found is None:
            found = MethodMetrics(self, service, method)
            self._methods[(service, method)] = found
        return found


class MethodMetrics:
    def __init__(self, rpc: RpcMetrics, service: str, method: str) -> None:
        self.started = rpc.started.labels(service, method)
        self.latency = rpc.latency.labels(service, method)
        self._handled = rpc.handled
        self._service, self._method = service, method
        self._codes: dict[str, Counter] = {}

    def handled(self, code: str) -> Counter:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._handled.labels(self._service, self._method, code)
        return child


class BoundedLabels:
    """Maps arbitrary label values onto at most `limit` distinct ones ("_other" beyond)."""

    OVERFLOW = "_other"

    def __init__(self, limit: int = 200) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return self.OVERFLOW


def new_registry() -> CollectorRegistry:
    """A per-server registry; in multi-process mode, values go to the shared dir."""
    return CollectorRegistry(auto_describe=True)


def serve_http(registry: CollectorRegistry, address: str):
    """Start /metrics on `address` in a background thread; returns (httpd, thread)."""
    host, port = split_host_port(address)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        registry = merged
    return start_http_server(port, addr=host, registry=registry)

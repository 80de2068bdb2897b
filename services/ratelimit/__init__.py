"""The rate-limit service: a drop-in for envoyproxy/ratelimit (Envoy's RateLimitService,
its YAML config format in config.py) plus concurrency leases. limiter.py decides from
the config and a store; store.py is Redis (standalone or Cluster) with pipelined Lua
scripts (lua/); cache.py keeps recent over-limit answers; server.py is the gRPC surface
only; the backends are chosen in __main__.py."""

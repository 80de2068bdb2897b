"""The runtime every service shares, and nothing service-specific: settings and flag
parsing, the gRPC server bootstrap (health, reflection, metrics, JSON logs, TLS, drain),
inter-service clients (deadline budgets, retries, the circuit breaker, load balancing),
the Kafka publisher with its on-disk spool and transport security, topic names, reloading
configuration files, the regional HMAC key, caller -> tenant bindings and tracing. It
imports no service."""

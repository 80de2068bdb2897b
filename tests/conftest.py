"""Session-wide test settings, applied before any test module imports grpc."""

import os

# tests.support starts services with fork + preexec_fn (PR_SET_PDEATHSIG). With gRPC's
# fork support on (its default), a fork while this process has busy channels can let
# gRPC's post-fork handler close a descriptor the child has just reused for its stdout,
# so the child's "listening on" line never arrives.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# Enforcers and monitors the tests start sign and verify enforcement actions with the
# public DEVELOPMENT key (services.actions.records.DEV_KEY) unless a test gives keys;
# a production start without keys is refused (tests/unit/actions/test_records.py).
os.environ.setdefault("ENFORCER_INSECURE_DEV_ACTION_KEY", "true")
os.environ.setdefault("MONITOR_INSECURE_DEV_ACTION_KEY", "true")

# Property tests check what holds, not how fast: hypothesis's per-example deadline
# (200 ms) fails at random on a loaded 2-core CI machine. Timing belongs in bench/.
from hypothesis import settings  # noqa: E402

settings.register_profile("mesh", deadline=None)
settings.load_profile("mesh")

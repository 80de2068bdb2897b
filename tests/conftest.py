"""Session-wide test settings, applied before any test module imports grpc."""

import os

# tests.support starts services with fork + preexec_fn (PR_SET_PDEATHSIG). With gRPC's
# fork support on (its default), a fork while this process has busy channels can let
# gRPC's post-fork handler close a descriptor the child has just reused for its stdout,
# so the child's "listening on" line never arrives.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# Property tests check what holds, not how fast: hypothesis's per-example deadline
# (200 ms) fails at random on a loaded 2-core CI machine. Timing belongs in bench/.
from hypothesis import settings  # noqa: E402

settings.register_profile("mesh", deadline=None)
settings.load_profile("mesh")

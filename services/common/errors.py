"""Domain exceptions that carry a gRPC status *name*, not a grpc import.

Domain modules raise these; one server interceptor maps them to gRPC status codes
(kserve style), so domain code stays protocol-free and unit-testable.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error a caller should see, with the gRPC status code name to report."""

    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    code = "UNAVAILABLE"


class PermissionDenied(ServiceError):
    code = "PERMISSION_DENIED"


class Unauthenticated(ServiceError):
    """No credentials, or credentials that identify nobody."""

    code = "UNAUTHENTICATED"


class DeadlineExceeded(ServiceError):
    code = "DEADLINE_EXCEEDED"


class WouldMissDeadline(DeadlineExceeded):
    """Refused before any work was done: the answer was predicted to come after the
    caller's deadline (the message states predicted vs remaining time).  Callers that
    can answer otherwise (a cascade's earlier stage) tell it from a deadline that
    passed mid-way by this type; on the wire it is DEADLINE_EXCEEDED."""


class ConfigError(ValueError):
    """A configuration file or setting is invalid; the message says where and why."""

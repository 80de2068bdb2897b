"""Transport security for servers and the inter-service clients: TLS, mutual
TLS, and the caller's verified identity (certificate SANs) for authorisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.common import tracing


@dataclass(frozen=True)
class CallerIdentity:
    """Who is calling, as proven by the transport (empty for plaintext / no client cert)."""

    sans: tuple[str, ...] = ()
    common_name: str = ""
    transport: str = "insecure"

    @property
    def verified(self) -> bool:
        return bool(self.sans or self.common_name)


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, clients must present a certificate chaining to it."""
    return grpc.ssl_server_credentials(
        [(_read(key_file), _read(cert_file))],
        root_certificates=_read(client_ca_file) if client_ca_file else None,
        require_client_auth=bool(client_ca_file),
    )


def caller_identity(context: grpc.aio.ServicerContext) -> CallerIdentity:
    """Read the verified peer identity from the call's auth context."""
    auth = context.auth_context() or {}
    sans = tuple(v.decode() for v in auth.get("x509_subject_alternative_name", []))
    cn = b"".join(auth.get("x509_common_name", [])).decode()
    transport = b"".join(auth.get("transport_security_type", [b"insecure"])).decode()
    return CallerIdentity(sans=sans, common_name=cn, transport=transport)


@dataclass(frozen=True)
class ClientTLS:
    """How one service dials another: plaintext only when chosen explicitly."""

    plaintext: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    extra_options: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file) if self.ca_file else None,
            private_key=_read(self.key_file) if self.key_file else None,
            certificate_chain=_read(self.cert_file) if self.cert_file else None,
        )


def secure_channel(target: str, tls: ClientTLS, options: list[tuple[str, object]] | None = None) -> grpc.aio.Channel:
    """An aio channel to another service, speaking the same transport security as servers."""
    opts = list(options or []) + list(tls.extra_options)
    interceptors = tracing.client_interceptors()  # trace context onward, when tracing is on
    if tls.plaintext:
        return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
    if tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(target, tls.credentials(), options=opts, interceptors=interceptors)

"""`python -m services.common.healthcheck HOST:PORT [SERVICE]`: exit 0 when the
server's grpc.health.v1 status is SERVING (for container healthchecks; no extra
binary such as grpc_health_probe needed in the image). Against a server that requires
mutual TLS, give --ca-file, --cert-file and --key-file (or probe the plaintext
health-only listener, --health-listen, as deploy/k8s/components/mtls does)."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import ArgumentParser
from services.common.tls import ClientTLS


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m services.common.healthcheck", description=__doc__)
    parser.add_argument("address", help="HOST:PORT of the gRPC server")
    parser.add_argument("service", nargs="?", default="", help="service name ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    parser.add_argument("--ca-file", default="", help="PEM CA to verify a TLS server; plaintext when not given")
    parser.add_argument("--cert-file", default="", help="PEM client certificate, for a server that requires mutual TLS")
    parser.add_argument("--key-file", default="", help="PEM private key of --cert-file")
    parser.add_argument(
        "--server-name", default="", help="name to verify the server certificate against (default: the host)"
    )
    ns = parser.parse_args(argv)
    if ns.ca_file:
        tls = ClientTLS(ca_file=ns.ca_file, cert_file=ns.cert_file, key_file=ns.key_file)
        options = [("grpc.ssl_target_name_override", ns.server_name)] if ns.server_name else []
        channel = grpc.secure_channel(ns.address, tls.credentials(), options=options)
    else:
        channel = grpc.insecure_channel(ns.address)
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=ns.service), timeout=ns.timeout
        )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())

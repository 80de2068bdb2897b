"""Identities nobody can claim (issue 15): with mutual TLS, the enforcer serves a caller
only for the tenants its certificate is bound to (--caller-tenants-file), on every API
that names a tenant: ScreenPrompt, ScreenCompletion, ext_authz Check and ext_proc. Real
processes, real certificates (tests/certs.py), real gRPC over TLS."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as ac
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from safeguards.v1 import safeguards_pb2 as pb
from safeguards.v1 import safeguards_pb2_grpc

from tests.certs import Pki
from tests.e2e.meshes import REGION, enforcer_mesh

GATEWAY = "spiffe://mesh.test/gateway"
PARTNER = "spiffe://partner-a.test/gateway"
STRANGER = "spiffe://stranger.test/gateway"


def bindings(partner_tenants: list[str]) -> str:
    return json.dumps({"callers": {GATEWAY: ["*"], PARTNER: partner_tenants}})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("callers")
    pki = Pki(tmp)
    cert, key = pki.server()
    callers = tmp / "callers.yaml"
    callers.write_text(bindings(["acme"]))
    args = [
        "--no-plaintext", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-client-ca-file", str(pki.ca_file), "--caller-tenants-file", str(callers),
        "--policy-poll-seconds", "0.2",
    ]  # fmt: skip
    with enforcer_mesh(tmp, args) as m:
        m["pki"], m["callers"] = pki, callers
        yield m


def channel(mesh, name: str, uri: str) -> grpc.Channel:
    c, k = mesh["pki"].client(name, uri)
    creds = grpc.ssl_channel_credentials(
        root_certificates=mesh["pki"].ca_file.read_bytes(), private_key=k.read_bytes(), certificate_chain=c.read_bytes()
    )
    return grpc.secure_channel(f"localhost:{mesh['enforcer'].port}", creds)


def screen(ch: grpc.Channel, tenant: str) -> pb.ScreenPromptResponse:
    return safeguards_pb2_grpc.SafeguardsServiceStub(ch).ScreenPrompt(
        pb.ScreenPromptRequest(
            context=pb.RequestContext(tenant=tenant, account="acct-1", region=REGION, request_id="r1"),
            messages=[pb.ChatMessage(role="user", content="What is the capital of France?")],
        ),
        timeout=10,
    )


def denied(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "acme" not in err.value.details() and "other" not in err.value.details()
    return err.value


def test_a_caller_speaks_only_for_its_bound_tenants(mesh) -> None:
    with channel(mesh, "partner", PARTNER) as ch:
        assert screen(ch, "acme").decision.decision_id
        denied(lambda: screen(ch, "other-tenant"))
    with channel(mesh, "gateway", GATEWAY) as ch:
        assert screen(ch, "acme").decision.decision_id
        assert screen(ch, "other-tenant").decision.decision_id
    with channel(mesh, "stranger", STRANGER) as ch:  # a valid certificate, bound to nothing
        denied(lambda: screen(ch, "acme"))


def test_the_completion_stream_checks_the_binding_too(mesh) -> None:
    def stream(tenant: str):
        with channel(mesh, "partner", PARTNER) as ch:
            reqs = [
                pb.ScreenCompletionRequest(
                    start=pb.CompletionStart(context=pb.RequestContext(tenant=tenant, region=REGION))
                ),
                pb.ScreenCompletionRequest(chunk="Paris is the capital."),
            ]
            return list(safeguards_pb2_grpc.SafeguardsServiceStub(ch).ScreenCompletion(iter(reqs), timeout=10))

    assert stream("acme")[-1].decision.decision_id
    denied(lambda: stream("other-tenant"))


def test_envoy_apis_refuse_a_header_naming_a_tenant_the_caller_is_not_bound_to(mesh) -> None:
    body = json.dumps({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).encode()

    def check(tenant: str) -> ea.CheckResponse:
        hdrs = {"content-type": "application/json", "x-safeguards-tenant": tenant, "x-request-id": uuid.uuid4().hex}
        http = ac.AttributeContext.HttpRequest(
            id="e", method="POST", path="/v1/messages", host="api", headers=hdrs, raw_body=body
        )
        with channel(mesh, "partner", PARTNER) as ch:
            req = ea.CheckRequest(attributes=ac.AttributeContext(request=ac.AttributeContext.Request(http=http)))
            return ea_grpc.AuthorizationStub(ch).Check(req, timeout=10)

    assert check("acme").HasField("ok_response")
    refused = check("other-tenant")
    assert refused.denied_response.status.code == 403

    def process(tenant: str) -> list[ep.ProcessingResponse]:
        headers = base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=k, raw_value=v.encode())
                for k, v in {
                    ":method": "POST", ":path": "/v1/messages", "content-type": "application/json",
                    "x-safeguards-tenant": tenant,
                }.items()
            ]
        )  # fmt: skip
        msgs = [
            ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=headers)),
            ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True)),
        ]
        with channel(mesh, "partner", PARTNER) as ch:
            return list(ep_grpc.ExternalProcessorStub(ch).Process(iter(msgs), timeout=10))

    assert not process("acme")[-1].HasField("immediate_response")
    assert process("other-tenant")[-1].immediate_response.status.code == 403


def test_a_changed_binding_applies_without_a_restart(mesh) -> None:
    with channel(mesh, "partner", PARTNER) as ch:
        denied(lambda: screen(ch, "acme-eu"))
        mesh["callers"].write_text(bindings(["acme", "acme-eu"]))
        deadline = time.monotonic() + 15
        while True:
            try:
                assert screen(ch, "acme-eu").decision.decision_id
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
                assert time.monotonic() < deadline, "the new binding was never loaded"
                time.sleep(0.2)
    mesh["callers"].write_text(bindings(["acme"]))

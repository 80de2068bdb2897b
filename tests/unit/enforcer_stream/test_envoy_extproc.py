"""The example Envoy config wires ext_proc the way the enforcer expects: request
body BUFFERED, response body STREAMED, fail closed, after ext_authz, off for file
uploads (parsed with Envoy's own protos from xds-protos)."""

from __future__ import annotations

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from tests.support import ROOT
from tests.unit.enforcer_envoy.test_envoy_config import import_types

Mode = processing_mode_pb2.ProcessingMode


def test_ext_proc_filter_streams_responses_through_the_enforcer() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "envoy" / "envoy.yaml").read_text())
    import_types(doc)
    boot = json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())
    hcm = hcm_pb2.HttpConnectionManager()
    assert boot.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    names = [f.name for f in hcm.http_filters]
    assert names.index("envoy.filters.http.ext_authz") < names.index("envoy.filters.http.ext_proc")
    proc = ext_proc_pb2.ExternalProcessor()
    assert hcm.http_filters[names.index("envoy.filters.http.ext_proc")].typed_config.Unpack(proc)
    assert proc.grpc_service.envoy_grpc.cluster_name == "safeguards_enforcer" and not proc.failure_mode_allow
    m = proc.processing_mode
    assert m.request_body_mode == Mode.BUFFERED and m.response_body_mode == Mode.STREAMED
    assert m.request_header_mode == Mode.SEND and m.response_header_mode == Mode.SEND
    files = hcm.route_config.virtual_hosts[0].routes[0]
    per_route = ext_proc_pb2.ExtProcPerRoute()
    assert files.typed_per_filter_config["envoy.filters.http.ext_proc"].Unpack(per_route) and per_route.disabled

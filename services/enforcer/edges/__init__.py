"""The enforcer's edges: the protocols its callers speak, converted to and from the
core's request types (services/enforcer/requests.py) and nothing more.

- `server`: the native SafeguardsService (ScreenPrompt, ScreenCompletion) and the
  bindings of every edge;
- `authz`: Envoy's ext_authz (prompt screening before the request reaches the model);
- `extproc`: Envoy's ext_proc (prompt and streamed completion in the request path);
- `bodies`: provider HTTP bodies (Anthropic Messages, OpenAI Chat Completions): parsing,
  rewriting, and the one decision -> HTTP answer mapping both Envoy APIs use;
- `sse`: server-sent events and the providers' streaming formats.

No policy here: what to decide is the core's (screening.py, streaming.py); an edge
passes identity, caller and text in and writes the decision out in its protocol.
"""

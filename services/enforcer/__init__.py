"""The enforcer: the decision on every request. The core is protocol-free:
requests.py (the canonical types), screening.py (the prompt path), streaming.py (the
completion path), scorer.py (tier-0 detectors + the classifier under one budget),
recorder.py (metrics, the one signal, the background re-screen, the log line),
decision.py (policy rules, pure), policy.py, shadow.py (candidate policies), retro.py
(re-screening partial verdicts), upstream.py (classifier and rate-limit callers),
signals.py (what a signal may hold under each data policy), state.py (the decision
path's view of the enforcement actions), detectors/ (tier 0). The edges/ package speaks
the protocols (our gRPC API, Envoy's ext_authz and ext_proc); admin.py is the admin
API's servicer and CLI over services.actions."""

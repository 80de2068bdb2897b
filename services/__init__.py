"""Safeguards Mesh's services, one package each (classifier, ratelimit, enforcer,
monitor), plus what they share: `services.common` (runtime every service uses) and
`services.actions` (the enforcement-action contract). A service imports those two and the
generated protos, never another service (tests/test_imports.py enforces it); the
architecture is in docs/ARCHITECTURE.md."""

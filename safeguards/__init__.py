"""Safeguards Mesh command-line client (`python -m safeguards`, or `safeguards` in the
venv): screens prompts and completions, checks rate limits, lists models, manages
enforcement actions and reads review cases, over the services' public gRPC APIs only.

The generated protobuf code is the package `safeguards.v1` under gen/; this folder
and gen/safeguards are one package (extend_path), so `safeguards.v1` keeps importing
wherever this client is on the path before gen/.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

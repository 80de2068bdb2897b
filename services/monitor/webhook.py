"""The alert webhook: one JSON POST per notification, in the shape of Alertmanager's
webhook payload (version 4) so receivers written for Alertmanager (PagerDuty and
Opsgenie bridges, chat relays) take it as is.

Each POST has a timeout and is retried (tenacity, exponential backoff with jitter)
on a connection error, a timeout, 408, 429 or 5xx; a redirect or another 4xx is a
permanent rejection (`WebhookRejected`), which the outbox records instead of
retrying forever. `Idempotency-Key` and the body's `notificationId` carry the
notification id receivers dedupe by. With a secret, either
`X-Safeguards-Signature: sha256=<hex HMAC-SHA256 of the body>` (default) or
`Authorization: Bearer <secret>`. The URL is never logged (it may hold a token).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import urllib.error
import urllib.request
from datetime import UTC
from pathlib import Path
from urllib.parse import urlsplit

from safeguards.v1 import alerts_pb2
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from services.common.errors import ConfigError

A = alerts_pb2
RECEIVER = "safeguards-monitor"
SIGNATURE_HEADER = "X-Safeguards-Signature"
#: Alertmanager's "not resolved yet" endsAt.
ZERO_TIME = "0001-01-01T00:00:00Z"
#: AlertKind -> (alertname, label naming the subject)
NAMES = {
    A.ALERT_KIND_TENANT_BLOCK_RATE: ("SafeguardsTenantBlockRateSpike", "tenant"),
    A.ALERT_KIND_CATEGORY_VOLUME: ("SafeguardsCategoryVolumeSpike", "category"),
    A.ALERT_KIND_DEPENDENCY_DEGRADED: ("SafeguardsDependencyDegraded", "dependency"),
    A.ALERT_KIND_CONSUMER_LAG: ("SafeguardsConsumerLag", "consumer_group"),
    A.ALERT_KIND_CONSUMER_STUCK: ("SafeguardsConsumerStuck", "consumer_group"),
    A.ALERT_KIND_DEAD_LETTERS: ("SafeguardsDeadLetters", "region"),
}


def runbook_url(kind: int) -> str:
    """The alert kind's runbook, relative to the repository root (as the Prometheus
    alerts' runbook_url in deploy/prometheus/rules)."""
    name = A.AlertKind.Name(kind).removeprefix("ALERT_KIND_").lower().replace("_", "-")
    return f"docs/runbooks/monitor-{name}.md"


class WebhookUnavailable(Exception):
    """Worth retrying: no answer, a timeout, 408, 429 or 5xx."""


class WebhookRejected(Exception):
    """The receiver refused the notification for good (a redirect or a 4xx)."""


def _iso(ts) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def webhook_payload(rec: alerts_pb2.Alert) -> bytes:
    """The notification as an Alertmanager webhook body (one alert per POST)."""
    name, subject_label = NAMES[rec.kind]
    status = "resolved" if rec.status == A.ALERT_STATUS_RESOLVED else "firing"
    labels = {
        "alertname": name,
        "region": rec.region,
        "severity": A.AlertSeverity.Name(rec.severity).removeprefix("ALERT_SEVERITY_").lower(),
        subject_label: rec.subject,
    }
    annotations = {
        "summary": rec.summary,
        "value": f"{rec.value:g}",
        "baseline": f"{rec.baseline:g}",
        "runbook_url": runbook_url(rec.kind),
    }
    body = {
        "version": "4",
        "receiver": RECEIVER,
        "status": status,
        "groupKey": rec.fingerprint,
        "truncatedAlerts": 0,
        "notificationId": rec.notification_id,
        "groupLabels": {"alertname": name},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": _iso(rec.starts_at),
                "endsAt": _iso(rec.ends_at) if rec.HasField("ends_at") else ZERO_TIME,
                "generatorURL": "",
                "fingerprint": rec.fingerprint,
                "alertId": rec.alert_id,
            }
        ],
    }
    return json.dumps(body, sort_keys=True).encode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913
        return None  # urllib then raises HTTPError with the 3xx code


class Webhook:
    def __init__(self, url: str, *, secret: str = "", auth: str = "hmac", timeout_s: float = 5.0, retries: int = 2):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("--alert-webhook-url must be an http:// or https:// URL with a host")
        if auth not in ("hmac", "bearer"):
            raise ConfigError("--alert-webhook-auth must be hmac or bearer")
        self.url = url
        self.host = parts.hostname
        self.secret = secret
        self.auth = auth
        self.timeout_s = timeout_s
        self.retries = retries
        self._opener = urllib.request.build_opener(_NoRedirect)

    @classmethod
    def from_settings(cls, url: str, secret_file: str, auth: str, timeout_s: float, retries: int) -> Webhook | None:
        if not url:
            if secret_file:
                raise ConfigError("--alert-webhook-secret-file needs --alert-webhook-url")
            return None
        secret = ""
        if secret_file:
            try:
                secret = Path(secret_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"--alert-webhook-secret-file: cannot read: {exc.strerror}") from None
            if not secret:
                raise ConfigError("--alert-webhook-secret-file is empty")
        return cls(url, secret=secret, auth=auth, timeout_s=timeout_s, retries=retries)

    def headers(self, body: bytes, notification_id: str) -> dict[str, str]:
        h = {"Content-Type": "application/json", "User-Agent": RECEIVER, "Idempotency-Key": notification_id}
        if self.secret and self.auth == "bearer":
            h["Authorization"] = f"Bearer {self.secret}"
        elif self.secret:
            h[SIGNATURE_HEADER] = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return h

    async def post(self, body: bytes, notification_id: str) -> None:
        """POST with retries; raises WebhookUnavailable after the last attempt, or WebhookRejected."""
        headers = self.headers(body, notification_id)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
            retry=retry_if_exception_type(WebhookUnavailable),
            reraise=True,
        ):
            with attempt:
                await asyncio.to_thread(self._post_once, body, headers)

    def _post_once(self, body: bytes, headers: dict[str, str]) -> None:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as resp:
                resp.read(64 * 1024)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in (408, 429) or exc.code >= 500:
                raise WebhookUnavailable(f"{self.host} answered HTTP {exc.code}") from None
            raise WebhookRejected(f"{self.host} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise WebhookUnavailable(f"{self.host}: {type(exc).__name__}") from None

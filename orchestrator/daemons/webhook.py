"""The watcher's webhook: a JSON POST per rollback or alert, sent so that it can neither delay a rollback
nor be turned against the device.

Sent from a background thread; at most ``ATTEMPTS`` tries with a doubling pause; redirects are not
followed (a redirect is a failed try: the body would go somewhere nobody configured); at most
``MAX_RESPONSE_BYTES`` of the answer is read. With ``ORCH_WEBHOOK_SECRET`` (or ``_FILE``) set, the
body is signed: ``X-Orchestrator-Signature: sha256=<hex HMAC-SHA256 of the body>``, as GitHub's
webhooks do, so the receiver can tell the device's messages from anyone else's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

log = logging.getLogger(__name__)

ENV_SECRET = "ORCH_WEBHOOK_SECRET"
ENV_SECRET_FILE = "ORCH_WEBHOOK_SECRET_FILE"
SIGNATURE_HEADER = "X-Orchestrator-Signature"
ATTEMPTS = 3
FIRST_PAUSE_S = 1.0
TIMEOUT_S = 5.0
MAX_RESPONSE_BYTES = 64 << 10


def secret_from_environment() -> bytes | None:
    if os.environ.get(ENV_SECRET):
        return os.environ[ENV_SECRET].encode()
    path = os.environ.get(ENV_SECRET_FILE)
    if path:
        try:
            return Path(path).read_text().strip().encode() or None
        except OSError as exc:
            log.error("webhook secret file %s unreadable (%s): sending unsigned", path, exc.strerror)
    return None


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def deliver(url: str, payload: dict[str, object], secret: bytes | None = None, attempts: int = ATTEMPTS,
            first_pause_s: float = FIRST_PAUSE_S, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Whether the receiver answered 2xx within ``attempts`` tries."""
    body = json.dumps(payload, default=str, sort_keys=True).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    pause = first_pause_s
    for attempt in range(1, attempts + 1):
        try:
            with requests.post(url, data=body, headers=headers, timeout=TIMEOUT_S, allow_redirects=False,
                               stream=True) as response:
                response.raw.read(MAX_RESPONSE_BYTES, decode_content=True)  # the rest is never read
                if 200 <= response.status_code < 300:
                    return True
                why = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            why = str(exc)
        log.warning("webhook %s failed (try %d of %d): %s", url, attempt, attempts, why)
        if attempt < attempts:
            sleep(pause)
            pause *= 2
    return False


def notify(url: str | None, payload: dict[str, object]) -> None:
    """Fire and forget: a slow or absent receiver never delays the watcher."""
    if not url:
        return
    threading.Thread(target=deliver, args=(url, payload, secret_from_environment()), daemon=True).start()

"""Webhooks: signed event deliveries to client endpoints, and the helper clients verify with.

`amnex.webhooks.verify(payload, headers, secret)` checks a delivery the way the Standard
Webhooks reference library does and returns its JSON body.
"""

from __future__ import annotations

from amnex.webhooks.signing import WebhookVerificationError, sign, verify

__all__ = ["WebhookVerificationError", "sign", "verify"]

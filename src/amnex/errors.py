"""Errors: the tree every stage raises from, with stable codes and HTTP statuses.

    AmnexError                      code            status
    ├── InvalidRequest              invalid_request  400   (malformed JSON, wrong types, ...)
    │   ├── PayloadTooLarge         payload_too_large 413
    │   ├── UnsupportedMediaType    unsupported_media_type 415
    │   ├── ReasonRequired          reason_required   400  (an operator read without X-Amnex-Reason)
    │   └── ValidationFailed        validation_failed 422  (field-level detail in `errors`)
    │       ├── InvalidAddress      invalid_address   422
    │       ├── SenderNotAllowed    sender_not_allowed 422
    │       ├── SendAtInPast        send_at_in_past   422
    │       ├── NoRoute             no_route          422
    │       ├── ConsentEvidenceMissing consent_evidence_missing 422 (`field` names what)
    │       ├── WebhookUrlInvalid   webhook_url_invalid 422   (a webhook endpoint's URL,
    │       ├── WebhookUrlNotHttps  webhook_url_not_https 422  refused by `webhooks.ssrf`;
    │       ├── WebhookUrlUnresolvable webhook_url_unresolvable 422  `field` is "url")
    │       └── WebhookUrlUnsafe    webhook_url_unsafe 422 (carries the guard's `reason`)
    ├── AuthenticationFailed        unauthorized      401
    ├── PermissionDenied            forbidden         403
    │   └── TlsRequired             tls_required      403
    ├── NotFound                    not_found         404
    ├── Conflict                    conflict          409
    │   ├── IdempotencyKeyReused    idempotency_key_reused 409
    │   ├── InvalidTransition       invalid_status_transition 409
    │   └── ConsentConflictsWithOptOut consent_conflicts_with_opt_out 409
    ├── ComplianceRejected          compliance_rejected 422 (carries `rule`; one subclass per
    │                                rule code: recipient_opted_out, consent_required, ...)
    ├── RateLimited                 rate_limited      429  (carries retry_after_s)
    │   ├── DailyCapReached         daily_cap_reached 429  (the account's `daily_cap`)
    │   ├── VelocityLimited         velocity_limited  429  (`prefix_velocity_per_minute`)
    │   └── AccountBacklogFull      account_backlog_full 429 (`max_account_backlog`)
    └── ServiceUnavailable          service_unavailable 503 (carries retry_after_s)
        ├── DatabaseUnavailable     database_unavailable 503
        ├── QueueFull               queue_full         503  (`max_queue_depth`)
        ├── ConnectorBacklogFull    connector_backlog_full 503 (`max_connector_backlog`)
        ├── MasterKeyMissing        master_key_missing 503  (secrets cannot be sealed)
        └── KeysUnavailable         keys_unavailable   503  (address keys not loaded yet)

Delivery errors raised by channels are a separate family (`channels.base`): they never reach
an HTTP client, they decide retries.

Every error renders as RFC 9457 problem+json by `api.problems`; the table of codes lives in
`docs/api.md` and is checked against this module by a test.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AmnexError(Exception):
    """Base of every error with a stable code an API client can rely on."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra: dict[str, Any] = extra


class InvalidRequest(AmnexError):
    code = "invalid_request"
    status = 400
    title = "The request is malformed"


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"
    status = 413
    title = "The request body is too large"


class UnsupportedMediaType(InvalidRequest):
    code = "unsupported_media_type"
    status = 415
    title = "The request body is not JSON"


class ReasonRequired(InvalidRequest):
    code = "reason_required"
    status = 400
    title = "Say why: send the X-Amnex-Reason header"


class ValidationFailed(InvalidRequest):
    code = "validation_failed"
    status = 422
    title = "The request failed validation"


class InvalidAddress(ValidationFailed):
    code = "invalid_address"
    title = "The address is not valid for this channel"


class SenderNotAllowed(ValidationFailed):
    code = "sender_not_allowed"
    title = "The account may not send from this address"


class SendAtInPast(ValidationFailed):
    code = "send_at_in_past"
    title = "send_at is in the past"


class NoRoute(ValidationFailed):
    code = "no_route"
    title = "No carrier connection can deliver this message"


class ConsentEvidenceMissing(ValidationFailed):
    code = "consent_evidence_missing"
    title = "The consent lacks the evidence its source requires"


class WebhookUrlInvalid(ValidationFailed):
    code = "webhook_url_invalid"
    title = "The webhook URL is not a valid http(s) URL"


class WebhookUrlNotHttps(ValidationFailed):
    code = "webhook_url_not_https"
    title = "Webhook URLs must use https"


class WebhookUrlUnresolvable(ValidationFailed):
    code = "webhook_url_unresolvable"
    title = "The webhook URL's host does not resolve"


class WebhookUrlUnsafe(ValidationFailed):
    code = "webhook_url_unsafe"
    title = "The webhook URL points to an address webhooks may not be sent to"


class AuthenticationFailed(AmnexError):
    code = "unauthorized"
    status = 401
    title = "Missing, invalid or revoked credentials"


class PermissionDenied(AmnexError):
    code = "forbidden"
    status = 403
    title = "The credentials do not allow this action"


class TlsRequired(PermissionDenied):
    code = "tls_required"
    title = "Credentials must be sent over HTTPS"


class NotFound(AmnexError):
    code = "not_found"
    status = 404
    title = "No such resource"


class Conflict(AmnexError):
    code = "conflict"
    status = 409
    title = "The request conflicts with the resource's state"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"
    title = "The Idempotency-Key was used with a different request"


class InvalidTransition(Conflict):
    code = "invalid_status_transition"
    title = "The message cannot move to that status"


class ConsentConflictsWithOptOut(Conflict):
    code = "consent_conflicts_with_opt_out"
    title = "The address is on the suppression list"


class ComplianceRejected(AmnexError):
    """A compliance rule refused the message (`compliance.gate`); nothing was stored.

    One subclass per rule code; `for_code` finds it. The problem carries the rule's name.
    """

    code = "compliance_rejected"
    status = 422
    title = "A compliance rule refused the message"
    _by_code: ClassVar[dict[str, type[ComplianceRejected]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ComplianceRejected._by_code[cls.code] = cls

    @classmethod
    def for_code(cls, code: str, detail: str, *, rule: str) -> ComplianceRejected:
        return cls._by_code.get(code, cls)(detail, rule=rule)


class NumberTypeNotAllowed(ComplianceRejected):
    code = "number_type_not_allowed"
    title = "The destination cannot or may not receive SMS"


class DestinationCountryNotAllowed(ComplianceRejected):
    code = "destination_country_not_allowed"
    title = "The account may not send to this country"


class DestinationBlocked(ComplianceRejected):
    code = "destination_blocked"
    title = "The destination is blocked on this platform"


class RecipientOptedOut(ComplianceRejected):
    code = "recipient_opted_out"
    title = "The recipient opted out"


class ConsentRequired(ComplianceRejected):
    code = "consent_required"
    title = "Marketing needs the recipient's consent"


class ContentForbidden(ComplianceRejected):
    code = "content_forbidden"
    title = "The content is not allowed"


class LinkShortenerBlocked(ComplianceRejected):
    code = "link_shortener_blocked"
    title = "Public link shorteners are blocked"


class SenderIdentificationMissing(ComplianceRejected):
    code = "sender_identification_missing"
    title = "A first marketing SMS must name the sender"


class OptOutLanguageMissing(ComplianceRejected):
    code = "opt_out_language_missing"
    title = "A first marketing SMS must say how to opt out"


class PostalAddressMissing(ComplianceRejected):
    code = "postal_address_missing"
    title = "Marketing email must carry a postal address"


class UnsubscribeLinkMissing(ComplianceRejected):
    code = "unsubscribe_link_missing"
    title = "Marketing email must carry an unsubscribe link"


class NoSendingWindow(ComplianceRejected):
    code = "no_sending_window"
    title = "Quiet hours leave no time to send"


class RateLimited(AmnexError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str | None = None, *, retry_after_s: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after_s = retry_after_s


class DailyCapReached(RateLimited):
    code = "daily_cap_reached"
    title = "The account's daily sending cap is reached"


class VelocityLimited(RateLimited):
    code = "velocity_limited"
    title = "Too many messages to this destination prefix"


class AccountBacklogFull(RateLimited):
    code = "account_backlog_full"
    title = "The account has too many messages waiting to be sent"


class ServiceUnavailable(AmnexError):
    code = "service_unavailable"
    status = 503
    title = "The service is briefly unavailable"

    def __init__(self, detail: str | None = None, *, retry_after_s: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after_s = retry_after_s


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    title = "The database is briefly unavailable"


class QueueFull(ServiceUnavailable):
    code = "queue_full"
    title = "Too many messages are waiting to be sent"


class ConnectorBacklogFull(ServiceUnavailable):
    code = "connector_backlog_full"
    title = "Too many messages are waiting for this message's carrier connection"


class MasterKeyMissing(ServiceUnavailable):
    code = "master_key_missing"
    title = "No master key is configured, so secrets cannot be stored"


class KeysUnavailable(ServiceUnavailable):
    code = "keys_unavailable"
    title = "The keys that protect personal data are not loaded yet"


def all_error_classes() -> list[type[AmnexError]]:
    """Every error class in the tree, base first (for docs and the code-table test)."""
    found: list[type[AmnexError]] = []
    pending: list[type[AmnexError]] = [AmnexError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found

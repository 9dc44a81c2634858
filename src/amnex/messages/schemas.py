"""Messages: the API's request and response shapes for messages and their events."""

from __future__ import annotations

import json
import math
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl, field_validator

Channel = Literal["email", "sms", "mms", "push"]
Category = Literal["transactional", "marketing"]

METADATA_MAX_KEYS = 50
METADATA_MAX_BYTES = 4096
MetadataValue = str | int | float | bool | None


def _is_unicode_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class SendMessageRequest(BaseModel):
    """Body of `POST /v1/messages`."""

    # No populate_by_name: the field is `from` on the wire, and `from_` is an unknown field.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    channel: Channel
    to: str = Field(min_length=1, max_length=320)
    from_: str | None = Field(None, alias="from", min_length=1, max_length=400)
    subject: str | None = Field(None, max_length=998)
    body: str | None = Field(None, max_length=262_144)
    html: str | None = Field(None, max_length=524_288)
    send_at: AwareDatetime | None = None
    validity_period_s: int | None = Field(None, ge=1, le=30 * 86_400)
    category: Category = "transactional"
    status_callback: HttpUrl | None = None
    metadata: dict[str, MetadataValue] | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _flat_metadata(cls, value: Any) -> Any:
        """One precise error for a nested value (not one per member of the value union); no
        NaN or Infinity and no lone surrogates (`"\\ud800"`): Python's JSON parser accepts them,
        the database cannot store them."""
        if isinstance(value, dict):
            for key, item in value.items():
                if item is not None and not isinstance(item, str | int | float | bool):
                    raise ValueError(f"{key!r}: values are strings, numbers, booleans or null")
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(f"{key!r}: numbers must be finite")
                for text in (key, item):
                    if isinstance(text, str) and not _is_unicode_text(text):
                        raise ValueError("keys and values must be valid Unicode text")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(
        cls, value: dict[str, MetadataValue] | None
    ) -> dict[str, MetadataValue] | None:
        if value is None:
            return None
        if len(value) > METADATA_MAX_KEYS:
            raise ValueError(f"at most {METADATA_MAX_KEYS} keys")
        if any(len(key) > 64 for key in value):
            raise ValueError("keys are at most 64 characters")
        if len(json.dumps(value, separators=(",", ":"))) > METADATA_MAX_BYTES:
            raise ValueError(f"at most {METADATA_MAX_BYTES} bytes as JSON")
        return value

    @field_validator("subject")
    @classmethod
    def _one_line_subject(cls, value: str | None) -> str | None:
        # A header cannot carry a line break; accepted, it could only ever fail at send time.
        if value is not None and ("\r" in value or "\n" in value):
            raise ValueError("a subject is one line, without CR or LF")
        return value

    @field_validator("status_callback")
    @classmethod
    def _short_callback(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is not None and len(str(value)) > 2048:
            raise ValueError("at most 2048 characters")
        return value


class MessageOut(BaseModel):
    """The message object, as DESIGN.md defines it."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    account_id: str
    channel: Channel
    direction: Literal["outbound", "inbound"]
    from_: str = Field(serialization_alias="from", validation_alias="from")
    to: str
    category: Category
    status: str
    error_code: str | None
    error_message: str | None
    provider_error_code: str | None
    segments: int | None
    encoding: str | None
    encoding_report: dict[str, list[str]] | None = Field(
        None,
        description="SMS: characters smart encoding replaced, and those that forced UCS-2.",
    )
    price: Decimal | None
    subject: str | None
    body: str | None
    html: str | None
    content_purged_at: datetime | None
    send_at: datetime | None
    expires_at: datetime | None
    status_callback: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    failed_at: datetime | None
    metadata: dict[str, Any] | None


class MessageList(BaseModel):
    data: list[MessageOut]
    next_cursor: str | None


class MessageEventOut(BaseModel):
    seq: int
    status: str
    at: datetime
    error_code: str | None
    detail: dict[str, Any] | None


class MessageEventList(BaseModel):
    data: list[MessageEventOut]

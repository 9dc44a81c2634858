"""Privacy: the records of processing — purposes, legal bases, processors, carriers, region,
contact — as configuration the operator maintains (policy §4, §6, §7, §9).

Design note. What cannot be derived from the data is the operator's to say: who the
controller is, whom to write to, which authority hears complaints, where the data is stored,
why it is processed and on what legal basis, which providers help run the service. That lives
in a TOML file named by `privacy_records_file` (`docs/privacy-records.example.toml`),
validated when it is loaded: a bad file is an error that names the file and the field, never
records served half right. What the data does say is read live, so it cannot drift from the
truth: the carriers are the connectors configured now (name, kind, and the country the file
gives for them; never credentials or host names), plus the SMTP relay, and the retention periods are
the running settings.

Without a file the records are built-in defaults: the policy's four purposes and legal bases,
and `not configured` where the operator must fill in; `missing` lists those fields, and the
privacy report names each as a finding.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, HttpUrl, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from amnex.carriers.models import Connector
from amnex.config import Settings

NOT_CONFIGURED = "not configured"

LegalBasis = Literal["contract", "legitimate_interest", "legal_obligation", "consent"]


class RecordsFileError(ValueError):
    """The records of processing file cannot be read or does not validate."""


class Purpose(BaseModel):
    """Why data is processed, and on which legal basis (policy §4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    purpose: str = Field(min_length=1, max_length=500)
    legal_basis: LegalBasis
    data: list[str] = Field(default_factory=list, description="The categories of data used.")


class Processor(BaseModel):
    """A provider that processes data on the operator's behalf (policy §6): hosting, backups,
    billing; `sub_processor_of` names the processor it works for, if any."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    purpose: str = Field(min_length=1, max_length=500)
    location: str = Field(min_length=1, max_length=200, description="Country or region.")
    sub_processor_of: str | None = Field(None, max_length=200)
    safeguards: str | None = Field(None, max_length=500)


class SupervisoryAuthority(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    url: HttpUrl


class CarrierNote(BaseModel):
    """What the file adds to a connector (by its name): where the carrier is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    country: str = Field(min_length=2, max_length=100)


# The policy's own purposes and bases (§3, §4): the default until the operator states theirs.
POLICY_PURPOSES: tuple[Purpose, ...] = (
    Purpose(
        purpose="Deliver clients' messages and report their delivery status",
        legal_basis="contract",
        data=["account data", "message metadata", "message content until delivered"],
    ),
    Purpose(
        purpose="Maintain security, prevent misuse and abuse, improve the service",
        legal_basis="legitimate_interest",
        data=["API credentials (hashed)", "message metadata", "audit log"],
    ),
    Purpose(
        purpose="Meet legal and regulatory requirements (billing records, opt-outs, consents)",
        legal_basis="legal_obligation",
        data=["message metadata", "opt-outs", "consent ledger"],
    ),
    Purpose(
        purpose="Marketing messages, where consent is required",
        legal_basis="consent",
        data=["consent ledger"],
    ),
)


class RecordsFile(BaseModel):
    """The operator's part of the records, as written in `privacy_records_file`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    controller: str = Field(min_length=1, max_length=200)
    controller_address: str | None = Field(None, max_length=500)
    privacy_contact: EmailStr
    supervisory_authority: SupervisoryAuthority
    data_regions: list[str] = Field(min_length=1, description="Where the data is stored (§7).")
    transfer_safeguards: str | None = Field(
        None, max_length=1000, description="E.g. Standard Contractual Clauses (§7)."
    )
    purposes: list[Purpose] = Field(default_factory=lambda: list(POLICY_PURPOSES), min_length=1)
    processors: list[Processor] = Field(default_factory=list)
    carriers: dict[str, CarrierNote] = Field(
        default_factory=dict, description="By connector name: where that carrier is."
    )


class Carrier(BaseModel):
    """A carrier data goes to (policy §6): a connector, or the SMTP relay."""

    name: str
    kind: str
    country: str | None
    enabled: bool


class Retention(BaseModel):
    """The running retention settings (policy §5)."""

    failed_content_s: float
    inbound_content_s: float
    metadata_days: int
    delivered_content: str = "purged at its final status (delivered, rejected, canceled)"


class Records(BaseModel):
    """The records of processing as served by the API and included in access exports."""

    configured: bool
    missing: list[str]
    controller: str
    controller_address: str | None
    privacy_contact: str
    supervisory_authority: str
    supervisory_authority_url: str | None
    right_to_complain: str
    data_regions: list[str]
    transfer_safeguards: str | None
    purposes: list[Purpose]
    processors: list[Processor]
    carriers: list[Carrier]
    retention: Retention


def load_records_file(settings: Settings) -> RecordsFile | None:
    """The operator's file, validated; None when `privacy_records_file` is unset.

    Raises `RecordsFileError` naming the file and each field at fault.
    """
    path = settings.privacy_records_file
    if path is None:
        return None
    return parse_records_file(path)


def parse_records_file(path: Path) -> RecordsFile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecordsFileError(
            f"privacy_records_file {path}: cannot be read ({exc.strerror})"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RecordsFileError(f"privacy_records_file {path}: not valid TOML ({exc})") from exc
    try:
        return RecordsFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(file)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise RecordsFileError(f"privacy_records_file {path}: {problems}") from None


async def build_records(
    session: AsyncSession, settings: Settings, operator_file: RecordsFile | None
) -> Records:
    """The records: the operator's file (or the defaults) with the live carriers and
    retention."""
    carriers = await live_carriers(session, settings, operator_file)
    retention = Retention(
        failed_content_s=settings.failed_content_retention_s,
        inbound_content_s=settings.inbound_content_retention_s,
        metadata_days=settings.metadata_retention_days,
    )
    if operator_file is None:
        return Records(
            configured=False,
            missing=missing_fields(None),
            controller=NOT_CONFIGURED,
            controller_address=None,
            privacy_contact=NOT_CONFIGURED,
            supervisory_authority=NOT_CONFIGURED,
            supervisory_authority_url=None,
            right_to_complain=_complaint_text(None),
            data_regions=[],
            transfer_safeguards=None,
            purposes=list(POLICY_PURPOSES),
            processors=[],
            carriers=carriers,
            retention=retention,
        )
    authority = operator_file.supervisory_authority
    return Records(
        configured=True,
        missing=[],
        controller=operator_file.controller,
        controller_address=operator_file.controller_address,
        privacy_contact=str(operator_file.privacy_contact),
        supervisory_authority=authority.name,
        supervisory_authority_url=str(authority.url),
        right_to_complain=_complaint_text(authority),
        data_regions=list(operator_file.data_regions),
        transfer_safeguards=operator_file.transfer_safeguards,
        purposes=list(operator_file.purposes),
        processors=list(operator_file.processors),
        carriers=carriers,
        retention=retention,
    )


def missing_fields(operator_file: RecordsFile | None) -> list[str]:
    """What the operator has yet to state (a loaded file has every required field)."""
    if operator_file is not None:
        return []
    return ["controller", "privacy_contact", "supervisory_authority", "data_regions"]


def _complaint_text(authority: SupervisoryAuthority | None) -> str:
    where = (
        f"{authority.name} ({authority.url})"
        if authority is not None
        else "a data protection authority (the operator has not named theirs: not configured)"
    )
    return f"You have the right to lodge a complaint with {where}."


async def live_carriers(
    session: AsyncSession, settings: Settings, operator_file: RecordsFile | None
) -> list[Carrier]:
    """Every connector and the SMTP relay, by name and kind with the country the file gives:
    never credentials, nor host names (every API key reads these records)."""
    notes = operator_file.carriers if operator_file is not None else {}
    rows = (
        await session.execute(
            select(Connector.name, Connector.kind, Connector.enabled).order_by(Connector.name)
        )
    ).all()
    carriers = [
        Carrier(
            name=name,
            kind=kind,
            country=notes[name].country if name in notes else None,
            enabled=enabled,
        )
        for name, kind, enabled in rows
    ]
    if settings.smtp_host:
        note = notes.get("smtp")
        carriers.append(
            Carrier(
                name="smtp",
                kind="smtp",
                country=note.country if note is not None else None,
                enabled=True,
            )
        )
    return carriers

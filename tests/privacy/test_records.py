"""Privacy: the records of processing — the operator's file, validated at start, with the live
carriers (never their credentials) and retention (policy §4, §6, §7, §9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from amnex.api.app import create_app
from amnex.config import Settings
from amnex.db.engine import Database
from amnex.privacy.records import (
    NOT_CONFIGURED,
    RecordsFileError,
    build_records,
    load_records_file,
    parse_records_file,
)
from amnex.runtime import Runtime
from support import add_smpp_route, with_master_key

pytestmark = pytest.mark.asyncio

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "privacy-records.example.toml"

MINIMAL = """
controller = "Acme Messaging"
privacy_contact = "privacy@acme.example"
data_regions = ["US (Illinois)"]
[supervisory_authority]
name = "Illinois Attorney General"
url = "https://illinoisattorneygeneral.gov/"
"""


async def test_without_a_file_the_defaults_say_what_the_operator_must_fill_in(
    base_settings: Settings, db: Database
) -> None:
    async with db.read_session() as session:
        records = await build_records(session, base_settings, load_records_file(base_settings))

    assert records.configured is False
    assert records.missing == [
        "controller",
        "privacy_contact",
        "supervisory_authority",
        "data_regions",
    ]
    assert records.privacy_contact == NOT_CONFIGURED
    assert records.controller == NOT_CONFIGURED
    assert records.supervisory_authority == NOT_CONFIGURED
    assert "not configured" in records.right_to_complain
    assert records.data_regions == []
    # The policy's own §4 purposes, one per legal basis
    assert [p.legal_basis for p in records.purposes] == [
        "contract",
        "legitimate_interest",
        "legal_obligation",
        "consent",
    ]
    assert records.retention.metadata_days == base_settings.metadata_retention_days
    assert records.retention.failed_content_s == base_settings.failed_content_retention_s


async def test_the_example_file_parses_into_complete_records(
    base_settings: Settings, db: Database
) -> None:
    settings = base_settings.model_copy(update={"privacy_records_file": EXAMPLE})

    async with db.read_session() as session:
        records = await build_records(session, settings, load_records_file(settings))

    assert records.configured is True
    assert records.missing == []
    assert records.controller == "Example Messaging Ltd"
    assert records.privacy_contact == "privacy@example.com"
    assert records.supervisory_authority == "Data Protection Commission (Ireland)"
    assert records.supervisory_authority_url == "https://www.dataprotection.ie/"
    assert "Data Protection Commission (Ireland)" in records.right_to_complain
    assert records.data_regions == ["EU (Ireland)"]
    assert records.transfer_safeguards is not None
    assert {p.legal_basis for p in records.purposes} == {
        "contract",
        "legitimate_interest",
        "legal_obligation",
        "consent",
    }
    assert [(p.name, p.sub_processor_of) for p in records.processors] == [
        ("Example Cloud", None),
        ("Example Backup", "Example Cloud"),
    ]


async def test_a_file_without_purposes_serves_the_policys_own(tmp_path: Path) -> None:
    path = tmp_path / "records.toml"
    path.write_text(MINIMAL, encoding="utf-8")

    parsed = parse_records_file(path)

    assert len(parsed.purposes) == 4
    assert parsed.processors == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            MINIMAL.replace("privacy@acme.example", "not-an-address"),
            "privacy_contact: value is not a valid email address",
        ),
        (MINIMAL + "retention_days = 3\n", "retention_days: Extra inputs are not permitted"),
        (MINIMAL.replace('data_regions = ["US (Illinois)"]', ""), "data_regions: Field required"),
        (
            MINIMAL + '[[purposes]]\npurpose = "x"\nlegal_basis = "because"\n',
            "purposes.0.legal_basis: Input should be 'contract', 'legitimate_interest'",
        ),
        ("controller = ", "not valid TOML"),
    ],
)
async def test_a_bad_file_is_a_precise_error_naming_the_file_and_the_field(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "records.toml"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(RecordsFileError) as caught:
        parse_records_file(path)

    assert str(caught.value).startswith(f"privacy_records_file {path}: ")
    assert expected in str(caught.value)


async def test_the_api_refuses_to_start_with_a_bad_or_missing_file(
    base_settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "records.toml"
    bad.write_text(MINIMAL.replace("privacy@acme.example", "nobody"), encoding="utf-8")

    for path, expected in ((bad, "privacy_contact"), (tmp_path / "absent.toml", "cannot be read")):
        settings = base_settings.model_copy(update={"privacy_records_file": path})
        runtime = Runtime.build(settings)
        try:
            with pytest.raises(RecordsFileError, match=expected):
                create_app(runtime, manage_lifecycle=False)
        finally:
            await runtime.close()


async def test_carriers_are_the_live_connectors_without_their_credentials(
    base_settings: Settings, db: Database
) -> None:
    settings = with_master_key(
        base_settings, privacy_records_file=EXAMPLE, smtp_host="relay.example.net"
    )
    await add_smpp_route(
        db,
        settings,
        host="smsc.eu.example",
        port=2775,
        system_id="acme-login",
        password="hunter2",  # the credential that must not be served
        name="eu-smsc",
    )
    await add_smpp_route(
        db, settings, host="smsc.us.example", port=2775, name="us-smsc", prefix="+1"
    )

    async with db.read_session() as session:
        records = await build_records(session, settings, load_records_file(settings))
    served = records.model_dump_json()

    assert [(c.name, c.kind, c.country, c.enabled) for c in records.carriers] == [
        ("eu-smsc", "smpp", "NL", True),
        ("us-smsc", "smpp", None, True),
        ("smtp", "smtp", "IE", True),
    ]
    assert "hunter2" not in served
    assert "acme-login" not in served
    assert "system_id" not in served
    assert "password" not in served
    assert "smsc.eu.example" not in served  # host names are not for every key holder
    assert "relay.example.net" not in served

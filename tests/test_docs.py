"""Docs: the reference pages say what the code does (error codes, routes, settings, policy map)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest

from amnex.api.app import create_app
from amnex.config import Settings
from amnex.errors import all_error_classes
from amnex.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "amnex"

# Framework pages and the dev-only simulator routes are not part of the documented API.
UNDOCUMENTED_PATHS = frozenset({"/docs", "/openapi.json", "/docs/oauth2-redirect"})
UNDOCUMENTED_PREFIXES = ("/_dev",)
POLICY_SECTIONS = range(1, 15)


def read_doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(markdown: str, heading: str) -> str:
    """The text under a `## heading`, up to the next heading of the same level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match is not None, f"no '## {heading}' section"
    return match.group(1)


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table body row (header and separator rows skipped)."""
    rows = []
    for line in markdown.splitlines():
        if not line.startswith("|") or re.fullmatch(r"\|[\s:|-]+\|", line):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def error_table() -> dict[str, str]:
    """`code` → its HTTP status cell, from the error-code table of docs/api.md."""
    table: dict[str, str] = {}
    for cells in table_rows(section(read_doc("api.md"), "Error codes")):
        match = re.fullmatch(r"`([a-z_]+)`", cells[0])
        if match:
            assert match.group(1) not in table, f"`{match.group(1)}` has two rows"
            table[match.group(1)] = cells[1]
    return table


def codes_in_source(folders: Iterable[Path], patterns: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for path in (p for f in folders for p in (f.rglob("*.py") if f.is_dir() else [f])):
        text = path.read_text(encoding="utf-8")
        for pattern in patterns:
            found.update(re.findall(pattern, text))
    return found


def test_every_error_class_code_is_in_the_error_table_with_its_status() -> None:
    table = error_table()

    for cls in all_error_classes():
        assert cls.code in table, f"`{cls.code}` ({cls.__name__}) missing from docs/api.md"
        assert table[cls.code].startswith(str(cls.status)), (
            f"`{cls.code}` is documented as {table[cls.code]!r}, but its status is {cls.status}"
        )


def test_problem_codes_written_inline_in_the_api_are_in_the_error_table() -> None:
    # Codes the API produces without an error class (405, /readyz, unexpected errors);
    # /readyz's comes from the readiness helper the API shares with the workers.
    codes = codes_in_source([SRC / "api", SRC / "health.py"], [r'\bcode="([a-z_]+)"'])
    assert {"method_not_allowed", "not_ready", "internal_error"} <= codes

    missing = codes - error_table().keys()

    assert not missing, f"codes produced by src/amnex/api but not documented: {sorted(missing)}"


def test_delivery_error_codes_are_in_the_error_table() -> None:
    patterns = [
        r'DeliveryError\(\s*"([a-z_]+)"',
        r'return "([a-z_]+)", (?:True|False)',
        r'\b(?:error_)?code="([a-z_]+)"',
    ]
    # classify_smtp_reply answers ("accepted", False) for a 2xx reply: not an error.
    codes = codes_in_source([SRC / "channels", SRC / "dispatch"], patterns)
    codes.discard("accepted")
    assert {"expired", "connection_error", "unknown_subscriber"} <= codes

    missing = codes - error_table().keys()

    assert not missing, f"delivery codes not documented in docs/api.md: {sorted(missing)}"


def route_paths(routes: list[Any]) -> set[tuple[str, str]]:
    """(method, path) of every route, through included routers on FastAPI versions that keep
    them as one entry in `app.routes`."""
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    flat: Iterable[Any] = iter_contexts(routes) if iter_contexts is not None else routes
    found: set[tuple[str, str]] = set()
    for route in flat:
        path = getattr(route, "path", None)
        if not path or path in UNDOCUMENTED_PATHS or path.startswith(UNDOCUMENTED_PREFIXES):
            continue
        for method in getattr(route, "methods", None) or {"GET"}:
            if method != "HEAD":
                found.add((method, path))
    return found


async def test_every_route_of_the_app_is_documented_with_its_method() -> None:
    runtime = Runtime.build(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    try:
        app = create_app(runtime, manage_lifecycle=False)
        routes = route_paths(list(app.routes))
    finally:
        await runtime.close()
    api_md = read_doc("api.md")
    assert ("POST", "/v1/messages") in routes

    missing = sorted(f"{m} {p}" for m, p in routes if f"{m} {p}" not in api_md)

    assert not missing, f"routes not documented in docs/api.md: {missing}"


def policy_rows() -> list[tuple[int, list[str]]]:
    """(section number, cells) of every row of docs/policy-map.md whose clause starts `§N`."""
    rows = []
    for cells in table_rows(read_doc("policy-map.md")):
        match = re.match(r"§(\d+)", cells[0])
        if match:
            rows.append((int(match.group(1)), cells))
    return rows


def test_policy_map_has_rows_for_every_section_of_the_policy() -> None:
    sections = {number for number, _ in policy_rows()}

    missing = sorted(set(POLICY_SECTIONS) - sections)

    assert not missing, f"policy sections without a row in docs/policy-map.md: {missing}"


def test_policy_map_rows_have_five_columns_and_a_known_status() -> None:
    for _, cells in policy_rows():
        assert len(cells) == 5, f"row {cells[0]!r} has {len(cells)} columns, not 5"
        assert re.match(r"(done|partial|not yet)\b", cells[4]), (
            f"row {cells[0]!r} has status {cells[4]!r}"
        )


def test_tests_named_in_the_policy_map_exist() -> None:
    text = read_doc("policy-map.md")
    named = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", text))
    assert named, "the policy map points at no test"

    for file, name in sorted(named):
        path = ROOT / file
        assert path.is_file(), f"{file} (named in docs/policy-map.md) does not exist"
        assert re.search(rf"^(async )?def {name}\(", path.read_text(encoding="utf-8"), re.M), (
            f"{file} has no test {name} (named in docs/policy-map.md)"
        )


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented_with_its_environment_variable(name: str) -> None:
    configuration = read_doc("configuration.md")

    assert f"`AMNEX_{name.upper()}`" in configuration

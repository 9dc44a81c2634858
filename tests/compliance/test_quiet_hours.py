"""Quiet hours: marketing waits for the recipient's window, in every zone the number spans."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, time, timedelta
from importlib.resources import files
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from phonenumbers import geocoder

from amnex.compliance.quiet_hours import (
    FEDERAL,
    STATE_SCHEDULES,
    Schedule,
    Window,
    quiet_hours,
    quiet_hours_in_zones,
    schedule_for_number,
    state_for_number,
    zones_for_number,
)
from amnex.compliance.verdict import ALLOW, RULE_QUIET_HOURS, Defer, Reject, Verdict

MIAMI = "+13055551234"  # Florida, America/New_York
DALLAS = "+12145551234"  # Texas, America/Chicago
JACKSON = "+16015551234"  # Mississippi, America/Chicago
HARTFORD = "+12035551234"  # Connecticut
SAN_FRANCISCO = "+14155552671"  # California: the federal window
NEW_YORK = "+12125551234"
WASHINGTON_DC = "+12025551234"
PARIS = "+33612345678"
ALASKA = "+19075551234"  # America/Adak and America/Anchorage
IDAHO = "+12085551234"  # America/Boise and America/Los_Angeles
TOLL_FREE = "+18005551234"  # every NANP zone, Guam to Newfoundland
MOSCOW_MOBILE = "+79161234567"  # sixteen zones, Europe/Bucharest to Asia/Anadyr
IRIDIUM = "+881612345678"  # no country, no local time


def at(zone: str, year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A local wall-clock time in `zone`, as an aware UTC instant."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def deferred_until(verdict: Verdict) -> datetime | None:
    """None for an allow; the instant for a deferral (a rejection fails the test)."""
    if verdict == ALLOW:
        return None
    assert isinstance(verdict, Defer), verdict
    assert verdict.rule == RULE_QUIET_HOURS
    return verdict.until


NY, CHICAGO, LA = "America/New_York", "America/Chicago", "America/Los_Angeles"


@pytest.mark.parametrize(
    ("number", "now", "until"),
    [
        # Florida: 8:00-20:00; at 20:30 the next opening is 8:00 the next morning.
        (MIAMI, at(NY, 2025, 1, 15, 20, 30), at(NY, 2025, 1, 16, 8, 0)),
        (MIAMI, at(NY, 2025, 1, 15, 19, 59), None),
        (MIAMI, at(NY, 2025, 1, 15, 20, 0), at(NY, 2025, 1, 16, 8, 0)),
        (MIAMI, at(NY, 2025, 1, 16, 7, 59), at(NY, 2025, 1, 16, 8, 0)),
        (MIAMI, at(NY, 2025, 1, 16, 8, 0), None),
        # Texas: 9:00-21:00 Monday to Saturday, from noon on Sunday.
        (DALLAS, at(CHICAGO, 2025, 1, 19, 10, 0), at(CHICAGO, 2025, 1, 19, 12, 0)),
        (DALLAS, at(CHICAGO, 2025, 1, 19, 12, 0), None),
        (DALLAS, at(CHICAGO, 2025, 1, 18, 10, 0), None),
        (DALLAS, at(CHICAGO, 2025, 1, 18, 8, 30), at(CHICAGO, 2025, 1, 18, 9, 0)),
        (DALLAS, at(CHICAGO, 2025, 1, 18, 21, 0), at(CHICAGO, 2025, 1, 19, 12, 0)),
        # Mississippi: not on Sunday, so Saturday evening waits until Monday.
        (JACKSON, at(CHICAGO, 2025, 1, 18, 20, 30), at(CHICAGO, 2025, 1, 20, 8, 0)),
        (JACKSON, at(CHICAGO, 2025, 1, 19, 12, 0), at(CHICAGO, 2025, 1, 20, 8, 0)),
        (JACKSON, at(CHICAGO, 2025, 1, 20, 8, 0), None),
        # Connecticut: from 9:00.
        (HARTFORD, at(NY, 2025, 1, 15, 8, 30), at(NY, 2025, 1, 15, 9, 0)),
        # Federal window: California and DC until 21:00, and the default outside the US.
        (SAN_FRANCISCO, at(LA, 2025, 1, 15, 20, 30), None),
        (SAN_FRANCISCO, at(LA, 2025, 1, 15, 21, 0), at(LA, 2025, 1, 16, 8, 0)),
        (WASHINGTON_DC, at(NY, 2025, 1, 15, 20, 30), None),
        (PARIS, at("Europe/Paris", 2025, 1, 15, 21, 30), at("Europe/Paris", 2025, 1, 16, 8, 0)),
        # DST starts in New York on Sunday 9 March 2025 at 2:00 EST: 8:00 is 12:00 UTC.
        (NEW_YORK, utc(2025, 3, 9, 2, 30), utc(2025, 3, 9, 12, 0)),  # Sat 21:30 EST
        (NEW_YORK, utc(2025, 3, 9, 6, 30), utc(2025, 3, 9, 12, 0)),  # 1:30 EST
        (NEW_YORK, utc(2025, 3, 9, 7, 30), utc(2025, 3, 9, 12, 0)),  # 3:30 EDT
        (NEW_YORK, utc(2025, 3, 9, 11, 59), utc(2025, 3, 9, 12, 0)),  # 7:59 EDT
        (NEW_YORK, utc(2025, 3, 9, 12, 0), None),
        (NEW_YORK, utc(2025, 3, 10, 0, 59), None),  # 20:59 EDT
        (NEW_YORK, utc(2025, 3, 10, 1, 0), utc(2025, 3, 10, 12, 0)),  # 21:00 EDT
        # DST ends on Sunday 2 November 2025 at 2:00 EDT: 8:00 is 13:00 UTC.
        (NEW_YORK, utc(2025, 11, 2, 1, 30), utc(2025, 11, 2, 13, 0)),  # Sat 21:30 EDT
        (NEW_YORK, utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 13, 0)),  # first 1:30 (EDT)
        (NEW_YORK, utc(2025, 11, 2, 6, 30), utc(2025, 11, 2, 13, 0)),  # second 1:30 (EST)
        (NEW_YORK, utc(2025, 11, 2, 12, 30), utc(2025, 11, 2, 13, 0)),  # 7:30 EST
        (NEW_YORK, utc(2025, 11, 3, 1, 59), None),  # 20:59 EST
        (NEW_YORK, utc(2025, 11, 3, 2, 0), utc(2025, 11, 3, 13, 0)),  # 21:00 EST
    ],
)
def test_marketing_outside_the_window_is_deferred_to_its_opening(
    number: str, now: datetime, until: datetime | None
) -> None:
    assert deferred_until(quiet_hours(number, "marketing", now)) == until


@pytest.mark.parametrize(
    ("number", "now", "until"),
    [
        # 8:30 in Anchorage is 7:30 in Adak: wait for Adak's 8:00.
        (ALASKA, at("America/Anchorage", 2025, 1, 15, 8, 30), at("America/Adak", 2025, 1, 15, 8)),
        (ALASKA, at("America/Adak", 2025, 1, 15, 19, 30), None),
        (ALASKA, at("America/Adak", 2025, 1, 15, 20, 0), at("America/Adak", 2025, 1, 16, 8)),
        (ALASKA, at("America/Adak", 2025, 1, 15, 21, 0), at("America/Adak", 2025, 1, 16, 8)),
        # 8:30 in Boise is 7:30 in Los Angeles; 20:30 in LA is 21:30 in Boise.
        (IDAHO, at("America/Boise", 2025, 1, 15, 8, 30), at(LA, 2025, 1, 15, 8, 0)),
        (IDAHO, at(LA, 2025, 1, 15, 20, 30), at(LA, 2025, 1, 16, 8, 0)),
        # Toll-free numbers span Guam (UTC+10) to Newfoundland (UTC-3:30): open 22:00-0:30 UTC.
        (TOLL_FREE, utc(2025, 1, 15, 12, 0), utc(2025, 1, 15, 22, 0)),
        (TOLL_FREE, utc(2025, 1, 15, 23, 0), None),
        (TOLL_FREE, utc(2025, 1, 16, 0, 30), utc(2025, 1, 16, 22, 0)),
    ],
)
def test_a_number_in_several_zones_waits_until_the_window_is_open_in_all(
    number: str, now: datetime, until: datetime | None
) -> None:
    assert len(zones_for_number(number)) > 1
    assert deferred_until(quiet_hours(number, "marketing", now)) == until


def test_the_deferral_detail_names_the_window_and_the_zone() -> None:
    verdict = quiet_hours(MIAMI, "marketing", at(NY, 2025, 1, 15, 20, 30))
    assert isinstance(verdict, Defer)
    assert verdict.detail == (
        "Wed 20:30 in America/New_York, marketing hours 08:00-20:00 under Florida law "
        "(Fla. Stat. § 501.059(8)(a)); open from 2025-01-16 13:00 UTC"
    )
    verdict = quiet_hours(ALASKA, "marketing", at("America/Anchorage", 2025, 1, 15, 8, 30))
    assert isinstance(verdict, Defer)
    assert verdict.detail.startswith("Wed 07:30 in America/Adak, marketing hours 08:00-21:00")
    assert verdict.detail.endswith("open in all 2 zones from 2025-01-15 18:00 UTC")


@pytest.mark.parametrize("number", [MIAMI, DALLAS, TOLL_FREE, MOSCOW_MOBILE, IRIDIUM])
@pytest.mark.parametrize("account_window", [None, (time(22), time(23))])
def test_transactional_messages_pass_at_any_hour(
    number: str, account_window: tuple[time, time] | None
) -> None:
    three_am = at(NY, 2025, 1, 19, 3, 0)
    verdict = quiet_hours(number, "transactional", three_am, account_window=account_window)
    assert verdict == ALLOW


def test_any_other_category_is_held_to_the_marketing_rule() -> None:
    assert deferred_until(quiet_hours(MIAMI, "promotional", at(NY, 2025, 1, 15, 3))) is not None


@pytest.mark.parametrize(
    ("number", "account_window", "now", "until"),
    [
        # Stricter: applied.
        (SAN_FRANCISCO, (time(10), time(18)), at(LA, 2025, 1, 15, 9, 0), at(LA, 2025, 1, 15, 10)),
        (SAN_FRANCISCO, (time(10), time(18)), at(LA, 2025, 1, 15, 12, 0), None),
        (SAN_FRANCISCO, (time(10), time(18)), at(LA, 2025, 1, 15, 18, 0), at(LA, 2025, 1, 16, 10)),
        (DALLAS, (time(10), time(13)), at(CHICAGO, 2025, 1, 19, 10), at(CHICAGO, 2025, 1, 19, 12)),
        (DALLAS, (time(10), time(13)), at(CHICAGO, 2025, 1, 19, 13), at(CHICAGO, 2025, 1, 20, 10)),
        # Looser: ignored, the legal window still holds.
        (SAN_FRANCISCO, (time(7), time(23)), at(LA, 2025, 1, 15, 7, 30), at(LA, 2025, 1, 15, 8)),
        (SAN_FRANCISCO, (time(7), time(23)), at(LA, 2025, 1, 15, 21, 30), at(LA, 2025, 1, 16, 8)),
        (SAN_FRANCISCO, (time(7), time(23)), at(LA, 2025, 1, 15, 20, 30), None),
        (MIAMI, (time(7), time(22)), at(NY, 2025, 1, 15, 20, 30), at(NY, 2025, 1, 16, 8)),
        # Partly looser: only the stricter edge counts.
        (SAN_FRANCISCO, (time(7), time(19)), at(LA, 2025, 1, 15, 7, 30), at(LA, 2025, 1, 15, 8)),
        (SAN_FRANCISCO, (time(7), time(19)), at(LA, 2025, 1, 15, 19, 0), at(LA, 2025, 1, 16, 8)),
    ],
)
def test_an_account_window_can_only_make_hours_stricter(
    number: str, account_window: tuple[time, time], now: datetime, until: datetime | None
) -> None:
    verdict = quiet_hours(number, "marketing", now, account_window=account_window)
    assert deferred_until(verdict) == until


def test_the_account_window_is_named_in_the_detail() -> None:
    now = at(LA, 2025, 1, 15, 9, 0)
    verdict = quiet_hours(SAN_FRANCISCO, "marketing", now, account_window=(time(10), time(18)))
    assert isinstance(verdict, Defer)
    assert "marketing hours 10:00-18:00 under the TCPA" in verdict.detail
    assert "and the account's 10:00-18:00" in verdict.detail


@pytest.mark.parametrize(
    ("number", "account_window"),
    [(SAN_FRANCISCO, (time(22), time(23))), (JACKSON, (time(20), time(21)))],
)
def test_an_account_window_outside_the_legal_one_rejects_marketing(
    number: str, account_window: tuple[time, time]
) -> None:
    now = at(NY, 2025, 1, 15, 12)
    verdict = quiet_hours(number, "marketing", now, account_window=account_window)
    assert isinstance(verdict, Reject)
    assert (verdict.code, verdict.rule) == ("no_sending_window", RULE_QUIET_HOURS)
    assert "leave no hour of the week for marketing" in verdict.detail


@pytest.mark.parametrize(
    ("zones", "account_window", "now", "until"),
    [
        # 13 hours apart, an 8-hour window: never open in both. New York (west) decides.
        (
            [SHANGHAI := "Asia/Shanghai", NY],
            (time(9), time(17)),
            utc(2025, 1, 15, 12),
            utc(2025, 1, 15, 14),
        ),
        ([SHANGHAI, NY], (time(9), time(17)), utc(2025, 1, 15, 15), None),
        ([NY, SHANGHAI], (time(9), time(17)), utc(2025, 1, 15, 22), utc(2025, 1, 16, 14)),
        # With the full 13-hour window they overlap from 0:00 to 2:00 UTC.
        ([SHANGHAI, NY], None, utc(2025, 1, 15, 3), utc(2025, 1, 16, 0)),
        ([SHANGHAI, NY], None, utc(2025, 1, 16, 1), None),
    ],
)
def test_windows_that_never_overlap_follow_the_westernmost_zone(
    zones: list[str],
    account_window: tuple[time, time] | None,
    now: datetime,
    until: datetime | None,
) -> None:
    verdict = quiet_hours_in_zones(zones, "marketing", now, account_window=account_window)
    assert deferred_until(verdict) == until


def test_a_real_number_whose_zones_never_overlap() -> None:
    # Given a +7 mobile (Europe/Bucharest to Asia/Anadyr) and an 8-hour account window
    now = utc(2025, 1, 15, 0, 30)
    # When it is 2:30 in Bucharest, the westernmost of its zones
    verdict = quiet_hours(MOSCOW_MOBILE, "marketing", now, account_window=(time(9), time(17)))
    # Then the message waits for 9:00 there, and says why
    assert isinstance(verdict, Defer)
    assert verdict.until == at("Europe/Bucharest", 2025, 1, 15, 9)
    assert "16 zones do not overlap in the coming weeks, so the westernmost" in verdict.detail
    assert "Wed 02:30 in Europe/Bucharest" in verdict.detail
    # And without the account window the zones do overlap, from 8:00 in Bucharest
    assert deferred_until(quiet_hours(MOSCOW_MOBILE, "marketing", now)) == utc(2025, 1, 15, 6)


@pytest.mark.parametrize(
    ("number", "zones"),
    [
        (ALASKA, ("America/Adak", "America/Anchorage")),
        (MIAMI, ("America/New_York",)),
        (IRIDIUM, ()),  # "Etc/Unknown", and no country to fall back to
        (
            "+447700900123",
            ("Europe/Guernsey", "Europe/Isle_of_Man", "Europe/Jersey", "Europe/London"),
        ),
    ],
)
def test_zones_come_from_the_number_or_its_country(number: str, zones: tuple[str, ...]) -> None:
    assert zones_for_number(number) == zones


def test_a_number_with_no_local_time_passes() -> None:
    assert quiet_hours(IRIDIUM, "marketing", utc(2025, 1, 15, 3)) == ALLOW
    assert quiet_hours_in_zones([], "marketing", utc(2025, 1, 15, 3)) == ALLOW


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        quiet_hours(MIAMI, "marketing", datetime(2025, 1, 15, 3))  # noqa: DTZ001 - under test


@pytest.mark.parametrize(
    ("start", "end"), [(time(18), time(10)), (time(9), time(9)), (time(9, tzinfo=UTC), time(17))]
)
def test_a_window_is_a_naive_span_within_one_day(start: time, end: time) -> None:
    with pytest.raises(ValueError, match="window"):
        Window(start, end)
    with pytest.raises(ValueError, match="window"):
        quiet_hours(MIAMI, "marketing", utc(2025, 1, 15, 3), account_window=(start, end))


@pytest.mark.parametrize(
    ("number", "state", "source"),
    [
        (MIAMI, "FL", "Florida law (Fla. Stat. § 501.059(8)(a))"),
        (DALLAS, "TX", "Texas law (Tex. Bus. & Com. Code § 301.051)"),
        (SAN_FRANCISCO, "CA", FEDERAL.source),
        (WASHINGTON_DC, "DC", FEDERAL.source),
        ("+12065551234", "WA", "Washington law (Rev. Code Wash. § 80.36.390)"),
        ("+14055551234", "OK", "Oklahoma law (Okla. Stat. tit. 15, § 775C.4)"),
        ("+14105551234", "MD", "Maryland law (Md. Code, Com. Law § 14-4501 et seq.)"),
        (TOLL_FREE, None, FEDERAL.source),
        ("+17875551234", None, "the platform default"),  # Puerto Rico is its own region
        ("+16045551234", None, "the platform default"),  # Canada
        (PARIS, None, "the platform default"),
    ],
)
def test_the_schedule_follows_the_us_state_of_the_area_code(
    number: str, state: str | None, source: str
) -> None:
    assert state_for_number(number) == state
    assert schedule_for_number(number).source == source


def test_state_windows_are_never_looser_than_the_federal_one() -> None:
    assert STATE_SCHEDULES.keys() == {"CT", "FL", "MD", "MS", "OK", "TX", "WA"}
    for schedule in STATE_SCHEDULES.values():
        for day, federal in zip(schedule.days, FEDERAL.days, strict=True):
            assert day is None or (federal is not None and day.intersect(federal) == day)


def test_a_schedule_has_seven_days() -> None:
    with pytest.raises(ValueError, match="one entry per weekday"):
        Schedule((None,) * 6, "six days")


STATE_NAMES = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California",
    "CO": "Colorado", "CT": "Connecticut", "DE": "Delaware", "DC": "Washington D.C.",
    "FL": "Florida", "GA": "Georgia", "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois",
    "IN": "Indiana", "IA": "Iowa", "KS": "Kansas", "KY": "Kentucky", "LA": "Louisiana",
    "ME": "Maine", "MD": "Maryland", "MA": "Massachusetts", "MI": "Michigan",
    "MN": "Minnesota", "MS": "Mississippi", "MO": "Missouri", "MT": "Montana",
    "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire", "NJ": "New Jersey",
    "NM": "New Mexico", "NY": "New York", "NC": "North Carolina", "ND": "North Dakota",
    "OH": "Ohio", "OK": "Oklahoma", "OR": "Oregon", "PA": "Pennsylvania",
    "RI": "Rhode Island", "SC": "South Carolina", "SD": "South Dakota", "TN": "Tennessee",
    "TX": "Texas", "UT": "Utah", "VT": "Vermont", "VA": "Virginia", "WA": "Washington State",
    "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming",
}  # fmt: skip
STATE_BY_NAME = {name: state for state, name in STATE_NAMES.items()}


def geocoded_state(area_code: int) -> str | None:
    """The state phonenumbers' geocoder places a US area code in ("Florida", "Chicago, IL")."""
    number = phonenumbers.parse(f"+1{area_code}2345678")
    if phonenumbers.region_code_for_number(number) != "US":
        return None
    description = geocoder.description_for_number(number, "en")
    suffix = re.fullmatch(r".+, ([A-Z]{2})", description)
    return suffix.group(1) if suffix else STATE_BY_NAME.get(description)


def test_the_area_code_table_agrees_with_phonenumbers_geocoder_both_ways() -> None:
    table = json.loads(
        files("amnex.compliance").joinpath("data", "us_area_code_states.json").read_text()
    )["states"]
    assert table.keys() == STATE_NAMES.keys()
    ours = {int(code): state for state, codes in table.items() for code in codes}
    theirs = {code: geocoded_state(code) for code in range(200, 1000)}
    theirs = {code: state for code, state in theirs.items() if state is not None}
    assert ours == theirs


def every_day(start: time, end: time) -> Schedule:
    return Schedule.every_day(Window(start, end), "a test schedule")


@pytest.mark.parametrize(
    ("schedule", "now", "until"),
    [
        # 2:30 does not exist on 9 March 2025 in New York: the window opens at 2:30 EST
        # (3:30 EDT), never earlier than any reading of 2:30.
        (every_day(time(2, 30), time(20)), utc(2025, 3, 9, 6, 0), utc(2025, 3, 9, 7, 30)),
        # A window closing at 2:30 that day closes at 1:30 EST, the earlier reading.
        (every_day(time(0), time(2, 30)), utc(2025, 3, 9, 6, 29), None),
        (every_day(time(0), time(2, 30)), utc(2025, 3, 9, 6, 30), utc(2025, 3, 10, 4, 0)),
        # 1:30 happens twice on 2 November 2025: a window opens at the second (EST) one...
        (every_day(time(1, 30), time(20)), utc(2025, 11, 2, 5, 0), utc(2025, 11, 2, 6, 30)),
        (every_day(time(1, 30), time(20)), utc(2025, 11, 2, 5, 45), utc(2025, 11, 2, 6, 30)),
        # ... and closes at the first (EDT) one.
        (every_day(time(0), time(1, 30)), utc(2025, 11, 2, 5, 29), None),
        (every_day(time(0), time(1, 30)), utc(2025, 11, 2, 5, 30), utc(2025, 11, 3, 5, 0)),
    ],
)
def test_window_edges_in_a_dst_gap_or_fold_never_widen_the_window(
    schedule: Schedule, now: datetime, until: datetime | None
) -> None:
    verdict = quiet_hours_in_zones([NY], "marketing", now, schedule=schedule)
    assert deferred_until(verdict) == until


ZONE_SETS = [
    (NY,),
    ("America/Adak", "America/Anchorage"),
    zones_for_number(TOLL_FREE),
    zones_for_number(MOSCOW_MOBILE),
    ("Asia/Shanghai", NY),
    ("Australia/Lord_Howe",),  # a 30-minute DST shift
    ("America/Santiago", "Asia/Beirut"),  # DST changes at midnight
    ("Europe/London", "America/Sao_Paulo", "Pacific/Auckland"),
]
SCHEDULES = [
    FEDERAL,
    STATE_SCHEDULES["TX"],
    STATE_SCHEDULES["MS"],
    every_day(time(9, 30), time(17)),
    every_day(time(0), time(1, 30)),
    every_day(time(1, 30), time(2, 15)),
    every_day(time(2, 30), time(20)),
]


START = utc(2024, 1, 1)


def seconds_from_start(instant: datetime) -> int:
    return int((instant - START).total_seconds())


@settings(max_examples=500, deadline=None)
@given(
    zones=st.sampled_from(ZONE_SETS),
    schedule=st.sampled_from(SCHEDULES),
    seconds=st.integers(0, 3 * 366 * 86400),
)
@example(zones=(NY,), schedule=SCHEDULES[-1], seconds=seconds_from_start(utc(2024, 3, 10, 6)))
@example(zones=(NY,), schedule=SCHEDULES[4], seconds=seconds_from_start(utc(2024, 11, 3, 5)))
# London leaves BST on 26 October: only from then do its hours meet Auckland's, more than two
# weeks after this instant (found by a longer run of this test).
@example(
    zones=ZONE_SETS[-1], schedule=SCHEDULES[2], seconds=seconds_from_start(utc(2025, 10, 12, 4))
)
def test_a_deferred_message_is_allowed_at_its_instant_and_not_a_second_before(
    zones: tuple[str, ...], schedule: Schedule, seconds: int
) -> None:
    def check(now: datetime) -> Verdict:
        return quiet_hours_in_zones(zones, "marketing", now, schedule=schedule)

    now = START + timedelta(seconds=seconds)
    verdict = check(now)
    if isinstance(verdict, Defer):
        assert verdict.until > now
        assert check(verdict.until) == ALLOW
        early = check(verdict.until - timedelta(seconds=1))
        assert isinstance(early, Defer)
        assert early.until == verdict.until

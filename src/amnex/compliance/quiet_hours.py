"""Compliance: quiet hours — may a marketing message reach the recipient at this local time?

Transactional messages always pass. A marketing message passes only while the marketing
window is open at the recipient's location; otherwise it is deferred (status `scheduled`)
until the earliest instant at which the window is open — never rejected for the hour.

What decides:

- **The window.** The federal TCPA rule, 8:00-21:00 local (47 CFR 64.1200(c)(1)), every day;
  outside the US the same hours are the platform's default. For a US number whose area code
  belongs to a state with a stricter statute (`data/us_state_quiet_hours.json`, statutes cited
  there; area codes in `data/us_area_code_states.json`), that state's window, per weekday
  (Texas opens at noon on Sunday, Mississippi not at all). State holidays are not modelled.
  An account's own window applies every day and is intersected with the legal one, so it can
  only make hours stricter: a looser account window changes nothing. If the intersection
  leaves no hour in the week, the message is rejected (`no_sending_window`) rather than
  deferred forever.
- **The place.** The recipient's time zones from phonenumbers. A number spanning several zones
  gets the most restrictive reading: the window must be open in every one of them. When
  phonenumbers cannot place a number ("Etc/Unknown"), the zones of its country calling code
  are used; a number of no country (+881, +882, +883, +870...: satellite and international
  networks) has no local time and passes — the geo rule blocks those ranges by default.
- **The deferral.** `until` is the earliest UTC instant at which the window is open in every
  zone, found by walking each zone's open intervals (a window that opens tomorrow, or next
  Monday, included) up to 15 days past the westernmost zone's next opening. Windows are
  wall-clock times, so DST is handled by zoneinfo; a window edge that falls in a DST gap or
  fold is resolved conservatively (the later instant for an opening, the earlier one for a
  closing), so the window never grows.
- **Windows that never overlap.** When the zones are so far apart that no instant in that
  span is open in all of them (a +7 number, whose zones run from Europe to Kamchatka, under
  an 8-hour account window, say), the westernmost zone decides alone — the one whose clock is
  furthest behind (in standard time, so DST never swaps it for another), so at its opening
  every other zone is already past its own opening: the message goes while that zone's
  window is open, else is deferred to its next opening. Nobody is woken early; the
  easternmost zones may get the message in their evening after their window closed.

The same `Defer` comes back when the rule runs again at dispatch, and at `until` the rule
allows: a deferred message is never lost and never sent early.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from importlib.resources import files
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as phone_timezone

from amnex.compliance.number_type import NON_GEOGRAPHIC_REGION, parse_e164, phone_region
from amnex.compliance.verdict import (
    ALLOW,
    CODE_NO_SENDING_WINDOW,
    RULE_QUIET_HOURS,
    Defer,
    Reject,
    Verdict,
)

CATEGORY_TRANSACTIONAL = "transactional"
SEARCH_DAYS = 15
"""How far past the westernmost zone's next opening a common opening is looked for: two weeks
and a day see every weekday twice, whatever the DST changes in between."""

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_Interval = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class Window:
    """Local wall-clock hours [start, end) within one day; naive times, start before end."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("a window is in local wall-clock time: give naive times")
        if not self.start < self.end:
            raise ValueError(f"a window must start before it ends: {self}")

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def intersect(self, other: Window) -> Window | None:
        """The hours inside both windows, or None when they do not overlap."""
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Window(start, end) if start < end else None


@dataclass(frozen=True, slots=True)
class Schedule:
    """Marketing hours for each weekday (Monday first; None: not that day) and their source."""

    days: tuple[Window | None, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.days) != len(_WEEKDAYS):
            raise ValueError("a schedule has one entry per weekday, Monday first")

    @classmethod
    def every_day(cls, window: Window, source: str) -> Schedule:
        return cls((window,) * len(_WEEKDAYS), source)

    def intersect(self, other: Schedule, source: str) -> Schedule:
        """Hours open under both schedules, each weekday."""
        days = tuple(
            None if mine is None or theirs is None else mine.intersect(theirs)
            for mine, theirs in zip(self.days, other.days, strict=True)
        )
        return Schedule(days, source)

    def is_never_open(self) -> bool:
        return all(day is None for day in self.days)


TCPA_WINDOW = Window(time(8), time(21))
FEDERAL = Schedule.every_day(TCPA_WINDOW, "the TCPA (47 CFR 64.1200(c)(1))")
"""US marketing hours where no stricter state window applies."""
DEFAULT = Schedule.every_day(TCPA_WINDOW, "the platform default")
"""Marketing hours outside the US: the TCPA's, as the platform's default."""


def _data(name: str) -> Any:
    return json.loads(files("amnex.compliance").joinpath("data", name).read_text("utf-8"))


def _window(hours: list[str] | None) -> Window | None:
    if hours is None:
        return None
    start, end = hours
    return Window(time.fromisoformat(start), time.fromisoformat(end))


def _state_schedules(table: Mapping[str, Any]) -> dict[str, Schedule]:
    schedules = {}
    for state, entry in table["states"].items():
        default = _window(entry["window"])
        overrides = entry.get("days", {})
        unknown = set(overrides) - set(_WEEKDAYS)
        if unknown:
            raise ValueError(f"{state}: unknown weekdays {sorted(unknown)}")
        days = tuple(_window(overrides[day]) if day in overrides else default for day in _WEEKDAYS)
        source = f"{entry['name']} law ({entry['statute']})"
        # Intersected with the federal window, so a state entry can only make hours stricter.
        schedules[state] = FEDERAL.intersect(Schedule(days, source), source)
    return schedules


STATE_SCHEDULES: Mapping[str, Schedule] = _state_schedules(_data("us_state_quiet_hours.json"))
"""The marketing schedule of each US state stricter than the TCPA, by USPS code."""

_AREA_CODE_STATES: Mapping[str, str] = {
    area_code: state
    for state, area_codes in _data("us_area_code_states.json")["states"].items()
    for area_code in area_codes
}


def _us_state(number_e164: str) -> str | None:
    if phone_region(number_e164) != "US":
        return None
    return _AREA_CODE_STATES.get(str(parse_e164(number_e164).national_number)[:3])


def state_for_number(number_e164: str) -> str | None:
    """The US state (USPS code, `DC` included) of a US number's area code, else None."""
    return _us_state(number_e164)


def zones_for_number(number_e164: str) -> tuple[str, ...]:
    """The IANA time zones the number may be in; empty when it has no local time."""
    number = parse_e164(number_e164)
    zones = phone_timezone.time_zones_for_number(number)
    if zones != (phone_timezone.UNKNOWN_TIMEZONE,):
        return zones
    region = phonenumbers.region_code_for_country_code(number.country_code or 0)
    if region in (NON_GEOGRAPHIC_REGION, phonenumbers.UNKNOWN_REGION):
        return ()
    # phonenumbers' own fallback for numbers it does not place more precisely; declared in
    # its type stubs, so the signature is checked.
    zones = phone_timezone._country_level_time_zones_for_number(number)
    return () if zones == (phone_timezone.UNKNOWN_TIMEZONE,) else zones


def schedule_for_number(
    number_e164: str, *, account_window: tuple[time, time] | None = None
) -> Schedule:
    """The marketing schedule for a number (its US state's, the federal one for the rest of
    the US, the default elsewhere), narrowed to the account's window."""
    if phone_region(number_e164) != "US":
        return _restrict(DEFAULT, account_window)
    state = _us_state(number_e164)
    schedule = FEDERAL if state is None else STATE_SCHEDULES.get(state, FEDERAL)
    return _restrict(schedule, account_window)


def _restrict(schedule: Schedule, account_window: tuple[time, time] | None) -> Schedule:
    if account_window is None:
        return schedule
    window = Window(*account_window)
    return schedule.intersect(
        Schedule.every_day(window, "the account"), f"{schedule.source} and the account's {window}"
    )


def _instant(day: date, wall: time, zone: ZoneInfo, *, latest: bool) -> datetime:
    """The UTC instant the wall clock shows `wall` on `day`; in a DST gap or fold, the later
    (`latest`) or earlier of the two readings."""
    first = datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)
    second = datetime.combine(day, wall, tzinfo=zone).replace(fold=1).astimezone(UTC)
    return max(first, second) if latest else min(first, second)


def _intervals(
    zone: ZoneInfo, schedule: Schedule, since: datetime, until: datetime
) -> list[_Interval]:
    """The open intervals, in UTC and in order, of the local days from the one before `since`
    to the one after `until` (an interval belongs to its local day, never to UTC's)."""
    first_day = since.astimezone(zone).date() - timedelta(days=1)
    last_day = until.astimezone(zone).date() + timedelta(days=1)
    intervals = []
    for offset in range((last_day - first_day).days + 1):
        day = first_day + timedelta(days=offset)
        window = schedule.days[day.weekday()]
        if window is None:
            continue
        opens = _instant(day, window.start, zone, latest=True)
        closes = _instant(day, window.end, zone, latest=False)
        if opens < closes:
            intervals.append((opens, closes))
    return intervals


def _earliest_open(per_zone: Sequence[list[_Interval]], now: datetime) -> datetime | None:
    """The earliest instant from `now` inside an interval of every zone, or None."""
    candidate = now
    while True:
        waited_for = candidate
        for intervals in per_zone:
            current = next((iv for iv in intervals if iv[1] > candidate), None)
            if current is None:
                return None
            waited_for = max(waited_for, current[0])
        if waited_for == candidate:
            return candidate
        candidate = waited_for


def _is_open(zone: ZoneInfo, schedule: Schedule, now: datetime) -> bool:
    return any(opens <= now < closes for opens, closes in _intervals(zone, schedule, now, now))


def _standard_offset(zone: ZoneInfo, now: datetime) -> timedelta:
    """The zone's offset without daylight saving, so the westernmost zone stays the same one
    through DST changes (and a deferral made in March still holds in April)."""
    local = now.astimezone(zone)
    return (local.utcoffset() or timedelta(0)) - (local.dst() or timedelta(0))


def _describe(zone: ZoneInfo, schedule: Schedule, now: datetime) -> str:
    local = now.astimezone(zone)
    window = schedule.days[local.weekday()]
    hours = "no marketing hours" if window is None else f"marketing hours {window}"
    return f"{local:%a %H:%M} in {zone.key}, {hours} under {schedule.source}"


def quiet_hours_in_zones(
    zone_names: Sequence[str],
    category: str,
    now: datetime,
    *,
    schedule: Schedule = FEDERAL,
    account_window: tuple[time, time] | None = None,
) -> Verdict:
    """The quiet-hours verdict for a recipient in all of `zone_names` (IANA names) at `now`.

    Any category but `transactional` is checked as marketing, so a new category is held to
    the stricter rule until someone decides otherwise.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if category == CATEGORY_TRANSACTIONAL or not zone_names:
        return ALLOW
    schedule = _restrict(schedule, account_window)
    if schedule.is_never_open():
        return Reject(
            CODE_NO_SENDING_WINDOW,
            RULE_QUIET_HOURS,
            f"{schedule.source} leave no hour of the week for marketing",
        )
    now = now.astimezone(UTC)
    zones = [ZoneInfo(name) for name in dict.fromkeys(zone_names)]
    closed = [zone for zone in zones if not _is_open(zone, schedule, now)]
    if not closed:
        return ALLOW
    # The look-ahead for a common opening runs SEARCH_DAYS past the westernmost zone's next
    # opening. That end only moves later as `now` does, so asking again at any instant before
    # the answer gives the same answer, and asking at the answer allows.
    westernmost = min(zones, key=lambda zone: (_standard_offset(zone, now), zone.key))
    horizon = now + timedelta(days=SEARCH_DAYS)
    fallback = _earliest_open([_intervals(westernmost, schedule, now, horizon)], now)
    if fallback is None:  # unreachable: a schedule open on some weekday opens within a week
        raise AssertionError(f"no opening within {SEARCH_DAYS} days under {schedule.source}")
    horizon = fallback + timedelta(days=SEARCH_DAYS)
    opens = _earliest_open([_intervals(zone, schedule, now, horizon) for zone in zones], now)
    if opens is not None:
        everywhere = "" if len(zones) == 1 else f" in all {len(zones)} zones"
        return Defer(
            opens,
            RULE_QUIET_HOURS,
            f"{_describe(closed[0], schedule, now)}; "
            f"open{everywhere} from {opens:%Y-%m-%d %H:%M} UTC",
        )
    if fallback == now:
        return ALLOW
    return Defer(
        fallback,
        RULE_QUIET_HOURS,
        f"the marketing hours of the number's {len(zones)} zones do not overlap in the "
        f"coming weeks, so the westernmost decides: {_describe(westernmost, schedule, now)}; "
        f"open there from {fallback:%Y-%m-%d %H:%M} UTC",
    )


def quiet_hours(
    number_e164: str,
    category: str,
    now: datetime,
    *,
    account_window: tuple[time, time] | None = None,
) -> Verdict:
    """Allow, or defer a marketing message to when the recipient's marketing window opens.

    `now` is passed in (aware); `account_window` is the account's own (start, end) local
    hours, which can only narrow the legal window.
    """
    if category == CATEGORY_TRANSACTIONAL:
        return ALLOW
    return quiet_hours_in_zones(
        zones_for_number(number_e164),
        category,
        now,
        schedule=schedule_for_number(number_e164),
        account_window=account_window,
    )

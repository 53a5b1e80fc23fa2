#!/usr/bin/env python3
"""Generates cron_reference.json: expected next fire times from Python's croniter.

An independent, widely used implementation checks ours (tests/cron_reference.rs).

Run from the repository root:

    pip install croniter==7.0.0
    python3 netscript-runtime/tests/data/gen_cron_reference.py > netscript-runtime/tests/data/cron_reference.json

The checked-in file was made with croniter 7.0.0 on CPython 3.11, zones from the system tz
database through zoneinfo.

Semantics, configured to match our contract:
- day_or=True (croniter's default): when both day fields are restricted a day matching either
  fires (POSIX/Vixie).
- second_at_beginning=True: a 6-field expression has the seconds first (croniter's default puts
  them last).
- A day field is unrestricted only when it is exactly `*`, in croniter (without
  implement_cron_bug) as in our contract: `*/2` or `1-31` is restricted and ORs with the other
  day field (cases `0 0 */2 * MON`, `0 0 1-31 * SUN` below).

Excluded (tested by hand in netscript-runtime/src/cron/tests.rs instead): any case whose search
window [start, 5th fire] holds a daylight-saving transition of its zone near which (within 3
hours of local time either side) the expression matches. croniter 7.0.0 agrees with us on
spring-forward gaps and on interval schedules in a repeated hour, but fires a fixed-time schedule
twice in a repeated hour (`30 1 * * *` in New York on 2025-11-02 at 05:30Z and 06:30Z), where our
contract fires once, at the first occurrence; excluding every case near a transition keeps the
table to what both implementations define the same way.
"""

import datetime as dt
import json
import sys
from zoneinfo import ZoneInfo

from importlib.metadata import version

from croniter import croniter

EXPRESSIONS = [
    "* * * * *",
    "*/5 * * * *",
    "*/15 9-17 * * *",
    "0 * * * *",
    "30 2 * * *",
    "0 0 * * *",
    "0 9 * * 1-5",
    "0 9 * * MON-FRI",
    "15 10 * * sat,Sun",
    "0 0 * * 7",
    "0 12 * * 5-7",
    "5,35 */3 * * *",
    "0 8-18/2 * * *",
    "10-20/5 4 * * *",
    "0 0 1 * *",
    "0 0 L * *",
    "30 23 L 2 *",
    "0 6 15,L * *",
    "0 0 1 * MON",
    "0 0 13 * FRI",
    "0 12 1-7 * 0",
    "0 0 */2 * MON",
    "0 0 1-31 * SUN",
    "0 0 29 2 *",
    "0 0 31 * *",
    "0 0 1 JAN,jul *",
    "0 0 1 */3 *",
    "45 17 * mar-may WED",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    "*/10 * * * * *",
    "30 0 12 * * *",
    "0 */30 * * * *",
    "15,45 10 9 * * 1-5",
    "0 0 0 L * *",
]

STARTS = [
    "2025-01-01T00:00:00Z",
    "2024-02-28T22:59:59Z",
    "2025-06-15T12:34:56Z",
    "2025-10-31T23:30:00Z",
]

ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Sydney"]

COUNT = 5


def transitions(zone, year_from=2023, year_to=2036):
    """UTC instants at which the zone's UTC offset changes, found by day scan then bisection."""
    utc = dt.timezone.utc
    result = []
    t = dt.datetime(year_from, 1, 1, tzinfo=utc)
    end = dt.datetime(year_to, 1, 1, tzinfo=utc)
    step = dt.timedelta(hours=12)
    offset = t.astimezone(zone).utcoffset()
    while t < end:
        nxt = t + step
        nxt_offset = nxt.astimezone(zone).utcoffset()
        if nxt_offset != offset:
            lo, hi = t, nxt
            while hi - lo > dt.timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).utcoffset() == offset:
                    lo = mid
                else:
                    hi = mid
            result.append(hi)
            offset = nxt_offset
        t = nxt
    return result


def matches_near(expr, transition, zone):
    """Whether the expression matches a local wall time within 3 hours of the transition."""
    before = (transition - dt.timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
    after = transition.astimezone(zone).replace(tzinfo=None)
    lo = min(before, after) - dt.timedelta(hours=3)
    hi = max(before, after) + dt.timedelta(hours=3)
    it = croniter(expr, lo, day_or=True, second_at_beginning=True)
    return it.get_next(dt.datetime) <= hi


def main():
    cases = []
    excluded = 0
    zone_transitions = {name: transitions(ZoneInfo(name)) for name in ZONES}
    for expr in EXPRESSIONS:
        for zone_name in ZONES:
            zone = ZoneInfo(zone_name)
            for start_text in STARTS:
                start = dt.datetime.fromisoformat(start_text.replace("Z", "+00:00"))
                it = croniter(expr, start.astimezone(zone), day_or=True, second_at_beginning=True)
                fires = [it.get_next(dt.datetime) for _ in range(COUNT)]
                last = fires[-1].astimezone(dt.timezone.utc)
                risky = [t for t in zone_transitions[zone_name] if start <= t <= last + dt.timedelta(hours=4)]
                if any(matches_near(expr, t, zone) for t in risky):
                    excluded += 1
                    continue
                cases.append(
                    {
                        "expression": expr,
                        "timezone": zone_name,
                        "start": start_text,
                        "next": [f.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") for f in fires],
                    }
                )
    json.dump(
        {
            "generator": "netscript-runtime/tests/data/gen_cron_reference.py",
            "croniter_version": version("croniter"),
            "excluded_near_dst_transitions": excluded,
            "cases": cases,
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")
    print(f"{len(cases)} cases, {excluded} excluded", file=sys.stderr)


if __name__ == "__main__":
    main()

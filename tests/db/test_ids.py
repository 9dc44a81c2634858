"""Storage: ids are time-ordered, and `id_floor` is the boundary the metadata purge reads the
primary key up to."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from amnex.db.ids import id_floor, looks_like_id, new_id


def test_ids_sort_in_the_order_they_were_made() -> None:
    made = []
    for _ in range(5):
        made.append(new_id("msg"))
        time.sleep(0.002)
    assert made == sorted(made)
    assert all(looks_like_id(i, "msg") for i in made)


def test_every_id_made_before_a_moment_sorts_below_its_floor_and_every_later_one_above() -> None:
    before = new_id("msg")
    time.sleep(0.002)
    moment = datetime.now(UTC)
    time.sleep(0.002)
    after = new_id("msg")

    floor = id_floor("msg", moment)

    assert looks_like_id(floor, "msg")
    assert before < floor <= after
    assert id_floor("msg", moment - timedelta(days=365)) < before
    assert id_floor("msg", moment + timedelta(minutes=1)) > after

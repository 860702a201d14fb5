"""Soak: 200 sessions in 10 waves against one replica (some closed by the client, some left to expire by the TTL):
no session stays in the store, and the replica's RSS stays within 10 % of its level after the first waves (a
replica that kept per-session state would grow with every wave)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from serve_stack import start_service  # noqa: E402

from drivetune.tfrecord import read_records  # noqa: E402
from services.loadgen import lockstep, soak  # noqa: E402

TTL_S = 6.0  # long enough that a loaded 2-core machine never expires a session between its own calls
MAX_STEPS = 8  # per session: the soak's sessions take 4, the lockstep load more than that in all


@pytest.mark.slow
def test_two_hundred_sessions_in_waves_leave_no_session_and_no_growth(ray_local, tmp_path, womd_637):
    from ray import serve

    stack = start_service(womd_637, tmp_path, name="soak", session_ttl_s=TTL_S, max_sessions=64, max_steps=MAX_STEPS)
    try:
        # scenes by id (parsed once): parsing a scenario per create holds the replica's GIL for seconds on a loaded
        # 2-core machine, long enough for another thread's session to pass its TTL between its own calls
        report = soak(stack.url, None, waves=10, per_wave=20, expire_every=4, steps=3, ttl_s=TTL_S, threads=2,
                      scenario_id=stack.scenario_id)
        # the load generator outlasts the service's step limit by swapping sessions (bench/serve.py --load)
        payload = next(read_records(womd_637))[1]
        load = lockstep(stack.url, payload, sessions=2, period_s=0.25, duration_s=6.0, steps_per_session=MAX_STEPS - 2)
    finally:
        serve.shutdown()
    rss = [w.rss_bytes / 2**20 for w in report.waves]
    print("RSS MiB after each wave:", " ".join(f"{r:.0f}" for r in rss))
    assert report.sessions == 200 and sum(w.left_to_expire for w in report.waves) == 50
    assert [w.open_after for w in report.waves] == [0] * 10  # closed and expired sessions all left the store
    assert [w.maps_held for w in report.waves] == [0] * 10  # ... and released their engine state
    assert report.expired_404 == 50  # the idle ones expired (404 "expired"), not closed
    # "no growth": the median of the last three waves against the median of waves 2-4 (the first wave still sizes
    # thread pools and batch buffers). The replica returns closed sessions' heap to the OS (store.release_free_heap),
    # so its RSS follows what it holds: quiet runs read 532 494 515 496 507 516 497 498 491 498 and 487 513 520 532
    # 513 514 502 550 534 523 MiB (without the release one full-suite run read 741 ... 883 819 885); 1 MiB leaked per
    # session read 536 530 597 582 602 602 623 643 665 708 (665 against 582: +14 %)
    warm, late = sorted(rss[1:4])[1], sorted(rss[-3:])[1]
    assert late <= 1.10 * warm, rss
    assert load["steps"] > 2 * MAX_STEPS  # more steps than two sessions could take without a swap

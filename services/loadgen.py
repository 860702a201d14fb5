"""Load for a running simulation service, over HTTP: session churn in waves (the soak: does a replica give its memory
back?) and paced lockstep stepping (the load: which step rate keeps p99 latency under a bound?). Used by
tests/integration/test_soak.py and bench/serve.py; point it at any deployment with `SimAgentsClient`."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from drivetune.client import ClientSession, ServiceCallError, SimAgentsClient


@dataclass
class WaveReport:
    """One wave: sessions opened / closed by the client / left to expire, and the replica after it."""

    opened: int
    closed: int
    left_to_expire: int
    steps: int
    rss_bytes: int
    open_after: int
    maps_held: int  # scene maps the replica's engines still hold (0 once every session is closed or expired)


@dataclass
class SoakReport:
    waves: list[WaveReport] = field(default_factory=list)
    expired_404: int = 0  # sessions left open that answered 404 "expired" afterwards

    @property
    def sessions(self) -> int:
        return sum(w.opened for w in self.waves)


def _settle(client: SimAgentsClient, ttl_s: float) -> None:
    """Wait out the TTL, then make a call that runs the replica's expiry (a GET of an unknown session: 404)."""
    time.sleep(ttl_s + 0.5)
    try:
        client.request("GET", "/v1/sessions/soak-expiry-probe", session_id="soak-expiry-probe")
    except ServiceCallError as e:
        if e.status != 404:
            raise


def soak(url: str, scenario: bytes | None, waves: int, per_wave: int, expire_every: int, steps: int, ttl_s: float,
         threads: int = 4, api_key: str | None = None, scenario_id: str | None = None) -> SoakReport:
    """`waves` waves of `per_wave` sessions, `threads` at a time: create, `steps` steps (all agents policy-driven),
    then close, except every `expire_every`-th session, left idle to expire by the TTL. After each wave the TTL is
    waited out and the replica's RSS and open-session count are read from /v1/model and /healthz. The scene is
    `scenario` (bytes, parsed by the replica on every create) or `scenario_id` (from the replica's store)."""
    report = SoakReport()
    left: list[ClientSession] = []
    with SimAgentsClient(url, api_key=api_key) as admin:
        for wave in range(waves):
            lock, counts = threading.Lock(), {"closed": 0, "steps": 0}
            kept: list[ClientSession] = []

            def one(i: int) -> None:
                with SimAgentsClient(url, api_key=api_key) as client:
                    session = client.create_session(scenario_bytes=scenario, scenario_id=scenario_id,
                                                    external_ids=[], seed=i)
                    for _ in range(steps):
                        session.step()
                    with lock:
                        counts["steps"] += steps
                        if i % expire_every == 0:
                            kept.append(ClientSession(admin, session.info))
                        else:
                            session.close()
                            counts["closed"] += 1

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(wave * per_wave, (wave + 1) * per_wave)))
            _settle(admin, ttl_s)
            left += kept
            model, health = admin.model(), admin.request("GET", "/healthz").json()
            report.waves.append(WaveReport(per_wave, counts["closed"], len(kept), counts["steps"],
                                           int(model["replica_rss_bytes"]), int(health["sessions"]),
                                           int(model["engine_maps_held"])))
        for session in left:
            try:
                session.get()
            except ServiceCallError as e:
                report.expired_404 += e.status == 404 and "expired" in str(e.detail)
    return report


def lockstep(url: str, scenario: bytes, sessions: int, period_s: float, duration_s: float,
             api_key: str | None = None, steps_per_session: int = 150) -> dict:
    """`sessions` sessions stepped in lockstep, one step each every `period_s` (ticks on a shared clock, as
    simulators stepping together), for `duration_s`: offered and achieved step rate, latency percentiles (ms) and
    missed ticks (a step still running when its next tick came). A session that has taken `steps_per_session` steps
    is closed and a new one opened in its place (a simulator moving to its next scenario; the swap is not timed),
    so runs may outlast the service's per-session step limit."""
    clients = [SimAgentsClient(url, api_key=api_key) for _ in range(sessions)]

    def fresh(k: int, seed: int) -> ClientSession:
        session = clients[k].create_session(scenario_bytes=scenario, external_ids=[], seed=seed)
        session.step()  # the first step returns the creation's sample; not part of the load
        return session

    opened = [fresh(k, k) for k in range(sessions)]
    latencies: list[list[float]] = [[] for _ in range(sessions)]
    missed = [0] * sessions
    start = time.perf_counter() + 0.2

    def run(k: int) -> None:
        tick, taken, swaps = 0, 1, 0
        while True:
            due = start + tick * period_s
            if due - start >= duration_s:
                return
            if taken >= steps_per_session:
                opened[k].close()
                swaps += 1
                opened[k], taken = fresh(k, k + swaps * sessions), 1
                tick = max(tick, math.ceil((time.perf_counter() - start) / period_s))  # the swap's ticks: not missed
                continue
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            t0 = time.perf_counter()
            opened[k].step()
            latencies[k].append(time.perf_counter() - t0)
            taken += 1
            nxt = max(tick + 1, math.ceil((time.perf_counter() - start) / period_s))  # ticks passed meanwhile
            missed[k] += nxt - tick - 1
            tick = nxt

    errors: list[BaseException] = []

    def guarded(k: int) -> None:  # a failed step ends the run with its error, not a silently shorter sample
        try:
            run(k)
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread below)
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    wall = time.perf_counter() - start
    for s, c in zip(opened, clients):
        s.close()
        c.close()
    ms = np.asarray([x for lat in latencies for x in lat]) * 1e3
    return {"sessions": sessions, "offered": sessions / period_s, "achieved": len(ms) / wall, "steps": len(ms),
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
            "missed_ticks": sum(missed)}

"""Evaluate every panel query of a Grafana dashboard through a Prometheus server, as Grafana would draw it: a range
query over a time window, dashboard variables replaced by their "All" value. A panel whose query returns no series
with data shows nothing: a bug in the dashboard or in the metrics.

    python -m cluster.dashboard_check deploy/grafana/drivetune.json --prometheus http://127.0.0.1:9090 [--minutes 15]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel (rows' nested panels included), variables replaced by
    their "All" regex (`.*`)."""
    values = {v["name"]: v.get("allValue", ".*") for v in dashboard.get("templating", {}).get("list", [])
              if v.get("type") == "query"}
    out = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr:
                expr = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)
                out.append((panel.get("title", "?"), expr))
    return out


def query_range(prometheus: str, expr: str, start: float, end: float, step_s: float = 5.0) -> list[dict]:
    """The result series of a PromQL range query (Prometheus HTTP API); raises naming the query on an error."""
    args = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"})
    try:
        with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{args}", timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"Prometheus refused {expr!r}: {e.read().decode(errors='replace')[:300]}") from None
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
    return body["data"]["result"]


def series_per_query(prometheus: str, dashboard: dict, start: float, end: float) -> list[tuple[str, str, int]]:
    """(panel title, PromQL, series with at least one value) for every panel query."""
    out = []
    for title, expr in panel_queries(dashboard):
        series = query_range(prometheus, expr, start, end)
        out.append((title, expr, sum(1 for s in series if s.get("values"))))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.dashboard_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dashboard", type=Path)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15.0, help="the time window, ending now")
    args = parser.parse_args(argv)
    end = time.time()
    rows = series_per_query(args.prometheus, json.loads(args.dashboard.read_text()), end - 60 * args.minutes, end)
    for title, expr, n in rows:
        print(f"{n:>4} series  {title}: {expr}")
    empty = [r for r in rows if r[2] == 0]
    print(f"{len(rows) - len(empty)} of {len(rows)} panel queries return data")
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())

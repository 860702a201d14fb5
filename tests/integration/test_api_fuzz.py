"""The simulation service against its own published OpenAPI schema, over real HTTP on 127.0.0.1: schemathesis (every
operation, every check, stateful links create -> get / step / delete) must find nothing, and each contract failure it
once found stays pinned by a plain request below."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from serve_stack import start_service  # noqa: E402

KEY_ENV, KEY = "DT_FUZZ_TEST_KEY", "fuzz-key-0b7e"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIN_REQUESTS = 1000
MAX_EXAMPLES = 90  # per operation and phase: about 1,300 requests on this service (docs/benchmarks.md)

# A schema-valid request may still be refused with 422 by rules a JSON schema cannot state: the scenario bytes must be
# a WOMD Scenario, a scenario_id must be in the store, external states must name the session's external agents, and
# the routing header must equal the path's session id. Every other check runs as schemathesis ships it.
CONFIG = """
[dictionaries.scenarios]
values = ["{scenario_id}"]

[parameters]
"body.scenario_id" = {{ dictionary = "scenarios", probability = 0.5 }}

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "404", "409", "422", "429"]
"""


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory, womd_637):
    from ray import serve

    stack = start_service(womd_637, tmp_path_factory.mktemp("fuzz"), name="fuzz", api_key_env=KEY_ENV, api_key=KEY,
                          max_rollouts=2, max_sessions=32, session_ttl_s=60.0)
    yield stack
    serve.shutdown()


def _schemathesis(args: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """The schemathesis CLI of this virtualenv, run in `cwd` (it keeps a cache folder there)."""
    exe = Path(sys.executable).parent / "schemathesis"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout_s, cwd=cwd)


@pytest.mark.slow
def test_schemathesis_finds_no_contract_failure(service, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(scenario_id=service.scenario_id))
    reports = tmp_path / "reports"
    done = _schemathesis(["--config-file", str(config), "run", f"{service.url}/openapi.json",
                          "-H", f"Authorization: Bearer {KEY}", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
                          "--seed", "25", "--workers", "1", "--request-timeout", "60", "--report", "json,har",
                          "--report-dir", str(reports)], cwd=tmp_path, timeout_s=540)
    report = json.loads(next(reports.glob("json-*.json")).read_text())
    entries = json.loads(next(reports.glob("har-*.json")).read_text())["log"]["entries"]
    summary = f"{len(entries)} requests; failures {report['failures']}; errors {report['errors']}"
    print(summary)
    assert done.returncode == 0, done.stdout[-6000:]
    assert report["failures"] == [] and report["errors"] == [], summary
    assert report["operations"]["tested"] == report["operations"]["total"] == 7
    assert {k: v["status"] for k, v in report["phases"].items() if k != "examples"} == \
        {"coverage": "success", "fuzzing": "success", "stateful": "success"}
    assert len(entries) >= MIN_REQUESTS
    seen = {(e["request"]["method"], e["request"]["url"].endswith("/step"), e["response"]["status"]) for e in entries}
    assert ("POST", False, 201) in seen and ("POST", True, 200) in seen  # links reached real sessions
    assert not any(e["response"]["status"] >= 500 for e in entries)


# --------------------------------------------------------------------- the failures schemathesis found, kept as cases
def _documented(openapi: dict, method: str, path: str, resp: httpx.Response) -> None:
    """The response's status is documented for the operation and its JSON body matches the documented schema."""
    responses = openapi["paths"][path][method.lower()]["responses"]
    assert str(resp.status_code) in responses, (resp.status_code, sorted(responses))
    schema = responses[str(resp.status_code)]["content"]["application/json"]["schema"]
    assert resp.headers["content-type"] == "application/json"
    jsonschema.validate(resp.json(), {**schema, "components": openapi["components"]})


def _call(service, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, service.url + path, headers={**AUTH, **kw.pop("headers", {})}, timeout=60, **kw)


@pytest.mark.slow
def test_found_cases_answer_as_documented(service):
    openapi = _call(service, "GET", "/openapi.json").json()
    assert "HTTPValidationError" not in openapi["components"]["schemas"]  # one error model: Problem
    create = "/v1/sessions"
    cases = [  # (method, path template, path, request kwargs, expected status, words in detail)
        ("POST", create, create, {"json": {"sampler": {"k": 0}, "scenario_id": "x"}}, 422, "sampler.k"),
        ("POST", create, create, {}, 422, "body"),  # no body at all: schemathesis' first finding
        ("POST", create, create, {"json": {}}, 422, "scenario"),  # neither scenario nor scenario_id
        ("POST", create, create, {"json": {"scenario": None, "scenario_id": service.scenario_id}}, 422, "null"),
        ("POST", create, create, {"content": b"3=}k\xff", "headers": {"content-type": "application/json"}}, 400,
         "parsing the body"),
        ("POST", "/v1/rollouts", "/v1/rollouts", {"json": {"scenario_id": "x", "num_rollouts": 0}}, 422,
         "num_rollouts"),
        ("GET", "/v1/sessions/{session_id}", "/v1/sessions/0", {}, 404, "unknown session"),
        ("DELETE", "/v1/sessions/{session_id}", "/v1/sessions/0", {}, 404, "unknown session"),
        ("POST", "/v1/sessions/{session_id}/step", "/v1/sessions/0/step", {"json": {}}, 404, "unknown session"),
        ("POST", "/v1/sessions/{session_id}/step", "/v1/sessions/0/step", {"json": {}, "headers":
         {"x-session-id": "1"}}, 422, "differs"),
    ]
    for method, template, path, kw, status, words in cases:
        resp = _call(service, method, path, **kw)
        assert resp.status_code == status, (method, path, kw, resp.status_code, resp.text)
        _documented(openapi, method, template, resp)
        assert words in resp.json()["detail"], (words, resp.text)
    gone = _call(service, "OPTIONS", "/v1/sessions/0")  # two routes share the path: Allow names both
    assert gone.status_code == 405 and set(gone.headers["allow"].split(", ")) >= {"GET", "DELETE"}
    assert isinstance(gone.json()["detail"], str)
    created = _call(service, "POST", create, json={"scenario_id": service.scenario_id})
    _documented(openapi, "POST", create, created)
    links = openapi["paths"][create]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} == {"get_session", "step_session", "delete_session"}
    assert _call(service, "DELETE", f"/v1/sessions/{created.json()['session_id']}").status_code == 204

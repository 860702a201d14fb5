"""`SimAgentsClient`: a Python client of the closed-loop simulation service (`drivetune serve`), over httpx.

    client = SimAgentsClient("http://127.0.0.1:8000", api_key=os.environ.get("DRIVETUNE_API_KEY"))
    session = client.create_session(scenario_bytes=open(path, "rb").read())   # or scenario_id=...; SDC external
    out = session.step()                                   # first step: the next 0.5 s of every other agent
    out = session.step({sdc_id: {"x": [...5], "y": [...], "heading": [...]}})  # then: the SDC's last 0.5 s
    session.close()

Every call of a session sends its id in the `x-session-id` header (the service routes a session to the replica that
holds it). 429 (session cap, honouring Retry-After) and 503 are retried with back-off; other errors raise
`ServiceCallError` with the status and the service's message.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import httpx

SESSION_HEADER = "x-session-id"
RETRY_STATUS = (429, 503)


class ServiceCallError(RuntimeError):
    """A refused or failed call: `status` and the service's `detail`."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class SimAgentsClient:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 60.0, retries: int = 5,
                 backoff_s: float = 0.5) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.retries, self.backoff_s = retries, backoff_s

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "SimAgentsClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, session_id: str | None = None, **kwargs) -> httpx.Response:
        """One call with retries on 429/503 (waiting Retry-After when given); raises ServiceCallError otherwise."""
        headers = dict(kwargs.pop("headers", {}))
        if session_id:
            headers[SESSION_HEADER] = session_id
        for attempt in range(self.retries + 1):
            resp = self.http.request(method, path, headers=headers, **kwargs)
            if resp.status_code not in RETRY_STATUS or attempt == self.retries:
                break
            after = resp.headers.get("retry-after", "")
            time.sleep(float(after) if after.replace(".", "", 1).isdigit() else self.backoff_s * 2 ** attempt)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail")
            except ValueError:
                detail = resp.text
            raise ServiceCallError(resp.status_code, detail)
        return resp

    def model(self) -> dict:
        return self.request("GET", "/v1/model").json()

    def health(self) -> dict:
        return self.request("GET", "/healthz").json()

    @staticmethod
    def _scene(scenario_bytes: bytes | None, scenario_id: str | None) -> dict:
        if (scenario_bytes is None) == (scenario_id is None):
            raise ValueError("give exactly one of scenario_bytes and scenario_id")
        if scenario_id is not None:
            return {"scenario_id": scenario_id}
        return {"scenario": base64.b64encode(scenario_bytes).decode()}

    def create_session(self, scenario_bytes: bytes | None = None, scenario_id: str | None = None,
                       external_ids: list[int] | None = None, sampler: dict | None = None, seed: int = 0,
                       session_id: str | None = None) -> "ClientSession":
        """Start a session (external_ids default: the SDC; sampler default: Warm-K)."""
        body: dict[str, Any] = {**self._scene(scenario_bytes, scenario_id), "seed": seed}
        if external_ids is not None:
            body["external_ids"] = [int(i) for i in external_ids]
        if sampler is not None:
            body["sampler"] = sampler
        sid = session_id or uuid.uuid4().hex
        info = self.request("POST", "/v1/sessions", session_id=sid, json=body).json()
        return ClientSession(self, info)

    def rollouts(self, scenario_bytes: bytes | None = None, scenario_id: str | None = None, num_rollouts: int = 32,
                 sampler: dict | None = None, seed: int = 0, sdc: str = "policy", proto: bool = False):
        """Whole 8 s rollouts: the JSON dict, or the serialized ScenarioRollouts proto bytes with proto=True."""
        body = {**self._scene(scenario_bytes, scenario_id), "num_rollouts": num_rollouts, "seed": seed, "sdc": sdc}
        if sampler is not None:
            body["sampler"] = sampler
        headers = {"Accept": "application/x-protobuf"} if proto else {}
        resp = self.request("POST", "/v1/rollouts", json=body, headers=headers)
        return resp.content if proto else resp.json()


class ClientSession:
    """One open session: `info` is the creation response (object_ids, external_ids, policy_version, ...)."""

    def __init__(self, client: SimAgentsClient, info: dict) -> None:
        self.client, self.info, self.id = client, info, info["session_id"]

    def step(self, external_states: dict[int, dict[str, list[float]]] | None = None) -> dict:
        """Send the external agents' last 0.5 s (5 poses at 10 Hz each; the first step may send none) and get the
        next 0.5 s of every policy-driven agent."""
        states = {str(k): {f: [float(v) for v in p[f]] for f in ("x", "y", "heading")}
                  for k, p in (external_states or {}).items()}
        return self.client.request("POST", f"/v1/sessions/{self.id}/step", session_id=self.id,
                                   json={"external_states": states}).json()

    def get(self) -> dict:
        return self.client.request("GET", f"/v1/sessions/{self.id}", session_id=self.id).json()

    def close(self) -> None:
        self.client.request("DELETE", f"/v1/sessions/{self.id}", session_id=self.id)

"""The closed-loop simulation service: FastAPI behind `@serve.ingress`, one `SessionStore` per replica.

Sessions stay on the replica that created them: every call carries the session id in the `x-session-id` header and
the deployment routes with a consistent-hash router (strict affinity, `services.routing`); AlpaSim gRPC sessions
(`services.traffic`, `services.grpc_front`) are routed the same way by their uuid. Concurrent steps of different
sessions are batched (`@serve.batch`) into one forward. The checkpoint is the deployment's `user_config`
({checkpoint, version}); `reconfigure` loads new weights in place: open sessions keep their policy version, new
sessions get the new one. OpenAPI at /docs.
"""


import asyncio
import os
import time
from dataclasses import asdict
from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic.json_schema import SkipJsonSchema
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.metrics import Counter, Gauge, Histogram

from drivetune.config import from_dict
from drivetune.realism.submission import to_scenario_rollouts
from drivetune.womd import scene_from_bytes
from services.serve_config import ServeConfig
from services.contract import SESSION_HEADER, errors, install, session_links
from services.guard import Guard, configure_guard
from services.routing import ROUTER, ReplicaHeader
from services.schemas import Created, CreateSession, RolloutsRequest, RolloutsResult, SceneRequest, SessionInfo, \
    StepRequest, StepResult
from services.store import ServiceError, SessionStore, invalid
from services.traffic import TrafficMixin

PROTOBUF = "application/x-protobuf"

api = FastAPI(title="drivetune sim agents", version="1",
              description="Closed-loop traffic agents: start a session on a WOMD scenario, then step it every 0.5 s.")


api.add_middleware(Guard)
api.add_middleware(ReplicaHeader)
install(api)
RoutingHeader = Annotated[str | SkipJsonSchema[None], Header(
    alias=SESSION_HEADER, max_length=256, description="the session id: the routing key that keeps a session on its "
                                                      "replica (send it on create too, and on every call after)")]


@api.exception_handler(ServiceError)
async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


def _session_header(header: str | None, session_id: str | None) -> str | None:
    """The x-session-id header; on a session's calls it must name that session (it is the routing key)."""
    if session_id is not None and header is not None and header != session_id:
        raise invalid(f"the {SESSION_HEADER} header ({header!r}) differs from the session id in the path")
    return header


@serve.deployment
@serve.ingress(api)
class SimAgents(TrafficMixin):
    def __init__(self, config: dict) -> None:
        self.cfg = from_dict(ServeConfig, config, where="serve config").validate()
        key = b""
        if self.cfg.api_key_env:
            value = os.environ.get(self.cfg.api_key_env, "")
            if not value:
                raise RuntimeError(f"api_key_env names {self.cfg.api_key_env}, which is unset or empty in the replica")
            key = value.encode()
        configure_guard(key, self.cfg.max_body_bytes)
        self.store = SessionStore(self.cfg)
        self.step_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self.m_sessions = Gauge("drivetune_active_sessions", description="open sessions on this replica")
        self.m_latency = Histogram("drivetune_step_latency_ms", description="step request latency in the replica",
                                   boundaries=[1, 2, 5, 10, 20, 30, 50, 100, 200, 500, 1000, 5000])
        self.m_batch = Histogram("drivetune_batch_size", description="session steps per batched forward",
                                 boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.m_errors = Counter("drivetune_rejected_requests", description="requests refused, by status",
                                tag_keys=("status",))
        self._tune_batch()

    async def reconfigure(self, user_config: dict) -> None:
        """user_config {checkpoint, version}: load the weights for new sessions (open sessions keep theirs)."""
        unknown = set(user_config) - {"checkpoint", "version"}
        if unknown or "checkpoint" not in user_config:
            raise ValueError(f"user_config needs {{checkpoint, version}}; got keys {sorted(user_config)}")
        version = user_config.get("version")
        await asyncio.to_thread(self.store.set_policy, str(user_config["checkpoint"]),
                                None if version is None else int(version))

    def _tune_batch(self) -> None:
        """A batch fires once every active session has sent its step (simulators step in lockstep), or at the batch
        timeout: max_batch_size follows the sessions that stepped within `active_window_s` (at most the configured
        size), so a lone session never waits and an idle one does not hold the others back."""
        active = self.store.active(self.cfg.active_window_s)
        self.step_batch.set_max_batch_size(max(1, min(self.cfg.max_batch_size, active)))
        self.m_sessions.set(self.store.count())

    def check_health(self) -> None:
        self.store.current()

    def _count(self, exc: ServiceError) -> ServiceError:
        self.m_errors.inc(tags={"status": str(exc.status)})
        return exc

    async def _scene(self, body: SceneRequest):
        try:
            payload = body.scenario_bytes()
        except ValueError as e:
            raise invalid(str(e)) from None
        if body.scenario_id is not None:
            return await asyncio.to_thread(self.store.scene_by_id, body.scenario_id)
        try:
            return await asyncio.to_thread(scene_from_bytes, payload, "scenario")
        except ValueError as e:
            raise invalid(str(e)) from None

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok" if self.store.policy else "loading", "sessions": self.store.count()}

    @api.get("/v1/model", responses=errors(401, 503))
    async def model(self) -> dict:
        """Checkpoint, policy version, vocab hash, size; open sessions by version; scene maps the engines hold (one per
        open session: a higher count is a leak); this replica's RSS (closed sessions' heap is returned to the OS within
        `TRIM_EVERY_S` of the next call) and CPU time."""
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return {**self.store.model_info(), "replica_rss_bytes": rss, "replica_cpu_s": time.process_time()}

    @api.post("/v1/sessions", status_code=201, response_model=Created, operation_id="create_session",
              responses={201: {"links": session_links()}, **errors(400, 401, 409, 413, 422, 429, 503)})
    async def create(self, body: CreateSession, request: Request, x_session_id: RoutingHeader = None) -> dict:
        try:
            sid = _session_header(x_session_id, None)
            scene = await self._scene(body)
            out = await asyncio.to_thread(self.store.create, scene, body.external_ids, body.sampler.config(),
                                          body.seed, sid)
        except ServiceError as e:
            raise self._count(e)
        self._tune_batch()
        return out

    @api.get("/v1/sessions/{session_id}", response_model=SessionInfo, operation_id="get_session",
             responses=errors(401, 404, 409, 422))
    async def get(self, session_id: str, request: Request, x_session_id: RoutingHeader = None) -> dict:
        _session_header(x_session_id, session_id)
        return await asyncio.to_thread(self.store.get, session_id)

    @api.delete("/v1/sessions/{session_id}", status_code=204, operation_id="delete_session",
                responses=errors(401, 404, 409, 422))
    async def delete(self, session_id: str, request: Request, x_session_id: RoutingHeader = None) -> Response:
        _session_header(x_session_id, session_id)
        await asyncio.to_thread(self.store.delete, session_id)
        self._tune_batch()
        return Response(status_code=204)

    @api.post("/v1/sessions/{session_id}/step", response_model=StepResult, operation_id="step_session",
              responses=errors(400, 401, 404, 409, 413, 422))
    async def step(self, session_id: str, body: StepRequest, request: Request,
                   x_session_id: RoutingHeader = None) -> dict:
        start = time.perf_counter()
        _session_header(x_session_id, session_id)
        self.store.touch(session_id)  # a step queued behind a slow batch must not find its session expired
        states = {k: v.model_dump() for k, v in body.external_states.items()}
        self._tune_batch()
        out = await self.step_batch((session_id, states))
        if isinstance(out, ServiceError):
            raise self._count(out)
        self.m_latency.observe((time.perf_counter() - start) * 1e3)
        return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def step_batch(self, items: list[tuple[str, dict]]) -> list:
        self.m_batch.observe(len(items))
        out = await asyncio.to_thread(self.store.step_many, items)
        self._tune_batch()  # sessions may have expired
        return out

    @api.post("/v1/rollouts", response_model=RolloutsResult,
              responses={200: {"content": {PROTOBUF: {}}, "description": "JSON, or a ScenarioRollouts proto"},
                         **errors(400, 401, 413, 422, 503)})
    async def rollouts(self, body: RolloutsRequest, request: Request) -> Response:
        scene = await self._scene(body)
        ro, version = await asyncio.to_thread(self.store.rollouts, scene, body.num_rollouts, body.sampler.config(),
                                              body.seed, body.sdc)
        if PROTOBUF in request.headers.get("accept", ""):
            proto = to_scenario_rollouts(scene.scenario_id, ro)
            return Response(proto.SerializeToString(), media_type=PROTOBUF)
        return JSONResponse({"scenario_id": scene.scenario_id, "policy_version": version,
                             "object_ids": ro.object_id.tolist(), "x": ro.x.tolist(), "y": ro.y.tolist(),
                             "z": ro.z.tolist(), "heading": ro.heading.tolist()})


def deployment_options(cfg: ServeConfig) -> dict:
    """Serve options of the deployment from the config: replicas, CPUs, concurrency >= batch size, routing."""
    return {"num_replicas": cfg.replicas, "ray_actor_options": {"num_cpus": cfg.replica_cpus},
            "max_ongoing_requests": max(cfg.max_ongoing_requests, cfg.max_batch_size),
            "request_router_config": RequestRouterConfig(request_router_class=ROUTER,
                                                         request_router_kwargs={"num_fallback_replicas": 0})}


def build_app(args: dict):
    """Application builder (import path `services.app:build_app`, see configs/serve.yaml): `args` are ServeConfig
    keys, optionally with the initial `checkpoint` and `version`; a config's deployment `user_config` overrides them
    (changing only the user_config then swaps the model in place)."""
    args = dict(args)
    checkpoint, version = args.pop("checkpoint", None), args.pop("version", None)
    cfg = from_dict(ServeConfig, args, where="serve app args").validate()
    opts = deployment_options(cfg)
    if checkpoint:
        opts["user_config"] = {"checkpoint": str(checkpoint), "version": version}
    return SimAgents.options(**opts).bind(asdict(cfg))

"""JSON bodies of the simulation service (pydantic; FastAPI turns schema errors into 422s naming the field)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from drivetune.rollout_config import SAMPLERS, SDC_MODES_OFFLINE
from drivetune.samplers import SamplerConfig

Finite = Annotated[float, Field(allow_inf_nan=False)]
Poses = Annotated[list[Finite], Field(max_length=5)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """The body of every error response (4xx and 5xx): what was wrong, in words."""

    detail: str


class Sampler(Strict):
    """Token sampler: Warm-K by default (top-K scored by logit - warm_lambda * distance to constant motion)."""

    kind: Literal[SAMPLERS] = "warmk"  # a tuple subscript: Literal["topk", "catk", ...]
    k: int = Field(32, ge=1, le=4096)
    temperature: Finite = Field(1.0, gt=0)
    warm_lambda: Finite = Field(1.0, ge=0)

    def config(self) -> SamplerConfig:
        return SamplerConfig(self.kind, self.k, self.temperature, self.warm_lambda)


class SceneRequest(Strict):
    """One scene: `scenario` (base64 of a serialized WOMD Scenario proto) or `scenario_id` (from the store), exactly
    one of them (null is not a value: leave the other field out)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["scenario"]}, {"required": ["scenario_id"]}]})
    scenario: str | SkipJsonSchema[None] = Field(None, description="base64 of one serialized WOMD Scenario proto")
    scenario_id: str | SkipJsonSchema[None] = Field(None, max_length=128,
                                                    description="a scenario of the configured store")
    sampler: Sampler = Field(default_factory=Sampler)
    seed: int = Field(0, ge=0, lt=2**63)

    @field_validator("scenario", "scenario_id", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:  # only an explicit null reaches here (an absent field keeps its default)
            raise ValueError("null is not allowed: leave the field out")
        return value

    def scenario_bytes(self) -> bytes:
        if (self.scenario is None) == (self.scenario_id is None):
            raise ValueError("send exactly one of `scenario` (base64 Scenario proto) and `scenario_id`")
        try:
            return base64.b64decode(self.scenario or "", validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"scenario is not valid base64 ({e})") from None


class CreateSession(SceneRequest):
    external_ids: list[int] | None = Field(None, max_length=1024,
                                           description="object ids the caller drives (default: the SDC)")


class SessionInfo(BaseModel):
    session_id: str
    scenario_id: str
    object_ids: list[int]
    external_ids: list[int]
    steps: int
    policy_version: int
    sampler: dict
    seed: int


class Created(SessionInfo):
    step_seconds: float
    steps_per_token: int
    current_time_index: int


class AgentPoses(Strict):
    """One external agent over the last 0.5 s at 10 Hz (5 poses; the first step may send only the current pose)."""

    x: Poses
    y: Poses
    heading: Poses


class StepRequest(Strict):
    external_states: dict[str, AgentPoses] = Field(default_factory=dict, max_length=1024)


class StepResult(BaseModel):
    """Per policy-driven agent the 5 poses (10 Hz) of the next 0.5 s; `token_index` counts the session's steps."""

    session_id: str
    token_index: int
    policy_version: int
    batch_size: int = Field(description="session steps computed in the same forward (0: the first step's sample)")
    object_ids: list[int]
    x: list[list[float]]
    y: list[list[float]]
    z: list[list[float]]
    heading: list[list[float]]


class RolloutsRequest(SceneRequest):
    num_rollouts: int = Field(32, ge=1)
    sdc: Literal[SDC_MODES_OFFLINE] = "policy"


class RolloutsResult(BaseModel):
    """R whole rollouts: [R][A][80] per field, agents in `object_ids` order (the realism CLI's npz layout)."""

    scenario_id: str
    policy_version: int
    object_ids: list[int]
    x: list[list[list[float]]]
    y: list[list[list[float]]]
    z: list[list[list[float]]]
    heading: list[list[list[float]]]

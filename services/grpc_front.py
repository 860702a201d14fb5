"""AlpaSim's `TrafficService` over gRPC: a grpcio server that hands every call to the SimAgents deployment.

Why a grpcio front rather than Ray Serve's gRPC ingress: AlpaSim's runtime sends the session only inside the message
(`session_uuid`), with no `session_id` or `application` metadata, so Serve's gRPC proxy could not route a session to
the replica holding it; the front reads the uuid and calls the deployment handle with `session_id=uuid`, the same key
the consistent-hash router uses for HTTP's `x-session-id`. It also keeps the generated stubs out of the Serve proxy
(they are generated at run time, not installed) and lets every refusal carry its own status code and message.
Replicas take plain Python data (no protos); the answering replica's id is sent as trailing metadata
`x-drivetune-replica`. The API key (if configured) is `authorization: Bearer KEY` metadata; requests larger than
`max_body_bytes` are refused by gRPC itself (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import hmac
import logging
from concurrent import futures

import grpc
import numpy as np

from services.alpasim_stubs import load

log = logging.getLogger("drivetune.grpc")
REPLICA_KEY = "x-drivetune-replica"
API_VERSION = (0, 1, 0)


def yaw_of(q) -> float:
    """Rotation about z of a unit quaternion (w, x, y, z)."""
    return float(np.arctan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z)))


def trajectory_array(traj) -> np.ndarray:
    """A Trajectory as [n, 5] float64 (t_us, x, y, z, yaw), in the order given."""
    return np.asarray([(p.timestamp_us, p.pose.vec.x, p.pose.vec.y, p.pose.vec.z, yaw_of(p.pose.quat))
                       for p in traj.poses], np.float64).reshape(-1, 5)


class TrafficServicer:
    """The five TrafficService calls; each decodes, calls the deployment and encodes (or aborts with a status)."""

    def __init__(self, handle, api_key: str = "") -> None:
        self.pb = load()
        self.handle, self.key = handle, api_key.encode()

    def _auth(self, context) -> None:
        if not self.key:
            return
        given = dict(context.invocation_metadata()).get("authorization", "").encode()
        if not hmac.compare_digest(given, b"Bearer " + self.key):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key (metadata authorization: "
                                                           "Bearer KEY)")

    def _call(self, context, method: str, session: str | None, *args):
        """Run a deployment method (routed by `session`); abort on its refusal or on a replica failure."""
        self._auth(context)
        handle = self.handle.options(session_id=session) if session else self.handle
        try:
            out = getattr(handle, method).remote(*args).result()
        except Exception as e:  # noqa: BLE001 (a dead or failing replica: the caller gets a clear status)
            log.warning("traffic %s %s failed: %r", method, session, e)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the replica serving session {session} failed ({type(e).__name__}"
                                                       "); its sessions are lost: start a new session")
        if isinstance(out, dict):
            if "replica" in out:
                context.set_trailing_metadata(((REPLICA_KEY, out["replica"]),))
            if "error" in out:
                code, message = out["error"]
                context.abort(getattr(grpc.StatusCode, code), message)
        return out

    def start_session(self, request, context):
        objects = [(o.object_id, trajectory_array(o.trajectory)) for o in request.logged_object_trajectories]
        req = {"session_uuid": request.session_uuid, "scene_id": request.scene_id, "seed": int(request.random_seed),
               "handover_us": int(request.handover_time_us), "objects": objects}
        self._call(context, "traffic_start", request.session_uuid or None, req)
        return self.pb.common.SessionRequestStatus()

    def simulate(self, request, context):
        ego = None
        for u in request.object_trajectory_updates:
            if u.object_id != "EGO":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"object_trajectory_updates: {u.object_id!r} is "
                                                                "driven by this service (only EGO is taken)")
            ego = trajectory_array(u.trajectory)
        out = self._call(context, "traffic_simulate", request.session_uuid or None, request.session_uuid,
                         int(request.time_query_us), ego)
        ret = self.pb.traffic.TrafficReturn()
        common, times = self.pb.common, out["times"]
        for oid, poses in zip(out["objects"], out["poses"]):
            traj = ret.object_trajectory_updates.add(object_id=oid).trajectory
            for t, (x, y, z, h) in zip(times, poses):
                traj.poses.append(common.PoseAtTime(timestamp_us=int(t), pose=common.Pose(
                    vec=common.Vec3(x=x, y=y, z=z), quat=common.Quat(w=np.cos(h / 2), x=0.0, y=0.0, z=np.sin(h / 2)))))
        return ret

    def close_session(self, request, context):
        self._call(context, "traffic_close", request.session_uuid or None, request.session_uuid)
        return self.pb.common.Empty()

    def get_metadata(self, request, context):
        out = self._call(context, "traffic_metadata", None)
        common = self.pb.common
        version = common.VersionId(version_id=out["version_id"], git_hash=out["vocab_hash"],
                                   grpc_api_version=common.VersionId.APIVersion(major=API_VERSION[0],
                                                                                minor=API_VERSION[1],
                                                                                patch=API_VERSION[2]))
        return self.pb.traffic.TrafficModuleMetadata(version_id=version,
                                                     minimum_history_length_us=out["minimum_history_length_us"])

    def get_available_scenes(self, request, context):
        return self.pb.common.AvailableScenesReturn(scene_ids=self._call(context, "traffic_scenes", None))


def start_grpc(handle, port: int, host: str = "127.0.0.1", api_key: str = "", max_bytes: int = 16 << 20,
               workers: int = 32) -> grpc.Server:
    """Serve TrafficService on host:port (a started grpc.Server; `.stop(grace)` ends it)."""
    servicer = TrafficServicer(handle, api_key)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", max_bytes),
                                  ("grpc.max_send_message_length", max_bytes)])
    servicer.pb.grpc.add_TrafficServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    server.start()
    return server

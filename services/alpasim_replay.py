"""A WOMD scene as an AlpaSim runtime would send it, built with nothing but the stubs generated from
../shared/alpasim-protos: logged trajectories, the log-replayed ego, and answers decoded to arrays (used by the tests,
bench/serve.py and the README example)."""

from __future__ import annotations

import numpy as np

from drivetune.scene import HEADING, X, Y, Z
from services.alpasim_stubs import load

PB = load()
STEP_US = 100_000


def t_us(scene, step: int) -> int:
    return int(round(float(scene.timestamps[step]) * 1e6))


def pose_at(t: int, x: float, y: float, z: float, heading: float):
    c = PB.common
    return c.PoseAtTime(timestamp_us=t, pose=c.Pose(vec=c.Vec3(x=x, y=y, z=z),
                                                    quat=c.Quat(w=np.cos(heading / 2), z=np.sin(heading / 2))))


def object_id(scene, track: int) -> str:
    return "EGO" if track == scene.sdc_index else str(int(scene.track_ids[track]))


def logged(scene, tracks: list[int]) -> list:
    """ObjectTrajectory of each track (its valid history up to the current step), in the given order."""
    cur, out = scene.current_time_index, []
    for i in tracks:
        traj = PB.common.Trajectory(poses=[pose_at(t_us(scene, s), *scene.states[i, s, [X, Y, Z, HEADING]])
                                           for s in range(cur + 1) if scene.valid[i, s]])
        out.append(PB.traffic.ObjectTrajectory(object_id=object_id(scene, i), trajectory=traj, label_class="vehicle",
                                               aabb=PB.common.AABB(size_x=4.5, size_y=2.0, size_z=1.6)))
    return out


def ego_track(scene) -> tuple[np.ndarray, np.ndarray]:
    """The SDC's logged future as AlpaSim carries it: times [80] and float32-exact poses [80, 4] (x, y, z, yaw), where
    yaw is decoded from the float32 quaternion the request holds (the heading the service sees)."""
    from services.demo import logged_sdc_track

    cur = scene.current_time_index
    track = logged_sdc_track(scene)
    z = float(np.float32(scene.states[scene.sdc_index, cur, Z]))
    times = np.asarray([t_us(scene, cur) + STEP_US * (k + 1) for k in range(len(track))], np.int64)
    poses = []
    for x, y, h in track:
        q = pose_at(0, x, y, z, h).pose
        yaw = np.arctan2(2.0 * (q.quat.w * q.quat.z + q.quat.x * q.quat.y), 1.0 - 2.0 * (q.quat.y ** 2 + q.quat.z ** 2))
        poses.append((q.vec.x, q.vec.y, q.vec.z, yaw))
    return times, np.asarray(poses, np.float64)


def ego_update(times: np.ndarray, poses: np.ndarray, lo: int, hi: int):
    """ObjectTrajectoryUpdate of EGO with its poses at times in (lo, hi]."""
    keep = (times > lo) & (times <= hi)
    traj = PB.common.Trajectory(poses=[pose_at(int(t), *p) for t, p in zip(times[keep], poses[keep])])
    return PB.traffic.ObjectTrajectoryUpdate(object_id="EGO", trajectory=traj)


def decode(ret) -> tuple[list[str], list[list[int]], np.ndarray]:
    """(object ids, times per object, raw float32 pose fields [O, n, 5] (x, y, z, qw, qz))."""
    ids = [u.object_id for u in ret.object_trajectory_updates]
    times = [[p.timestamp_us for p in u.trajectory.poses] for u in ret.object_trajectory_updates]
    vals = np.asarray([[(p.pose.vec.x, p.pose.vec.y, p.pose.vec.z, p.pose.quat.w, p.pose.quat.z)
                        for p in u.trajectory.poses] for u in ret.object_trajectory_updates], np.float32)
    return ids, times, vals


def encoded(x, y, z, heading) -> np.ndarray:
    """float32 fields (x, y, z, qw, qz) [..., 5] of poses given as float32 x, y, z, heading (how the protos carry
    a model pose)."""
    h = np.asarray(heading, np.float32).astype(np.float64)
    return np.stack([np.asarray(x, np.float32), np.asarray(y, np.float32), np.asarray(z, np.float32),
                     np.cos(h / 2).astype(np.float32), np.sin(h / 2).astype(np.float32)], -1)

"""A private `ray start --head` for tests: loopback only, free private ports, its own temp dir, token auth on with a
generated token, and stopped by the PIDs of its own processes (never `ray stop`, which would kill every Ray on the
machine)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from cluster.head_stop import head_processes, stop_head

BIN = Path(sys.executable).parent  # the virtualenv's bin/ (ray, python)
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--metrics-export-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
              "--node-manager-port", "--object-manager-port")


def free_ports(n: int) -> list[int]:
    """n distinct ports the kernel reports free right now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RayHead:
    """`with RayHead(num_cpus=2) as head:` → `head.address` (http://127.0.0.1:PORT of the job API), `head.env`
    (what a client needs: RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH), `head.token`, `head.ports`."""

    def __init__(self, num_cpus: int = 2, object_store_bytes: int = 300 * 1024 * 1024) -> None:
        self.num_cpus, self.object_store_bytes = num_cpus, object_store_bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="dt_head_", dir="/tmp"))  # short: socket path length limit
        self.token = secrets.token_hex(32)
        token_file = self.temp_dir / "auth_token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        # Worker ports: 100 below the kernel's ephemeral range (32768+), spread by PID so parallel heads differ.
        self.worker_ports = (20000 + (os.getpid() % 120) * 100, 20000 + (os.getpid() % 120) * 100 + 99)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("RAY_AUTH_TOKEN", None)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--metrics-export-port']}/metrics"

    def start(self) -> "RayHead":
        cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host",
               "127.0.0.1", "--temp-dir", str(self.temp_dir / "ray"), "--num-cpus", str(self.num_cpus),
               "--object-store-memory", str(self.object_store_bytes), "--min-worker-port",
               str(self.worker_ports[0]), "--max-worker-port", str(self.worker_ports[1]), "--disable-usage-stats"]
        for flag, port in self.ports.items():
            cmd += [flag, str(port)]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0 or not self.pids():
            self.stop()
            raise RuntimeError(f"ray start failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return self

    def pids(self) -> list[int]:
        """PIDs of this head's processes and no one else's (`cluster.head_stop`: the command line or an open file
        names the temp dir, and their descendants: workers, agents)."""
        return [p.pid for p in head_processes(self.temp_dir)]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM this head's processes, SIGKILL what is left after `grace_s`, remove the temp dir."""
        stop_head(self.temp_dir, grace_s)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def run(self, *args: str, timeout: float = 600, cwd: str | os.PathLike | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A client command (`ray job ...`, `python -m drivetune.cli ...`) with this head's client environment."""
        return subprocess.run(list(args), env=env or self.env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


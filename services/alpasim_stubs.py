"""Python stubs of AlpaSim's traffic-service protos, generated with grpcio-tools when first needed.

The protos are read from `../shared/alpasim-protos/` (or `$DRIVETUNE_ALPASIM_PROTOS`), never copied into the
repository. Stubs are generated into a cache directory keyed by the protos' content hash, which is put on `sys.path`,
so `alpasim_grpc.v0.traffic_pb2` / `traffic_pb2_grpc` / `common_pb2` import as AlpaSim's own code would.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROTOS = REPO.parent / "shared" / "alpasim-protos"
FILES = ("alpasim_grpc/v0/common.proto", "alpasim_grpc/v0/traffic.proto")


def protos_dir() -> Path:
    """Where the AlpaSim protos are read from; raises FileNotFoundError naming the missing file."""
    root = Path(os.environ.get("DRIVETUNE_ALPASIM_PROTOS", DEFAULT_PROTOS))
    for name in FILES:
        if not (root / name).is_file():
            raise FileNotFoundError(f"AlpaSim proto {root / name} not found (set DRIVETUNE_ALPASIM_PROTOS to the "
                                    "directory holding alpasim_grpc/v0/*.proto)")
    return root


def generate(out: Path | None = None) -> Path:
    """Generate the stubs (idempotent) and return the directory to put on sys.path."""
    from grpc_tools import protoc

    root = protos_dir()
    digest = hashlib.sha256(b"".join((root / n).read_bytes() for n in FILES)).hexdigest()[:16]
    out = out or Path(tempfile.gettempdir()) / f"drivetune_alpasim_stubs_{digest}"
    marker = out / ".complete"
    if marker.exists():
        return out
    tmp = Path(tempfile.mkdtemp(prefix="alpasim_stubs_", dir=out.parent))
    args = ["protoc", f"-I{root}", f"-I{Path(protoc.__file__).parent / '_proto'}", f"--python_out={tmp}",
            f"--grpc_python_out={tmp}", *FILES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {root}")
    (tmp / ".complete").write_text(digest)
    try:
        tmp.rename(out)  # atomic: a concurrent generator's finished directory wins
    except OSError:
        if not marker.exists():
            raise
    return out


def load() -> SimpleNamespace:
    """The generated modules: `.common` (common_pb2), `.traffic` (traffic_pb2), `.grpc` (traffic_pb2_grpc)."""
    path = str(generate())
    if path not in sys.path:
        sys.path.insert(0, path)
    return SimpleNamespace(common=importlib.import_module("alpasim_grpc.v0.common_pb2"),
                           traffic=importlib.import_module("alpasim_grpc.v0.traffic_pb2"),
                           grpc=importlib.import_module("alpasim_grpc.v0.traffic_pb2_grpc"))

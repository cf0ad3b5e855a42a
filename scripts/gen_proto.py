"""Generate the Python stubs of the wire contract: proto/fedmezo/v1/*.proto -> fedmezo/v1/*_pb2*.py.

The proto package `fedmezo.v1` maps onto the Python package `fedmezo.v1`, so the generated imports
(`from fedmezo.v1 import x_pb2`) resolve inside our namespace. The output is a build product (ignored
by git) and is rewritten whole on every run, so it can never go stale.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
OUT_DIR = ROOT / "fedmezo" / "v1"


def main() -> int:
    from grpc_tools import protoc  # dev dependency: only needed to build

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "fedmezo" / "v1").glob("*.proto"))
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    (OUT_DIR / "__init__.py").write_text('"""Generated gRPC stubs of fedmezo.v1 (scripts/gen_proto.py)."""\n')
    (OUT_DIR / "py.typed").write_text("")
    if not protos:
        return 0
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())

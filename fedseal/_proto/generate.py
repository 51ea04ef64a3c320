"""Regenerate the committed gRPC/protobuf code from proto/fedseal/v1/fedseal.proto.

Run `make proto` (or `python -m fedseal._proto.generate`). Needs grpcio-tools (the `test` extra).
The output imports itself as `fedseal._proto`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent
PROTO = "fedseal/v1/fedseal.proto"


def generate(out_dir: Path = OUT_DIR) -> None:
    from grpc_tools import protoc  # test-only dependency: imported here, not at module load

    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    # protoc writes fedseal/v1/fedseal_pb2*.py; make the grpc module import its sibling
    # through our package rather than a top-level `fedseal.v1` that does not exist.
    grpc_file = out_dir / "fedseal" / "v1" / "fedseal_pb2_grpc.py"
    text = grpc_file.read_text()
    text = text.replace(
        "from fedseal.v1 import fedseal_pb2 as", "from fedseal._proto.fedseal.v1 import fedseal_pb2 as"
    )
    grpc_file.write_text(text)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR)

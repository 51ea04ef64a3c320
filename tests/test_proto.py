"""The committed generated gRPC code matches proto/fedseal/v1/fedseal.proto."""

from __future__ import annotations

from pathlib import Path

from fedseal._proto.generate import OUT_DIR, generate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generate(tmp_path)
    for generated in sorted((tmp_path / "fedseal" / "v1").glob("fedseal_pb2*")):
        committed = OUT_DIR / "fedseal" / "v1" / generated.name
        assert committed.read_text() == generated.read_text(), (
            f"{committed} is stale: run `make proto` and commit the result"
        )

"""SubmitUpdate's request decoder (aggregator/_service.py) against protobuf itself.

The decoder reads the common chunk message, exactly one `bytes chunk = 2` field, as a view
into the received bytes and hands everything else to protobuf. For every encoding below it
must mean what protobuf's own parser says it means.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from aggregator._service import decode_submit_update_request
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _chunk_field(payload: bytes) -> bytes:
    return b"\x12" + _varint(len(payload)) + payload


CHUNKS = [b"", b"x", bytes(range(256)) * 1, b"y" * 127, b"z" * 128, b"w" * 16384, bytes(1 << 20)]
HEADER = pb.SubmitUpdateRequest(header=pb.UpdateHeader(round_id=7, client_id="site-0")).SerializeToString()

ENCODINGS = {
    **{f"chunk of {len(c)} bytes": _chunk_field(c) for c in CHUNKS},
    "header": HEADER,
    # Valid protobuf that the fast path must not take: protobuf decides.
    "non-minimal length varint": b"\x12\x83\x00" + b"abc",
    "chunk then an unknown field": _chunk_field(b"abc") + b"\x18\x01",
    "two chunk fields (the last wins)": _chunk_field(b"first") + _chunk_field(b"second"),
    "header then chunk (oneof: the last wins)": HEADER + _chunk_field(b"late"),
    "chunk then header": _chunk_field(b"early") + HEADER,
}


@pytest.mark.parametrize("data", list(ENCODINGS.values()), ids=list(ENCODINGS))
def test_the_decoder_means_what_protobuf_means(data: bytes) -> None:
    reference = pb.SubmitUpdateRequest.FromString(data)
    decoded = decode_submit_update_request(data)
    if isinstance(decoded, memoryview):
        assert reference.WhichOneof("part") == "chunk"
        assert bytes(decoded) == reference.chunk
    else:
        assert decoded == reference


def test_a_plain_chunk_message_is_a_view_not_a_copy() -> None:
    data = _chunk_field(b"q" * 4096)
    decoded = decode_submit_update_request(data)
    assert isinstance(decoded, memoryview)
    assert decoded.obj is data and decoded.nbytes == 4096


@pytest.mark.parametrize(
    "data",
    [b"\x12", b"\x12\x05abc", b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x12\x80"],
    ids=["no length", "length past the end", "overlong varint", "truncated varint"],
)
def test_malformed_chunk_messages_are_refused_as_protobuf_refuses_them(data: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.SubmitUpdateRequest.FromString(data)
    with pytest.raises(DecodeError):
        decode_submit_update_request(data)

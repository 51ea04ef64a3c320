"""Hypothesis strategies for the fuzz targets: real inputs, mutated."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

# Bytes that sit on boundaries of the formats: zero, sign bits, JSON structure, line ends.
_EDGE_BYTES = (0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord("["), ord('"'), ord("\n"))


@st.composite
def _mutate(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "splice", "repeat")))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(
                st.sampled_from((0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord("["), ord('"'), ord("\n")))
            )
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, max(0, len(other) - 1)))
            data[at : at + draw(st.integers(0, 64))] = other[start : start + draw(st.integers(1, 64))]
        elif op == "repeat" and data:
            data[at:at] = data[at : at + draw(st.integers(1, 32))] * draw(st.integers(2, 64))
    return bytes(data)


def mutated(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Seeds with up to 8 byte-level mutations (flips, edge bytes, inserts, cuts, splices)."""
    if not seeds:
        raise ValueError("a fuzz target needs at least one seed input")
    return _mutate(seeds)

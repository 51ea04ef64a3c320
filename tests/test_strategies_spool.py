"""The update spool: sealed on file, read back piece by piece, fails closed on tampering,
and is crypto-erased (keys dropped, file gone) when a round ends."""

from __future__ import annotations

import os

import pytest
import torch

from aggregator.enclave._spool import (
    SpoolErasedError,
    SpoolError,
    SpoolIntegrityError,
    UpdateSpool,
)
from aggregator.enclave.strategies import make_strategy
from fedseal.spec import AdapterSpec, WireDtype

SHAPES = {"a": (3, 50), "b": (50, 3), "c": (5,)}


def make_spec(dtype: WireDtype = WireDtype.FLOAT32) -> AdapterSpec:
    return AdapterSpec.from_tensors({n: torch.zeros(s) for n, s in SHAPES.items()}, dtype=dtype)


def make_update(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen).to(dtype) for k, s in SHAPES.items()}


def read_all(spool: UpdateSpool, slot: int) -> dict[str, torch.Tensor]:
    return dict(spool.reader().iter_update(slot))


@pytest.mark.parametrize(
    ("wire", "dtype"), [(WireDtype.FLOAT32, torch.float32), (WireDtype.BFLOAT16, torch.bfloat16)]
)
def test_round_trip_piece_by_piece(wire: WireDtype, dtype: torch.dtype) -> None:
    spool = UpdateSpool(make_spec(wire), piece_elements=16)
    ups = [make_update(i, dtype) for i in range(3)]
    assert [spool.add(u) for u in ups] == [0, 1, 2]
    assert len(spool) == 3
    # 150 elements in pieces of 16 -> 10 records for "a" (and "b"), 1 for "c"
    assert len(spool.pieces_of("a")) == 10 and len(spool.pieces_of("c")) == 1
    for slot, u in enumerate(ups):
        back = read_all(spool, slot)
        for name, value in u.items():
            assert back[name].dtype == torch.float32
            assert torch.equal(back[name], value.to(torch.float32))
    ciphertext_per_update = sum(p.plaintext_size + 16 for p in spool.pieces)
    assert spool.spooled_bytes == 3 * ciphertext_per_update
    spool.erase()


def test_file_holds_no_plaintext() -> None:
    spool = UpdateSpool(make_spec(), piece_elements=64)
    update = {k: torch.full(s, 1.5) for k, s in SHAPES.items()}
    spool.add(update)
    fd = spool._file.fileno()
    raw = os.pread(fd, spool.spooled_bytes, 0)
    needle = torch.full((8,), 1.5).numpy().tobytes()
    assert needle not in raw
    spool.erase()


def _flip_byte(spool: UpdateSpool, offset: int) -> None:
    fd = spool._file.fileno()
    byte = os.pread(fd, 1, offset)
    os.pwrite(fd, bytes([byte[0] ^ 1]), offset)


def test_tampered_record_fails_closed() -> None:
    spool = UpdateSpool(make_spec(), piece_elements=16)
    spool.add(make_update(0))
    spool.add(make_update(1))
    piece = spool.pieces_of("b")[2]
    _flip_byte(spool, spool.spooled_bytes // 2 + piece.offset + 5)  # inside slot 1's record
    read_all(spool, 0)  # the other update is untouched
    with pytest.raises(SpoolIntegrityError, match=f"record {piece.record} of slot 1 does not authenticate"):
        read_all(spool, 1)
    spool.erase()


def test_swapped_records_fail_closed() -> None:
    spool = UpdateSpool(make_spec(), piece_elements=16)
    spool.add(make_update(0))
    fd = spool._file.fileno()
    first, second = spool.pieces[0], spool.pieces[1]
    size = first.plaintext_size + 16
    a, b = os.pread(fd, size, first.offset), os.pread(fd, size, second.offset)
    os.pwrite(fd, b, first.offset)
    os.pwrite(fd, a, second.offset)
    with pytest.raises(SpoolIntegrityError, match="does not authenticate"):
        read_all(spool, 0)
    spool.erase()


def test_truncated_file_fails_closed() -> None:
    spool = UpdateSpool(make_spec(), piece_elements=16)
    spool.add(make_update(0))
    os.ftruncate(spool._file.fileno(), spool.spooled_bytes - 10)
    with pytest.raises(SpoolIntegrityError, match="truncated"):
        read_all(spool, 0)
    spool.erase()


def test_erase_is_crypto_erasure() -> None:
    spool = UpdateSpool(make_spec(), piece_elements=16)
    spool.add(make_update(0))
    fd = spool._file.fileno()
    kept = os.pread(fd, spool.spooled_bytes, 0)  # what a host could have copied
    spool.erase()
    with pytest.raises(OSError):
        os.fstat(fd)  # the file is closed (and was never linked)
    with pytest.raises(SpoolErasedError, match="erased"):
        read_all(spool, 0)
    with pytest.raises(SpoolErasedError):
        spool.add(make_update(1))
    assert spool.spooled_bytes == 0 and len(kept) > 0
    spool.erase()  # idempotent


def test_strategies_erase_their_spool_on_finalize_and_on_failure() -> None:
    strategy = make_strategy("fedmedian", make_spec(), piece_elements=16)
    strategy.accumulate(make_update(0), 1)
    strategy.accumulate(make_update(1), 1)
    spool = strategy._spool  # type: ignore[attr-defined]
    _flip_byte(spool, 3)
    with pytest.raises(SpoolIntegrityError):
        strategy.finalize()
    with pytest.raises(SpoolErasedError):  # erased even though finalize failed
        read_all(spool, 0)


def test_bad_inputs_are_refused() -> None:
    spool = UpdateSpool(make_spec(), piece_elements=16)
    with pytest.raises(SpoolError, match="the spec says"):
        spool.add(make_update(0, torch.bfloat16))
    spool.add(make_update(0))
    with pytest.raises(SpoolError, match="slot 5 is not in the spool"):
        read_all(spool, 5)
    with pytest.raises(SpoolError, match="contiguous float32"):
        spool.reader().read_piece(0, spool.pieces[0], torch.empty(3, dtype=torch.float64))
    with pytest.raises(SpoolError, match="piece_elements"):
        UpdateSpool(make_spec(), piece_elements=0)
    spool.erase()


def test_wrong_shape_is_refused() -> None:
    spool = UpdateSpool(make_spec(), piece_elements=16)
    update = make_update(0)
    update["a"] = torch.zeros(2, 50)
    with pytest.raises(SpoolError, match="has 100 elements, the spec says 150"):
        spool.add(update)
    spool.erase()

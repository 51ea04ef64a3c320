"""The receiver's strict, zero-copy safetensors parser against the round's adapter spec."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch

from aggregator.enclave._dp import ClippedDelta
from aggregator.enclave._receive import FlatTensors, ValidatedUpdate, _parse_and_validate
from aggregator.enclave.strategies.fedavg import FedAvg
from fedseal.logformat import RejectReason
from fedseal.sitemetrics import METRICS_METADATA_KEY
from fedseal.spec import AdapterSpec, WireDtype
from fedseal.wire import UpdateRejectedError

TENSORS = {"a.lora_A.weight": (4, 16), "a.lora_B.weight": (16, 4), "b.lora_A.weight": (4, 16)}


def _tensors(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {n: torch.randn(s, generator=gen).to(dtype) for n, s in TENSORS.items()}


def _spec(wire: WireDtype = WireDtype.FLOAT32) -> AdapterSpec:
    return AdapterSpec.from_tensors(_tensors(), dtype=wire)


def _split(payload: bytes) -> tuple[dict[str, object], bytes]:
    (size,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + size]), payload[8 + size :]


def _join(header: dict[str, object] | str, data: bytes, pad: bool = True) -> bytearray:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return bytearray(struct.pack("<Q", len(text)) + text + data)


def _reject(payload: bytes | bytearray, spec: AdapterSpec, reason: RejectReason) -> str:
    with pytest.raises(UpdateRejectedError) as info:
        _parse_and_validate(memoryview(bytearray(payload)), spec)
    assert info.value.reason is reason
    return info.value.detail


@pytest.mark.parametrize(
    ("dtype", "wire"), [(torch.float32, WireDtype.FLOAT32), (torch.bfloat16, WireDtype.BFLOAT16)]
)
def test_parses_zero_copy_and_matches_safetensors(dtype: torch.dtype, wire: WireDtype) -> None:
    tensors = _tensors(dtype)
    buffer = bytearray(safetensors.torch.save(tensors, metadata={"format": "pt"}))
    parsed = _parse_and_validate(memoryview(buffer), _spec(wire))
    assert set(parsed) == set(tensors)
    for name, value in parsed.items():
        assert value.dtype == dtype and torch.equal(value, tensors[name])
    # Views of the decrypted buffer, not copies: wiping the buffer wipes them.
    buffer[:] = bytes(len(buffer))
    assert all(not bool(v.any()) for v in parsed.values())


def test_unaligned_foreign_layout_is_copied_aligned_and_still_correct() -> None:
    tensors = _tensors()
    header, data = _split(safetensors.torch.save(tensors))
    payload = _join(header, data, pad=False)  # header not padded to 8: data offsets misaligned
    assert (8 + len(json.dumps(header))) % 4 != 0
    parsed = _parse_and_validate(memoryview(payload), _spec())
    assert all(torch.equal(parsed[n], tensors[n]) for n in tensors)


@pytest.mark.parametrize("position", [0, 1, 31, 32, 63])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_anywhere_is_refused(position: int, bad: float, dtype: torch.dtype) -> None:
    tensors = _tensors(dtype)
    tensors["a.lora_B.weight"].view(-1)[position] = bad
    wire = WireDtype.FLOAT32 if dtype is torch.float32 else WireDtype.BFLOAT16
    detail = _reject(safetensors.torch.save(tensors), _spec(wire), RejectReason.NOT_FINITE)
    assert "a.lora_B.weight" in detail


def test_spec_mismatches_are_named() -> None:
    spec = _spec()
    tensors = _tensors()
    wrong_dtype = {n: t.to(torch.bfloat16) for n, t in tensors.items()}
    assert "dtype" in _reject(safetensors.torch.save(wrong_dtype), spec, RejectReason.SPEC_MISMATCH)
    missing = dict(tensors)
    del missing["b.lora_A.weight"]
    assert "missing" in _reject(safetensors.torch.save(missing), spec, RejectReason.SPEC_MISMATCH)
    reshaped = dict(tensors, **{"a.lora_A.weight": tensors["a.lora_A.weight"].reshape(16, 4)})
    assert "shape" in _reject(safetensors.torch.save(reshaped), spec, RejectReason.SPEC_MISMATCH)


def test_malformed_headers_are_refused() -> None:
    spec = _spec()
    header, data = _split(safetensors.torch.save(_tensors()))
    names = sorted(TENSORS)

    def edited(name: str, **fields: object) -> dict[str, object]:
        copy: dict[str, object] = json.loads(json.dumps(header))
        entry = copy[name]
        assert isinstance(entry, dict)
        entry.update(fields)
        return copy

    first, second = header[names[0]], header[names[1]]
    assert isinstance(first, dict) and isinstance(second, dict)
    cases: list[tuple[bytes | bytearray, str]] = [
        (b"\x01\x02", "shorter than"),
        (struct.pack("<Q", 2**40) + b"{}", "header length"),
        (_join("{not json", data), "not valid JSON"),
        (_join("[1, 2]", data), "not a JSON object"),
        (_join(json.dumps(header)[:-1] + ', "a.lora_A.weight": {}}', data), "not valid JSON"),  # dup key
        (_join(header, data + b"\x00" * 4), "covers"),  # trailing bytes
        (_join(header, data[:-4]), "covers"),
        (_join(edited(names[1], data_offsets=first["data_offsets"]), data), "gap or overlap"),
        (_join(edited(names[0], data_offsets=[4, 4 + 256]), data), "gap or overlap"),
        (_join(edited(names[0], data_offsets=[0, 8]), data), "span"),
        (_join(edited(names[0], extra=1), data), "exactly dtype"),
        (_join(edited(names[0], shape=[4.0, 16]), data), "lists of integers"),
        (_join(edited(names[0], data_offsets=[-1, 255]), data), "lists of integers"),
        (_join(dict(header, __metadata__={"k": 1}), data), "__metadata__"),
    ]
    for payload, expected in cases:
        assert expected in _reject(payload, spec, RejectReason.MALFORMED), expected


# --------------------------------------------------------------- one flat view per update


@pytest.mark.parametrize(
    ("dtype", "wire"), [(torch.float32, WireDtype.FLOAT32), (torch.bfloat16, WireDtype.BFLOAT16)]
)
def test_a_usual_update_is_one_flat_view_in_data_order(dtype: torch.dtype, wire: WireDtype) -> None:
    tensors = _tensors(dtype)
    buffer = bytearray(safetensors.torch.save(tensors))
    parsed = _parse_and_validate(memoryview(buffer), _spec(wire))
    assert isinstance(parsed, FlatTensors)
    assert parsed.order == tuple(sorted(TENSORS))  # safetensors writes same-dtype tensors by name
    assert parsed.flat.dtype == dtype
    assert torch.equal(parsed.flat, torch.cat([tensors[n].flatten() for n in sorted(TENSORS)]))
    for name in TENSORS:  # the named tensors are views into the flat one
        assert parsed[name].data_ptr() >= parsed.flat.data_ptr()
        assert torch.equal(parsed[name], tensors[name])


def test_a_nan_found_by_the_flat_check_names_its_tensor() -> None:
    tensors = _tensors()
    tensors["b.lora_A.weight"][2, 3] = float("inf")
    detail = _reject(safetensors.torch.save(tensors), _spec(), RejectReason.NOT_FINITE)
    assert "'b.lora_A.weight'" in detail


def _fold(strategy: FedAvg, payloads: list[bytes], spec: AdapterSpec) -> dict[str, torch.Tensor]:
    for i, payload in enumerate(payloads):
        strategy.accumulate(_parse_and_validate(memoryview(bytearray(payload)), spec), 10 + i)
    return strategy.finalize()


@pytest.mark.parametrize(
    ("dtype", "wire"), [(torch.float32, WireDtype.FLOAT32), (torch.bfloat16, WireDtype.BFLOAT16)]
)
def test_fedavg_folds_flat_and_foreign_layouts_to_the_same_mean(dtype: torch.dtype, wire: WireDtype) -> None:
    spec = _spec(wire)
    gen = torch.Generator().manual_seed(3)
    updates = [{n: torch.randn(s, generator=gen).to(dtype) for n, s in TENSORS.items()} for _ in range(3)]
    usual = [safetensors.torch.save(u) for u in updates]
    # The same tensors written in reverse name order (a foreign writer): valid, not flat-foldable
    # by FedAvg's name-ordered accumulator, so folded tensor by tensor.
    foreign = []
    for u in updates:
        header: dict[str, object] = {}
        data = b""
        for name in sorted(TENSORS, reverse=True):
            raw = u[name].contiguous().view(torch.uint8).numpy().tobytes()
            header[name] = {
                "dtype": wire.value,
                "shape": list(TENSORS[name]),
                "data_offsets": [len(data), len(data) + len(raw)],
            }
            data += raw
        foreign.append(bytes(_join(header, data)))
    parsed_foreign = _parse_and_validate(memoryview(bytearray(foreign[0])), spec)
    assert isinstance(parsed_foreign, FlatTensors) and parsed_foreign.order == tuple(
        sorted(TENSORS, reverse=True)
    )
    total = sum(10 + i for i in range(3))
    expected = {n: sum((10 + i) * updates[i][n].to(torch.float32) for i in range(3)) / total for n in TENSORS}
    for payloads in (usual, foreign):
        mean = _fold(FedAvg(spec), payloads, spec)
        for name in TENSORS:
            torch.testing.assert_close(mean[name], expected[name], rtol=1e-6, atol=1e-6)
    flat_mean = _fold(FedAvg(spec), usual, spec)
    foreign_mean = _fold(FedAvg(spec), foreign, spec)
    assert all(torch.equal(flat_mean[n], foreign_mean[n]) for n in TENSORS)  # same sums, same order of adds


def test_flat_tensors_views_are_made_on_demand_and_match_the_data() -> None:
    tensors = _tensors(torch.bfloat16)
    parsed = _parse_and_validate(
        memoryview(bytearray(safetensors.torch.save(tensors))), _spec(WireDtype.BFLOAT16)
    )
    assert isinstance(parsed, FlatTensors)
    assert parsed._views == {}  # nothing made until asked for
    for name, value in tensors.items():
        assert parsed[name].shape == value.shape and torch.equal(parsed[name], value)
        assert parsed[name].data_ptr() >= parsed.flat.data_ptr()  # a view, not a copy
    assert set(parsed) == set(tensors) and len(parsed) == len(tensors)


def test_cached_spec_sizes_leave_equality_hash_and_pickling_alone() -> None:
    import pickle

    spec, fresh = _spec(), _spec()
    size = spec.max_serialized_size()
    assert spec.data_bytes == sum(4 * a * b for a, b in TENSORS.values())
    assert spec == fresh and hash(spec) == hash(fresh)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert fresh.max_serialized_size() == size


_SITE_TEXT = "MRN 0042 Jane Roe"  # what a site's own text in its sealed update could be


def test_a_rejection_quotes_nothing_from_the_decrypted_update() -> None:
    # The detail goes into the public audit log: the spec's names may appear, text that
    # came out of the sealed update may not (its tensor names, metric names, dtypes).
    spec = _spec()
    extra = safetensors.torch.save({**_tensors(), f"notes {_SITE_TEXT}": torch.zeros(1)})
    metric = safetensors.torch.save(
        _tensors(), metadata={METRICS_METADATA_KEY: json.dumps({_SITE_TEXT: 1.0})}
    )
    header, data = _split(safetensors.torch.save(_tensors()))
    name = next(n for n in header if n != "__metadata__")
    header[name] = {**header[name], "dtype": f"F32 {_SITE_TEXT}"}  # type: ignore[dict-item]
    for payload, says in (
        (extra, "1 not in the spec"),
        (metric, "site metrics do not follow"),
        (bytes(_join(header, data)), "has another dtype than the spec's"),
    ):
        with pytest.raises(UpdateRejectedError) as refused:
            _parse_and_validate(memoryview(bytearray(payload)), spec)
        assert says in refused.value.detail and _SITE_TEXT not in str(refused.value)


def test_plaintext_holders_keep_their_tensors_out_of_their_repr() -> None:
    secret = torch.tensor([0.123456, 0.654321])
    update = ValidatedUpdate(None, {"a": secret}, b"", 0, {"loss": 0.987654})  # type: ignore[arg-type]
    delta = ClippedDelta({"a": secret}, 1.0, False)
    for holder in (update, delta):
        assert "0.1234" not in repr(holder) and "0.9876" not in repr(holder)

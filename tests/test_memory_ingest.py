"""The aggregator's memory is flat in the number of clients (issue 6), asserted structurally.

A real RoundManager (real audit log, real enclave keys) ingests real sealed updates, one
after another and then several at once from threads. After n accepted updates the only
live update-sized tensor storage in the process is the FedAvg accumulator, whatever n,
and the receive path holds at most its plaintext buffer slots. Nothing here is timed.
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import round_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from aggregator._log import AuditLog
from aggregator._rounds import RoundManager
from aggregator._server import _start_enclave
from aggregator.enclave._keys import EnclaveKeys
from aggregator.enclave._receive import PlaintextBuffers, UpdateReceiver
from aggregator.enclave._roundkey import RoundKeyPair
from attestation import InsecureSimulatedTeeCollector
from fedseal.envelope import SealContext, seal
from fedseal.logformat import RejectReason
from fedseal.roundconfig import RoundConfig
from fedseal.signed_request import key_id
from fedseal.spec import AdapterSpec, WireDtype
from fedseal.wire import PROTOCOL_VERSION, UpdateHeader, UpdateRejectedError

# Large enough that an update-sized storage stands out from torch's own small tensors.
SHAPES = {f"layers.{i}.{m}.lora_{ab}.weight": ((8, 512) if ab == "A" else (512, 8))
          for i in range(4) for m in ("q_proj", "v_proj") for ab in ("A", "B")}  # fmt: skip
SITE_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fedseal memory test key").digest())


def _adapter(seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen).to(dtype) for name, shape in SHAPES.items()}


def _spec(wire: WireDtype) -> AdapterSpec:
    return AdapterSpec.from_tensors(_adapter(0, torch.float32), dtype=wire)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[RoundManager, EnclaveKeys]]:
    keys = EnclaveKeys.generate()
    log = AuditLog.open(tmp_path / "audit.log", "fedseal.test/memory", keys.log_private_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collector = InsecureSimulatedTeeCollector("memory tests")
    _start_enclave(log, keys, [collector])
    rounds = RoundManager(log, keys)
    try:
        yield rounds, keys
    finally:
        rounds.shutdown()
        log.close()


def _round_key(rounds: RoundManager, config: RoundConfig) -> bytes:
    """The open round's public HPKE key, as GetRound serves it."""
    signed = rounds.snapshot(config.round_id).round_key
    assert signed is not None
    return signed.statement.hpke_public_key


def _sealed(
    keys: EnclaveKeys, config: RoundConfig, client: str, payload: bytes, round_key: bytes
) -> tuple[UpdateHeader, list[bytes]]:
    challenge = os.urandom(32)
    context = SealContext(
        protocol_version=PROTOCOL_VERSION,
        round_id=config.round_id,
        client_id=client,
        adapter_spec_digest=config.adapter_spec.digest(),
        num_examples=10,
        binding=keys.bound.binding_for(challenge),
        round_public_key=round_key,
        idempotency_key=os.urandom(32),
        chunk_size=config.max_chunk_size,
    )
    sealed = seal(payload, X25519PublicKey.from_public_bytes(round_key), context)
    header = UpdateHeader(
        protocol_version=PROTOCOL_VERSION,
        round_id=config.round_id,
        client_id=client,
        adapter_spec_digest=context.adapter_spec_digest,
        num_examples=context.num_examples,
        suite=context.suite,
        wrapped_key=sealed.wrapped_key,
        idempotency_key=context.idempotency_key,
        challenge=challenge,
        chunk_size=context.chunk_size,
        ciphertext_size=sealed.ciphertext_size,
        key_id=key_id(SITE_KEY.public_key().public_bytes_raw()),
        ciphertext_digest=sealed.ciphertext_digest,
    ).sign(SITE_KEY)
    return header, list(sealed.chunks)


def _live_storages(min_bytes: int) -> dict[int, int]:
    """Distinct live torch CPU storages of at least `min_bytes` (the update-sized ones): address -> bytes."""
    gc.collect()
    seen: dict[int, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on torch's deprecated module aliases warns
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                storage = obj.untyped_storage()
                if storage.nbytes() >= min_bytes:
                    seen[storage.data_ptr()] = storage.nbytes()
    return seen


def _grown(baseline: dict[int, int], min_bytes: int) -> int:
    """Bytes of update-sized storages alive now that were not alive at `baseline` (an earlier
    test's aggregator still winding down may free its own in between: those do not count)."""
    return sum(size for ptr, size in _live_storages(min_bytes).items() if baseline.get(ptr) != size)


def _strategy_bytes(rounds: RoundManager, round_id: int) -> int:
    # The round's strategy is internal to RoundManager; its live_tensor_bytes is the contract.
    return rounds._book.rounds[round_id].aggregator.strategy.live_tensor_bytes()


@pytest.mark.parametrize("wire", [WireDtype.FLOAT32, WireDtype.BFLOAT16])
def test_live_tensor_bytes_after_n_updates_are_one_accumulator(
    manager: tuple[RoundManager, EnclaveKeys], wire: WireDtype
) -> None:
    rounds, keys = manager
    spec = _spec(wire)
    n_max = 6
    config = round_config(
        adapter_spec=spec, min_clients=1, max_clients=n_max + 1, deadline_seconds=120.0, max_chunk_size=16384
    )
    rounds.open_round(config)
    accumulator = spec.num_parameters * 4  # float32, whatever the wire dtype
    smallest = min(t.numel for t in spec.tensors) * 2  # any update-sized tensor is at least this
    payloads = [
        safetensors.torch.save(
            _adapter(i + 1, torch.float32 if wire is WireDtype.FLOAT32 else torch.bfloat16)
        )
        for i in range(n_max)
    ]
    baseline = _live_storages(smallest)  # the accumulator is made when the round opens
    assert _strategy_bytes(rounds, 1) == accumulator
    after: dict[int, tuple[int, int]] = {}
    for i, payload in enumerate(payloads):
        header, chunks = _sealed(keys, config, f"site-{i}", payload, _round_key(rounds, config))
        rounds.submit(header, iter(chunks))
        del header, chunks
        after[i + 1] = (_strategy_bytes(rounds, 1), _grown(baseline, smallest))
    for n, (strategy_bytes, grown) in after.items():
        assert strategy_bytes == accumulator, n
        # No update's tensors outlive its ingest: the accumulator is all that stays.
        assert grown == 0, (n, grown)
    assert rounds.snapshot(1).accepted == n_max
    assert sum(baseline.values()) >= accumulator
    # The probe does see an update that stays alive (so the equality above can fail).
    kept = safetensors.torch.load(payloads[0])
    assert _grown(baseline, smallest) >= sum(t.nbytes for t in kept.values())


def test_concurrent_uploads_hold_at_most_the_buffer_slots(manager: tuple[RoundManager, EnclaveKeys]) -> None:
    rounds, keys = manager
    spec = _spec(WireDtype.FLOAT32)
    n = 8
    config = round_config(adapter_spec=spec, min_clients=1, max_clients=n, deadline_seconds=120.0)
    rounds.open_round(config)
    lent = rounds._buffers  # the manager's one pool (internal; its slots are the bound)
    out = peak = 0
    count_lock = threading.Lock()
    acquire, release = lent.acquire, lent.release

    def counting_acquire(capacity: int, wait_seconds: float) -> bytearray:
        nonlocal out, peak
        buffer = acquire(capacity, wait_seconds)
        with count_lock:
            out += 1
            peak = max(peak, out)
        return buffer

    def counting_release(buffer: bytearray) -> None:
        nonlocal out
        with count_lock:
            out -= 1
        release(buffer)

    lent.acquire = counting_acquire  # type: ignore[method-assign]
    lent.release = counting_release  # type: ignore[method-assign]
    sealed = [
        _sealed(
            keys,
            config,
            f"site-{i}",
            safetensors.torch.save(_adapter(i + 1, torch.float32)),
            _round_key(rounds, config),
        )
        for i in range(n)
    ]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def upload(header: UpdateHeader, chunks: list[bytes]) -> None:
        barrier.wait()
        try:
            rounds.submit(header, iter(chunks))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=s) for s in sealed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert rounds.wait_closed(1, 10.0).accepted == n  # the round closed at max_clients
    assert 1 <= peak <= 2 and out == 0
    # Closing the round freed the idle buffers before serializing the aggregate; only the
    # closing upload's own buffer came back after that (not one per client, not both slots).
    assert lent.held_bytes() <= spec.max_serialized_size()


def test_buffer_pool_refuses_when_no_slot_frees_in_time() -> None:
    pool = PlaintextBuffers(slots=1)
    first = pool.acquire(1024, 0.0)
    with pytest.raises(UpdateRejectedError) as info:
        pool.acquire(1024, 0.05)
    assert info.value.reason is RejectReason.CANCELLED
    pool.release(first)
    again = pool.acquire(512, 0.0)
    assert again is first  # reused, not reallocated
    pool.release(again)
    bigger = pool.acquire(4096, 0.0)
    assert len(bigger) >= 4096
    with pytest.raises(ValueError, match="at least one slot"):
        PlaintextBuffers(slots=0)


def test_wiping_a_receiver_twice_leaves_the_next_uploads_buffer_alone(
    manager: tuple[RoundManager, EnclaveKeys],
) -> None:
    # The second wipe (an admission's exit after the receive path wiped) must not zero the
    # buffer the pool has since lent to another upload.
    _, keys = manager
    spec = _spec(WireDtype.FLOAT32)
    config = round_config(adapter_spec=spec, min_clients=1, max_clients=2)
    pool = PlaintextBuffers(slots=1)
    payloads = [safetensors.torch.save(_adapter(i + 1, torch.float32)) for i in range(2)]
    round_key = RoundKeyPair.generate(
        log_origin="fedseal.test/memory",
        round_id=config.round_id,
        config_digest=config.digest(),
        log_private_key=keys.log_private_key,
    )
    receivers = []
    for i, payload in enumerate(payloads):
        header, chunks = _sealed(keys, config, f"site-{i}", payload, round_key.public_key)
        receiver = UpdateReceiver(
            header,
            spec,
            config.max_chunk_size,
            round_key,
            keys.bound.binding_for(header.challenge),
            buffers=pool,
            wait_seconds=1.0,
        )
        for chunk in chunks:
            receiver.feed(chunk)
        receivers.append(receiver)
        if i == 0:
            receiver.wipe()  # the buffer goes back to the pool; the second upload gets it
    receivers[0].wipe()
    second = receivers[1].finish()
    expected = safetensors.torch.load(payloads[1])
    assert all(torch.equal(second.tensors[name], expected[name]) for name in expected)
    receivers[1].wipe()


def test_reserve_fills_only_the_idle_slots() -> None:
    pool = PlaintextBuffers(slots=2)
    pool.reserve(1000)
    assert pool.held_bytes() == 2000  # both slots, allocated now, not on the first uploads
    lent = pool.acquire(1000, 0.0)
    pool.reserve(1000)
    assert pool.held_bytes() == 1000  # one lent, one idle: never more than the slots
    pool.reserve(3000)
    assert pool.held_bytes() == 3000  # the idle buffer was too small: replaced, not kept
    pool.release(lent)
    pool.drop_idle()
    assert pool.held_bytes() == 0


def test_opening_a_round_reserves_the_buffers(manager: tuple[RoundManager, EnclaveKeys]) -> None:
    rounds, keys = manager
    spec = _spec(WireDtype.FLOAT32)
    config = round_config(adapter_spec=spec, min_clients=1, max_clients=1)
    assert rounds._buffers.held_bytes() == 0
    rounds.open_round(config)
    assert rounds._buffers.held_bytes() == 2 * spec.max_serialized_size()
    payload = safetensors.torch.save(_adapter(1, torch.float32))
    header, chunks = _sealed(keys, config, "site-0", payload, _round_key(rounds, config))
    rounds.submit(header, iter(chunks))
    rounds.wait_closed(config.round_id, 10.0)
    # The close freed the idle buffer before serializing; only the last upload's came back.
    assert rounds._buffers.held_bytes() <= spec.max_serialized_size()

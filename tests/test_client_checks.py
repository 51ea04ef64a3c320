"""The client's own checks on what the aggregator hands it: the aggregate and the evidence.

Enforces two promises of docs/threat-model.md ("What the operator and the cloud cannot do"):

- "Forge an aggregate: it is signed by the attested log key and checked by clients." The
  real SDK client fetches a round's aggregate from a live aggregator through a relay that
  forges the reply (a manifest signed by another Ed25519 key, one aggregate byte flipped,
  the aggregate truncated, a correctly signed manifest of another round), and must refuse
  each, by name. `fedseal.manifest.verify_manifest` is also tested directly, one negative
  test per kind of tampering, on a manifest the enclave signed.
- "Replay old or someone else's evidence: it is bound to the client's fresh challenge."
  Every attest() sends the aggregator a new CHALLENGE_SIZE-byte challenge (same client or
  another), and evidence recorded from one call, replayed to a later attest() of the same
  client or of another one, is refused with BindingMismatchError.

The relay sits between the client's code and the wire: it wraps the real transport method
(`AggregatorConnection.get_aggregate` / `get_attestation`), so the client's own
verification code runs on the forged bytes exactly as it would on bytes from the network.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import make_adapter, round_config, serving_aggregator, site_client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator import RunningAggregator
from attestation import BindingMismatchError, EvidenceBundle, load_builtin_policy
from client_sdk import SignatureError  # the SDK re-exports it for its callers
from client_sdk._transport import AggregatorConnection
from fedseal.binding import CHALLENGE_SIZE
from fedseal.canonical import canonical_json
from fedseal.manifest import SignedManifest, sign_manifest, verify_manifest

DEV = load_builtin_policy("dev-insecure-allow-simulated")


def _intercept(monkeypatch: pytest.MonkeyPatch, method: str, around: Callable[..., Any]) -> None:
    """Route every call of `AggregatorConnection.<method>` through `around(real, *args,
    **kwargs)`, `real` being the genuine method bound to that connection: a relay on the
    real transport, between the client's code and the aggregator."""
    real = getattr(AggregatorConnection, method)

    def relayed(self: AggregatorConnection, *args: Any, **kwargs: Any) -> Any:
        return around(functools.partial(real, self), *args, **kwargs)

    monkeypatch.setattr(AggregatorConnection, method, relayed)


@dataclasses.dataclass(frozen=True)
class Published:
    """A live aggregator that closed rounds 1 and 2, and what it published for each: the
    signed manifest and aggregate bytes exactly as GetAggregate serves them."""

    aggregator: RunningAggregator
    served: dict[int, tuple[bytes, bytes]]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    with serving_aggregator(tmp_path_factory.mktemp("client_checks")) as agg:
        served: dict[int, tuple[bytes, bytes]] = {}
        for round_id in (1, 2):
            agg.rounds.open_round(round_config(round_id, min_clients=1, max_clients=1))
            with site_client(agg.endpoint, DEV, f"site-{round_id}", timeout=20) as client:
                client.submit_update(make_adapter(round_id), round_id=round_id, num_examples=10)
                # The real client accepts the genuine aggregate (the control for every
                # refusal below); then the bytes it was served are kept.
                aggregate = client.fetch_aggregate(round_id, wait_seconds=10)
                assert aggregate.round_id == round_id
                served[round_id] = client._connection.get_aggregate(round_id, wait_seconds=0)
                assert served[round_id][1] == aggregate.data
        assert served[1][1] != served[2][1]
        yield Published(agg, served)


# ------------------------------------------------------------------ the client refuses a forged aggregate

Fetch = Callable[[int], tuple[bytes, bytes]]  # the real GetAggregate: round id -> (manifest, data)


def _signed_by_another_key(fetch: Fetch, round_id: int) -> tuple[bytes, bytes]:
    manifest, data = fetch(round_id)
    resigned = sign_manifest(SignedManifest.from_bytes(manifest).manifest, Ed25519PrivateKey.generate())
    return resigned.to_bytes(), data


def _one_aggregate_byte_flipped(fetch: Fetch, round_id: int) -> tuple[bytes, bytes]:
    manifest, data = fetch(round_id)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    return manifest, bytes(flipped)


def _aggregate_truncated(fetch: Fetch, round_id: int) -> tuple[bytes, bytes]:
    manifest, data = fetch(round_id)
    return manifest, data[:-1]


def _another_rounds_signed_aggregate(fetch: Fetch, round_id: int) -> tuple[bytes, bytes]:
    return fetch(round_id - 1)  # genuine, signed by the attested log key: for the round before


@pytest.mark.parametrize(
    ("forgery", "error", "message"),
    [
        (_signed_by_another_key, SignatureError, "round 2 is not signed by the attested log key"),
        (_one_aggregate_byte_flipped, SignatureError, "round 2 does not match the signed manifest's digest"),
        (_aggregate_truncated, SignatureError, r"round 2 has (\d+) bytes, the signed manifest says (\d+)"),
        (
            _another_rounds_signed_aggregate,
            SignatureError,
            "asked for round 2's aggregate, got one signed for round 1",
        ),
    ],
    ids=["signed-by-another-key", "byte-flipped", "truncated", "another-rounds"],
)
def test_the_client_refuses_a_forged_aggregate(
    published: Published,
    monkeypatch: pytest.MonkeyPatch,
    forgery: Callable[[Fetch, int], tuple[bytes, bytes]],
    error: type[Exception],
    message: str,
) -> None:
    relayed: list[tuple[bytes, bytes]] = []

    def forge(real: Callable[..., tuple[bytes, bytes]], round_id: int, *, wait_seconds: float) -> Any:
        relayed.append(forgery(lambda r: real(r, wait_seconds=wait_seconds), round_id))
        return relayed[-1]

    _intercept(monkeypatch, "get_aggregate", forge)
    with (
        site_client(published.aggregator.endpoint, DEV, "site-0", timeout=20) as client,
        pytest.raises(error, match=message) as refused,
    ):
        client.fetch_aggregate(2)
    # The refusal is of the one forged reply, and the forgery changed what was genuine.
    assert len(relayed) == 1 and relayed[0] != published.served[2]
    if forgery is _aggregate_truncated:
        genuine = len(published.served[2][1])
        assert refused.match(rf"has {genuine - 1} bytes, the signed manifest says {genuine}")


def test_the_relay_itself_passes_the_genuine_aggregate(
    published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: through the same relay, untouched, the client accepts."""
    _intercept(monkeypatch, "get_aggregate", lambda real, *args, **kwargs: real(*args, **kwargs))
    with site_client(published.aggregator.endpoint, DEV, "site-0", timeout=20) as client:
        aggregate = client.fetch_aggregate(2)
    assert aggregate.round_id == 2 and aggregate.data == published.served[2][1]


# ------------------------------------------------------------------ verify_manifest, one tampering at a time

Tampering = Callable[[Published], tuple[SignedManifest, bytes]]


def _genuine(published: Published, round_id: int = 2) -> tuple[SignedManifest, bytes]:
    manifest, data = published.served[round_id]
    return SignedManifest.from_bytes(manifest), data


def test_verify_manifest_accepts_the_enclaves_manifest(published: Published) -> None:
    signed, data = _genuine(published)
    log_key = published.aggregator.keys.log_private_key.public_key()
    assert verify_manifest(signed, log_key, data, round_id=2) == signed.manifest
    assert verify_manifest(signed, log_key, memoryview(data), round_id=2) == signed.manifest
    assert signed.manifest.aggregate_digest == hashlib.sha256(data).digest()


def _manifest_signed_by_another_key(published: Published) -> tuple[SignedManifest, bytes]:
    signed, data = _genuine(published)
    return sign_manifest(signed.manifest, Ed25519PrivateKey.generate()), data


def _signature_bit_flipped(published: Published) -> tuple[SignedManifest, bytes]:
    signed, data = _genuine(published)
    signature = bytearray(signed.signature)
    signature[5] ^= 0x10
    return SignedManifest(signed.manifest, bytes(signature)), data


def _round_relabelled_after_signing(published: Published) -> tuple[SignedManifest, bytes]:
    signed, data = _genuine(published)
    return SignedManifest(dataclasses.replace(signed.manifest, round_id=3), signed.signature), data


def _another_aggregate_and_its_digest_edited_in(published: Published) -> tuple[SignedManifest, bytes]:
    signed, _ = _genuine(published)
    _, other = published.served[1]  # round 1's real aggregate, passed off under round 2's signature
    manifest = dataclasses.replace(
        signed.manifest, aggregate_digest=hashlib.sha256(other).digest(), aggregate_size=len(other)
    )
    return SignedManifest(manifest, signed.signature), other


def _signed_by_the_log_key_without_the_domain(published: Published) -> tuple[SignedManifest, bytes]:
    signed, data = _genuine(published)
    key = published.aggregator.keys.log_private_key
    return SignedManifest(signed.manifest, key.sign(canonical_json(signed.manifest.to_json_obj()))), data


def _aggregate_byte_flipped(published: Published) -> tuple[SignedManifest, bytes]:
    signed, data = _genuine(published)
    flipped = bytearray(data)
    flipped[-1] ^= 0x80
    return signed, bytes(flipped)


def _aggregate_cut_short(published: Published) -> tuple[SignedManifest, bytes]:
    signed, data = _genuine(published)
    return signed, data[: len(data) // 2]


def _aggregate_extended(published: Published) -> tuple[SignedManifest, bytes]:
    signed, data = _genuine(published)
    return signed, data + b"\0"


_NOT_SIGNED = "is not signed by the attested log key"


@pytest.mark.parametrize(
    ("tampering", "message"),
    [
        (_manifest_signed_by_another_key, _NOT_SIGNED),
        (_signature_bit_flipped, _NOT_SIGNED),
        (_round_relabelled_after_signing, _NOT_SIGNED),
        (_another_aggregate_and_its_digest_edited_in, _NOT_SIGNED),
        (_signed_by_the_log_key_without_the_domain, _NOT_SIGNED),
        (_aggregate_byte_flipped, "does not match the signed manifest's digest"),
        (_aggregate_cut_short, r"has \d+ bytes, the signed manifest says \d+"),
        (_aggregate_extended, r"has \d+ bytes, the signed manifest says \d+"),
    ],
    ids=[
        "another-key",
        "signature-bit-flipped",
        "round-relabelled",
        "digest-edited",
        "no-domain-separation",
        "aggregate-byte-flipped",
        "aggregate-cut-short",
        "aggregate-extended",
    ],
)
def test_verify_manifest_refuses(published: Published, tampering: Tampering, message: str) -> None:
    signed, data = tampering(published)
    assert (signed, data) != _genuine(published)
    log_key = published.aggregator.keys.log_private_key.public_key()
    with pytest.raises(SignatureError, match=message):
        verify_manifest(signed, log_key, data, round_id=2)


# ------------------------------------------------------------------ evidence is bound to a fresh challenge


def test_every_attest_sends_a_fresh_challenge_and_replayed_evidence_is_refused(
    published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bytes, bytes]] = []  # (the challenge sent, the bundle the aggregator answered)
    replay: list[bytes] = []  # when set, the relay answers with this recorded bundle instead

    def tap(real: Callable[[bytes], bytes], challenge: bytes) -> bytes:
        bundle = real(challenge)
        seen.append((challenge, bundle))
        return replay[0] if replay else bundle

    _intercept(monkeypatch, "get_attestation", tap)
    endpoint = published.aggregator.endpoint
    with (
        site_client(endpoint, DEV, "site-0", timeout=20) as first,
        site_client(endpoint, DEV, "site-1", timeout=20) as second,
    ):
        first.attest()
        first.attest()
        second.attest()
        challenges = [challenge for challenge, _ in seen]
        assert len(challenges) == 3
        assert all(len(challenge) == CHALLENGE_SIZE for challenge in challenges)
        assert len(set(challenges)) == 3, "two attest() calls sent the same challenge"
        # The aggregator received each: its evidence answers exactly that challenge.
        assert [EvidenceBundle.from_bytes(bundle).challenge for _, bundle in seen] == challenges

        # Evidence recorded from the first call, replayed to a later attest() of the same
        # client and to another client's: both refused as bound to another challenge.
        replay.append(seen[0][1])
        with pytest.raises(BindingMismatchError, match="another challenge than yours"):
            first.attest()
        with pytest.raises(BindingMismatchError, match="another challenge than yours"):
            second.attest()
        assert len({challenge for challenge, _ in seen}) == 5

        # Only the replay was refused: fresh evidence verifies again on both channels.
        replay.clear()
        first.attest()
        second.attest()


def test_verify_manifest_refuses_another_rounds_genuine_manifest(published: Published) -> None:
    signed, data = _genuine(published, 1)
    log_key = published.aggregator.keys.log_private_key.public_key()
    assert verify_manifest(signed, log_key, data, round_id=1) == signed.manifest
    with pytest.raises(SignatureError, match="asked for round 2's aggregate, got one signed for round 1"):
        verify_manifest(signed, log_key, data, round_id=2)

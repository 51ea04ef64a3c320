"""Attested TLS: the binding covers the enclave's TLS certificate, and a client refuses to
send anything but GetAttestation through a proxy that terminates TLS."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from conftest import make_adapter, operator_client, round_config, simulated_collector, site_client
from cryptography import x509
from identities import ConsortiumPki, site_identity
from relay import Relay, self_signed_certificate

from aggregator import RunningAggregator
from aggregator._tls import EnclaveTlsIdentity
from attestation import BindingMismatchError, EvidenceBundle, Policy, build_bundle, verify_bundle
from attestation._cli import fetch_bundle
from client_sdk import (
    AggregatorUnavailableError,
    ChannelSecurity,
    FedSealClient,
    UnattestedChannelError,
)
from client_sdk._transport import AggregatorConnection
from fedseal.binding import BINDING_DOMAIN_V2, BindingVersion, BoundKeys, compute_binding, length_prefixed
from fedseal.errors import FormatError
from fedseal.logformat import EntryKind, decode_record
from fedseal.tls import ENCLAVE_TLS_NAME, ClientTlsCredentials, probe_server_certificate

# --- the binding ---------------------------------------------------------------------------


def test_binding_v2_is_the_documented_hash_and_differs_from_v1() -> None:
    hpke, log, tls, challenge = (bytes([n]) * 32 for n in (1, 2, 3, 4))
    # SHA-256 over the length-prefixed fields, spelled out byte by byte.
    expected = hashlib.sha256(
        b"".join(
            len(f).to_bytes(4, "big") + f
            for f in (b"fedseal/attestation-binding/v2", hpke, log, tls, challenge)
        )
    ).digest()
    assert compute_binding(hpke, log, challenge, tls) == expected
    assert length_prefixed(BINDING_DOMAIN_V2, hpke, log, tls, challenge).startswith(b"\x00\x00\x00\x1e")
    v1 = compute_binding(hpke, log, challenge)
    assert v1 != expected and compute_binding(hpke, log, challenge, bytes(32)) != expected
    assert BoundKeys(hpke, log).version is BindingVersion.V1
    assert BoundKeys(hpke, log, tls).version is BindingVersion.V2
    assert BoundKeys(hpke, log, tls).binding_for(challenge) == expected
    with pytest.raises(FormatError, match="TLS certificate digest"):
        BoundKeys(hpke, log, b"short")


def test_bundle_v2_round_trips_and_its_tls_digest_is_bound(dev_policy: Policy) -> None:
    keys = BoundKeys(os.urandom(32), os.urandom(32), os.urandom(32))
    challenge = os.urandom(32)
    bundle = build_bundle(keys, challenge, [simulated_collector()])
    assert bundle.version == 2 and b'"format":"fedseal-evidence-bundle/v2"' in bundle.to_bytes()
    assert EvidenceBundle.from_bytes(bundle.to_bytes()) == bundle
    attested = verify_bundle(bundle, dev_policy, challenge)
    assert attested.tls_certificate_sha256 == keys.tls_certificate_sha256
    # Another certificate digest in the bundle no longer matches the binding the evidence carries.
    swapped = dataclasses.replace(bundle, tls_certificate_sha256=os.urandom(32))
    with pytest.raises(BindingMismatchError):
        verify_bundle(swapped, dev_policy, challenge)
    # Dropping it (a v1 bundle with the same evidence) fails the same way.
    with pytest.raises(BindingMismatchError):
        verify_bundle(dataclasses.replace(bundle, tls_certificate_sha256=None), dev_policy, challenge)


def test_enclave_certificate_is_self_signed_for_the_enclave_name() -> None:
    identity = EnclaveTlsIdentity.generate()
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    assert identity.certificate_sha256 == hashlib.sha256(identity.certificate_der).digest()
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [ENCLAVE_TLS_NAME]
    assert "PRIVATE KEY" not in repr(identity)
    assert EnclaveTlsIdentity.generate().certificate_sha256 != identity.certificate_sha256


# --- against a live aggregator -------------------------------------------------------------


def _entries(running: RunningAggregator) -> list[EntryKind]:
    lines = running.log.path.read_bytes().splitlines()
    return [
        r.entry.kind for n, line in enumerate(lines, 1) if (r := decode_record(line, line_number=n)).entry
    ]


def test_the_aggregator_attests_the_certificate_it_serves(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    seen = probe_server_certificate(live_aggregator.endpoint)
    assert seen.sha256 == live_aggregator.tls.certificate_sha256
    with FedSealClient(live_aggregator.endpoint, dev_policy) as client:
        attested = client.attest()
    assert attested.tls_certificate_sha256 == seen.sha256
    assert live_aggregator.keys.bound.version is BindingVersion.V2


def test_a_tls_terminating_proxy_gets_nothing_but_the_attestation_request(
    live_aggregator: RunningAggregator, dev_policy: Policy, tmp_path: Path
) -> None:
    live_aggregator.rounds.open_round(round_config(1))
    before = _entries(live_aggregator)
    cert, key, _ = self_signed_certificate(tmp_path)
    with Relay(live_aggregator.endpoint, terminate=(cert, key)) as proxy:
        with site_client(proxy.endpoint, dev_policy, "site-0", timeout=10) as client:
            with pytest.raises(UnattestedChannelError, match="terminates TLS"):
                client.submit_update(make_adapter(0), round_id=1, num_examples=10)
            # The channel stays refused: no call but GetAttestation ever leaves.
            with pytest.raises(UnattestedChannelError):
                client.fetch_aggregate(1)
            with pytest.raises(UnattestedChannelError):
                client.round_info(1)
        # One GetAttestation per attempt went through the proxy (the evidence is public);
        # no GetRound, no SubmitUpdate, no GetAggregate.
        assert proxy.client_streams == 3
        with pytest.raises(BindingMismatchError, match="terminates TLS"):
            fetch_bundle(proxy.endpoint, os.urandom(32), timeout=10)
    assert _entries(live_aggregator) == before  # the aggregator saw no update and no refusal


def test_a_tcp_relay_that_passes_tls_through_changes_nothing(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    live_aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    with (
        Relay(live_aggregator.endpoint) as relay,
        site_client(relay.endpoint, dev_policy, "site-0", timeout=20) as c,
    ):
        receipt = c.submit_update(make_adapter(0), round_id=1, num_examples=10)
        assert receipt.entry.fields["client_id"] == "site-0"
        assert c.fetch_aggregate(1, wait_seconds=10).manifest.participants == ("site-0",)


def test_behind_a_terminating_load_balancer_by_explicit_choice(
    live_aggregator: RunningAggregator, dev_policy: Policy, tmp_path: Path
) -> None:
    """The documented load-balancer deployment: the client checks the balancer's certificate
    against its CA and gives up the channel binding; the envelope still seals the update to
    the attested key, and the site's signature and call tokens still identify it."""
    live_aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    cert, key, ca_pem = self_signed_certificate(tmp_path)
    with Relay(live_aggregator.endpoint, terminate=(cert, key)) as balancer:
        options = {"security": ChannelSecurity.TERMINATED_TLS, "root_certificates": ca_pem, "timeout": 20}
        with site_client(balancer.endpoint, dev_policy, "site-1", **options) as client:
            receipt = client.submit_update(make_adapter(1), round_id=1, num_examples=5)
            assert receipt.entry.fields["client_id"] == "site-1"
        # Without the balancer's CA the channel does not even open.
        without_ca = {"security": ChannelSecurity.TERMINATED_TLS, "timeout": 5}
        with (
            pytest.raises(AggregatorUnavailableError, match="UNAVAILABLE"),
            site_client(balancer.endpoint, dev_policy, "site-2", **without_ca) as client,
        ):
            client.attest()


def test_a_restarted_enclave_is_a_new_certificate_the_old_pin_refuses(
    tmp_path: Path, dev_policy: Policy
) -> None:
    from conftest import access_config

    from aggregator import start_aggregator

    first = start_aggregator(
        log_path=tmp_path / "a.log",
        log_origin="fedseal.test/tls",
        collectors=[simulated_collector()],
        access=access_config(),
    )
    try:
        connection = AggregatorConnection(first.endpoint, timeout=5)
        pinned = connection.server_certificate
    finally:
        first.stop(0.2)
    second = start_aggregator(
        log_path=tmp_path / "a.log",
        log_origin="fedseal.test/tls",
        collectors=[simulated_collector()],
        access=access_config(),
        listen=f"127.0.0.1:{first.port}",
    )
    try:
        assert pinned is not None and pinned.sha256 != second.tls.certificate_sha256
        with pytest.raises(AggregatorUnavailableError, match="UNAVAILABLE"):
            connection.get_attestation(os.urandom(32))  # the pinned channel cannot reach the new key
        connection.close()
        with operator_client(second.endpoint, dev_policy) as op:  # a fresh client pins the new one
            assert op.attest().tls_certificate_sha256 == second.tls.certificate_sha256
    finally:
        second.stop(0.2)


def test_a_public_name_in_the_certificate_is_sent_and_checked(tmp_path: Path, dev_policy: Policy) -> None:
    """For load balancers that route TLS by server name: the client sends the endpoint's
    name when the enclave certificate carries it (and pins the certificate all the same)."""
    from conftest import access_config

    from aggregator import start_aggregator

    running = start_aggregator(
        log_path=tmp_path / "a.log",
        log_origin="fedseal.test/tls",
        collectors=[simulated_collector()],
        access=access_config(),
        tls_names=["localhost"],
    )
    try:
        seen = probe_server_certificate(f"localhost:{running.port}")
        assert seen.sha256 == running.tls.certificate_sha256
        assert (
            seen.tls_name("localhost") == "localhost" and seen.tls_name("other.example") == ENCLAVE_TLS_NAME
        )
        with FedSealClient(f"localhost:{running.port}", dev_policy) as client:
            assert client.attest().tls_certificate_sha256 == seen.sha256
    finally:
        running.stop(0.2)


def test_a_certificate_chain_that_carries_its_key_is_refused_and_no_repr_shows_either() -> None:
    # A combined cert-and-key PEM (as some web servers take) would carry the key wherever
    # the chain goes: into a ClientIdentity's repr, for one.
    _, tls = ConsortiumPki().issue("site-0")
    with pytest.raises(FormatError, match="holds a private key block") as refused:
        ClientTlsCredentials(tls.certificate_chain_pem + tls.private_key_pem, tls.private_key_pem)
    key_body = tls.private_key_pem.decode().splitlines()[1]
    assert key_body not in str(refused.value)
    shown = repr(site_identity("site-0", tls))
    assert "BEGIN" not in shown and key_body not in shown

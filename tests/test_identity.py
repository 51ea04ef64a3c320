"""Who may submit: enrolled sites only, identified by their client certificate and/or key,
with every update signed by the site (header and ciphertext digest), revocation from the
next call on, and the log's client ids taken from the authenticated identity."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_adapter, round_config, simulated_collector
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from identities import (
    TEST_SITES,
    ConsortiumPki,
    enrolment,
    enrolment_json,
    principal_identity,
    principals,
    site_identity,
)

from aggregator import AccessConfig, ConfigError, RunningAggregator, start_aggregator
from attestation import Policy
from auditor import FindingKind, audit_log
from client_sdk import (
    AccessDeniedError,
    AccessDeniedReason,
    AggregatorUnavailableError,
    ClientError,
    ClientIdentity,
    FedSealClient,
    IdentityError,
    OperatorActionError,
    UpdateRejectedError,
    write_signing_key,
)
from client_sdk._transport import AggregatorConnection
from fedseal.canonical import b64encode
from fedseal.enrolment import Enrolment, EnrolmentError
from fedseal.errors import FormatError, SignatureError
from fedseal.logformat import EntryKind, LogEntry, RejectReason, decode_record
from fedseal.logschema import UpdateAccepted
from fedseal.signed_request import Role, Signer
from fedseal.tls import ClientTlsCredentials

# --- the enrolment format ---------------------------------------------------------------------


def test_enrolment_parses_looks_up_and_has_a_stable_digest(tmp_path: Path) -> None:
    doc = enrolment_json(["site-a", "site-b"], certificates={"site-a": "CN=site-a,O=X"})
    doc["sites"][1]["certificate_sha256"] = ["ab" * 32]  # type: ignore[index]
    path = tmp_path / "enrolment.json"
    path.write_text(json.dumps(doc, indent=3))  # any JSON spelling; the digest is of the canonical form
    loaded = Enrolment.from_file(path)
    assert loaded == Enrolment.from_json_obj(doc) and loaded.digest() == Enrolment.from_json_obj(doc).digest()
    a, b = loaded.site("site-a"), loaded.site("site-b")
    assert a is not None and b is not None and a.requires_certificate and b.requires_certificate
    assert loaded.site_for_key(site_identity("site-b").key_id) is b
    assert loaded.site_for_certificate(os.urandom(32), "CN=site-a,O=X") is a
    assert loaded.site_for_certificate(bytes.fromhex("ab" * 32), "CN=nobody") is b
    assert loaded.site_for_certificate(os.urandom(32), "CN=nobody") is None
    assert Enrolment.from_json_obj(loaded.to_json_obj()) == loaded


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["sites"].append(dict(d["sites"][0])), "enrolled twice"),
        (lambda d: d["sites"][1].update(keys=d["sites"][0]["keys"]), "already enrolled"),
        (lambda d: d["sites"][0].update(keys=[]), "1 to 8"),
        (lambda d: d["sites"][0].update(keys=["not base64"]), "base64"),
        (lambda d: d["sites"][0].update(id="bad id"), "site id"),
        (lambda d: d["sites"][0].update(extra=1), "unknown field"),
        (lambda d: d.update(version=0), "version"),
        (lambda d: d.update(format="x"), "format"),
        (lambda d: d["sites"][0].update(certificate_sha256=["AB" * 32]), "lowercase hex"),
        (
            lambda d: [s.update(certificate_subject="CN=same") for s in d["sites"]],
            "subject is already enrolled",
        ),
    ],
)
def test_enrolment_errors_name_what_is_wrong(change: object, message: str) -> None:
    doc = enrolment_json(["site-a", "site-b"])
    change(doc)  # type: ignore[operator]
    with pytest.raises(EnrolmentError, match=message):
        Enrolment.from_json_obj(doc)


def test_a_principal_key_cannot_also_be_a_site_key() -> None:
    doc = enrolment_json(["site-a"])
    doc["sites"][0]["keys"] = [b64encode(principal_identity("olivia-operator").public_key)]  # type: ignore[index]
    with pytest.raises(ConfigError, match="separate keys"):
        AccessConfig(Enrolment.from_json_obj(doc), principals())


# --- the signed header ---------------------------------------------------------------------


def test_the_header_signature_covers_every_field(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    live_aggregator.rounds.open_round(round_config(1))
    with FedSealClient(live_aggregator.endpoint, dev_policy, identity=site_identity("site-0")) as client:
        header = client.seal_update(make_adapter(0), round_id=1, num_examples=3).header
    public = site_identity("site-0").public_key
    header.verify_signature(public)
    changes: dict[str, object] = {
        "round_id": 2,
        "num_examples": 4,
        "adapter_spec_digest": bytes(32),
        "wrapped_key": bytes(80),  # not signed directly: only through the digest, so it passes
        "idempotency_key": os.urandom(32),
        "challenge": os.urandom(32),
        "chunk_size": header.chunk_size + 1,
        "ciphertext_size": header.ciphertext_size + 1,
        "ciphertext_digest": os.urandom(32),
        "key_id": "0" * 16,
    }
    for field, value in changes.items():
        changed = dataclasses.replace(header, **{field: value})  # type: ignore[arg-type]
        if field == "wrapped_key":
            changed.verify_signature(public)
            continue
        with pytest.raises(SignatureError):
            changed.verify_signature(public)
    with pytest.raises(SignatureError, match="not signed"):
        dataclasses.replace(header, signature=b"").verify_signature(public)
    with pytest.raises(FormatError, match="key_id"):
        header.sign(Ed25519PrivateKey.generate())


# --- a live aggregator with mutual TLS ------------------------------------------------------


@dataclasses.dataclass
class _Mtls:
    running: RunningAggregator
    pki: ConsortiumPki
    crl: Path
    credentials: dict[str, ClientTlsCredentials]

    def client(
        self, site: str, policy: Policy, *, tls_of: str | None = None, key_of: str | None = None
    ) -> FedSealClient:
        identity = ClientIdentity(
            site, site_identity(key_of or site).signing_key, self.credentials[tls_of or site]
        )
        return FedSealClient(self.running.mtls_endpoint, policy, identity=identity, timeout=10)


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[_Mtls]:
    pki = ConsortiumPki()
    certificates = {site: pki.issue(site) for site in ("site-a", "site-b", "site-c")}
    crl = tmp_path / "ca.crl"
    crl.write_bytes(pki.crl([]))
    subjects = {site: pki.subject_of(site) for site in ("site-a", "site-b")}  # site-c: issued, never enrolled
    running = start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin="fedseal.test/identity",
        collectors=[simulated_collector()],
        access=AccessConfig(
            enrolment(["site-a", "site-b", "site-k"], certificates=subjects),
            principals(),
            client_ca_pem=pki.ca_pem,
            crl_path=crl,
        ),
        listen_mtls="127.0.0.1:0",
    )
    try:
        yield _Mtls(running, pki, crl, {site: creds for site, (_, creds) in certificates.items()})
    finally:
        running.stop(0.2)


def _entries(running: RunningAggregator) -> list[LogEntry]:
    lines = running.log.path.read_bytes().splitlines()
    return [e for n, line in enumerate(lines, 1) if (e := decode_record(line, line_number=n).entry)]


def _denied(call: object) -> AccessDeniedReason:
    with pytest.raises(AccessDeniedError) as info:
        call()  # type: ignore[operator]
    return info.value.reason


def test_enrolled_sites_submit_over_mutual_tls_and_the_log_names_them(
    mtls: _Mtls, dev_policy: Policy
) -> None:
    mtls.running.rounds.open_round(round_config(1, min_clients=2, max_clients=2))
    for n, site in enumerate(("site-a", "site-b")):
        with mtls.client(site, dev_policy) as client:
            receipt = client.submit_update(make_adapter(n), round_id=1, num_examples=n + 1)
            assert receipt.entry.fields["client_id"] == site
            assert receipt.entry.fields["key_id"] == site_identity(site).key_id
    kinds = [e.kind for e in _entries(mtls.running)]
    assert kinds[:4] == [
        EntryKind.ENCLAVE_STARTED,
        EntryKind.REVOCATION_LIST_LOADED,
        EntryKind.PRINCIPALS_RECORDED,
        EntryKind.ENROLMENT_RECORDED,
    ]
    report = audit_log(mtls.running.log.path, dev_policy)
    assert report.findings == () and [e["version"] for e in report.enrolments] == [1]


def test_who_is_refused_and_why(mtls: _Mtls, dev_policy: Policy) -> None:
    mtls.running.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    # No identity at all: only the public calls work.
    with FedSealClient(mtls.running.endpoint, dev_policy) as anonymous:
        assert _denied(lambda: anonymous.round_info(1)) is AccessDeniedReason.UNAUTHENTICATED
        assert anonymous.attest().tls_certificate_sha256 == mtls.running.tls.certificate_sha256
    # A key nobody enrolled.
    stranger = ClientIdentity("site-z", Ed25519PrivateKey.generate())
    with FedSealClient(mtls.running.endpoint, dev_policy, identity=stranger) as client:
        assert _denied(lambda: client.round_info(1)) is AccessDeniedReason.UNKNOWN_SIGNER
    # A site enrolled with a certificate, coming with its key only.
    with FedSealClient(mtls.running.endpoint, dev_policy, identity=site_identity("site-a")) as client:
        assert _denied(lambda: client.round_info(1)) is AccessDeniedReason.CERTIFICATE_REQUIRED
    # A certificate from the consortium CA that is not enrolled.
    with mtls.client("site-c", dev_policy, key_of="site-k") as client:
        assert _denied(lambda: client.round_info(1)) is AccessDeniedReason.NOT_ENROLLED
    # Site A's key presenting site B's certificate.
    with mtls.client("site-a", dev_policy, tls_of="site-b") as client:
        assert _denied(lambda: client.round_info(1)) is AccessDeniedReason.IDENTITY_MISMATCH
    # A certificate from another CA does not even complete the handshake.
    _, foreign = ConsortiumPki(name="Another CA").issue("site-a")
    identity = ClientIdentity("site-a", site_identity("site-a").signing_key, foreign)
    with (
        pytest.raises(AggregatorUnavailableError),
        FedSealClient(mtls.running.mtls_endpoint, dev_policy, identity=identity, timeout=5) as client,
    ):
        client.attest()
    # A key-only site over the plain TLS port is fine.
    with FedSealClient(mtls.running.endpoint, dev_policy, identity=site_identity("site-k")) as client:
        assert client.round_info(1).config.round_id == 1
    # None of it reached the log as an update (or a refusal: unknown callers cannot fill it).
    assert not any(
        e.kind in (EntryKind.UPDATE_ACCEPTED, EntryKind.UPDATE_REJECTED) for e in _entries(mtls.running)
    )


def test_the_inner_signature_must_be_the_tls_identitys(mtls: _Mtls, dev_policy: Policy) -> None:
    mtls.running.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    with mtls.client("site-a", dev_policy) as client:
        sealed = client.seal_update(make_adapter(1), round_id=1, num_examples=2)
        connection: AggregatorConnection = client._connection
        other = site_identity("site-b")
        # Site A's TLS identity, a payload signed by site B (as site A, then as site B).
        as_a = dataclasses.replace(sealed.header, key_id=other.key_id).sign(other.signing_key)
        as_b = dataclasses.replace(sealed.header, client_id="site-b", key_id=other.key_id).sign(
            other.signing_key
        )
        # Site A's own key, but a signature that does not verify / does not cover the ciphertext.
        flipped = bytearray(sealed.header.signature)
        flipped[5] ^= 1
        garbled = dataclasses.replace(sealed.header, signature=bytes(flipped))
        wrong_digest = dataclasses.replace(sealed.header, ciphertext_digest=os.urandom(32)).sign(
            site_identity("site-a").signing_key
        )
        for header, reason in (
            (as_a, RejectReason.IDENTITY_MISMATCH),
            (as_b, RejectReason.IDENTITY_MISMATCH),
            (garbled, RejectReason.BAD_SIGNATURE),
            (wrong_digest, RejectReason.BAD_SIGNATURE),
        ):
            with pytest.raises(UpdateRejectedError) as info:
                connection.submit(header, sealed.chunks, timeout=10)
            assert info.value.reason is reason, str(info.value)
        # The client SDK does not even try to submit under another id.
        with pytest.raises(ClientError, match="not this client's identity"):
            client.seal_update(make_adapter(1), round_id=1, client_id="site-b", num_examples=2)
        receipt = client.send(sealed)  # the honest one still goes in
    assert receipt.entry.fields["client_id"] == "site-a"
    rejected = [e.fields for e in _entries(mtls.running) if e.kind is EntryKind.UPDATE_REJECTED]
    # Logged under the authenticated id, never the header's claim.
    assert [(f["client_id"], f["reason"]) for f in rejected] == [
        ("site-a", "identity_mismatch"),
        ("site-a", "identity_mismatch"),
        ("site-a", "bad_signature"),
        ("site-a", "bad_signature"),
    ]
    assert audit_log(mtls.running.log.path, dev_policy).findings == ()


def test_a_revoked_certificate_is_refused_from_the_next_call_on(mtls: _Mtls, dev_policy: Policy) -> None:
    mtls.running.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    with mtls.client("site-a", dev_policy) as client:
        assert client.round_info(1).accepted == 0
        unused, _ = mtls.pki.issue("unused")
        site_a = x509.load_pem_x509_certificate(mtls.credentials["site-a"].certificate_chain_pem)
        mtls.crl.write_bytes(mtls.pki.crl([unused, site_a]))
        os.utime(mtls.crl, ns=(1, 1))  # a different mtime, whatever the clock's resolution
        _wait_for_reload()
        assert _denied(lambda: client.round_info(1)) is AccessDeniedReason.REVOKED
    with mtls.client("site-b", dev_policy) as client:  # others go on
        assert client.round_info(1).accepted == 0
    loaded = [e.fields for e in _entries(mtls.running) if e.kind is EntryKind.REVOCATION_LIST_LOADED]
    assert [(f["crl_number"], f["revoked"]) for f in loaded] == [(1, 0), (2, 2)]
    # An older list is never taken back.
    mtls.crl.write_bytes(_older_crl(mtls.pki))
    os.utime(mtls.crl, ns=(2, 2))
    _wait_for_reload()
    with mtls.client("site-a", dev_policy) as client:
        assert _denied(lambda: client.round_info(1)) is AccessDeniedReason.REVOKED


def test_a_site_removed_from_the_enrolment_is_refused_from_the_next_call_on(
    mtls: _Mtls, dev_policy: Policy
) -> None:
    mtls.running.rounds.open_round(round_config(1, min_clients=1, max_clients=2))
    operator = FedSealClient(
        mtls.running.endpoint, dev_policy, identity=principal_identity("olivia-operator")
    )
    with mtls.client("site-b", dev_policy) as site_b, operator:
        assert site_b.round_info(1).accepted == 0
        subjects = {"site-a": mtls.pki.subject_of("site-a")}
        with pytest.raises(OperatorActionError, match="not above"):  # the version must go up
            operator.rotate_enrolment(enrolment(["site-a", "site-k"], version=1, certificates=subjects))
        operator.rotate_enrolment(enrolment(["site-a", "site-k"], version=2, certificates=subjects))
        assert _denied(lambda: site_b.round_info(1)) is AccessDeniedReason.NOT_ENROLLED
    with FedSealClient(mtls.running.endpoint, dev_policy, identity=site_identity("site-b")) as key_only:
        assert _denied(lambda: key_only.round_info(1)) is AccessDeniedReason.UNKNOWN_SIGNER
    with mtls.client("site-a", dev_policy) as site_a:
        site_a.submit_update(make_adapter(0), round_id=1, num_examples=1)
    entries = _entries(mtls.running)
    rotations = [e.fields for e in entries if e.kind is EntryKind.ENROLMENT_RECORDED]
    assert [(f["version"], f["cause"]) for f in rotations] == [(1, "start"), (2, "rotation")]
    actions = [e.fields for e in entries if e.kind is EntryKind.OPERATOR_ACTION]
    # Both signed requests are on record; only the second changed the enrolment.
    assert [(a["action"], a["signer"]) for a in actions] == [("rotate_enrolment", "olivia-operator")] * 2
    report = audit_log(mtls.running.log.path, dev_policy)
    assert report.findings == () and [e["version"] for e in report.enrolments] == [1, 2]


def test_listeners_must_fit_the_enrolment(tmp_path: Path) -> None:
    subjects = {"site-a": "CN=site-a"}
    with pytest.raises(ConfigError, match="mutual-TLS"):
        start_aggregator(
            log_path=tmp_path / "a.log",
            log_origin="fedseal.test/x",
            collectors=[simulated_collector()],
            access=AccessConfig(enrolment(["site-a"], certificates=subjects)),
        )
    with pytest.raises(ConfigError, match="--client-ca"):
        start_aggregator(
            log_path=tmp_path / "a.log",
            log_origin="fedseal.test/x",
            collectors=[simulated_collector()],
            access=AccessConfig(enrolment()),
            listen_mtls="127.0.0.1:0",
        )
    assert not (tmp_path / "a.log").exists()


# --- the auditor ----------------------------------------------------------------------------


def test_the_auditor_refuses_an_update_no_enrolled_key_signed(tmp_path: Path, dev_policy: Policy) -> None:
    """An enclave (buggy or subverted) that logs an update without the site's signature is
    caught from the log alone, although every checkpoint over it is validly signed."""
    running = start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin="fedseal.test/identity",
        collectors=[simulated_collector()],
        access=AccessConfig(enrolment(TEST_SITES), principals()),
    )
    try:
        running.rounds.open_round(round_config(1, min_clients=1, max_clients=2))
        with FedSealClient(running.endpoint, dev_policy, identity=site_identity("site-0")) as client:
            honest = client.submit_update(make_adapter(0), round_id=1, num_examples=1).entry.body
        assert isinstance(honest, UpdateAccepted)
        forged = dataclasses.replace(honest, client_id="site-1")  # site-0's signature, claimed for site-1
        running.log.append(forged)
    finally:
        running.stop(0.2)
    findings = audit_log(running.log.path, dev_policy).findings
    assert FindingKind.BAD_UPDATE_SIGNATURE in [f.kind for f in findings]
    (bad,) = [f for f in findings if f.kind is FindingKind.BAD_UPDATE_SIGNATURE]
    assert "site-1" in bad.message


def _older_crl(pki: ConsortiumPki) -> bytes:
    pki.crl_number = 0  # number 1 again: lower than the list in force
    return pki.crl([])


def _wait_for_reload() -> None:
    time.sleep(1.1)  # the list is looked at again at most once a second


def test_identity_files_load_and_name_what_is_wrong(tmp_path: Path) -> None:
    public = write_signing_key(tmp_path / "site.key")
    assert (tmp_path / "site.key").stat().st_mode & 0o777 == 0o600
    identity = ClientIdentity.from_files("site-a", tmp_path / "site.key")
    assert identity.public_key == public and identity.tls is None
    with pytest.raises(IdentityError, match="cannot create"):
        write_signing_key(tmp_path / "site.key")  # never overwrites a key
    _, tls = ConsortiumPki().issue("site-a")
    (tmp_path / "a.crt").write_bytes(tls.certificate_chain_pem)
    (tmp_path / "a-tls.key").write_bytes(tls.private_key_pem)
    with_tls = ClientIdentity.from_files(
        "site-a",
        tmp_path / "site.key",
        certificate_file=tmp_path / "a.crt",
        tls_key_file=tmp_path / "a-tls.key",
    )
    assert with_tls.tls == tls
    with pytest.raises(IdentityError, match="not an Ed25519"):
        ClientIdentity.from_files("site-a", tmp_path / "a-tls.key")  # an ECDSA key
    with pytest.raises(IdentityError, match="needs its key"):
        ClientIdentity.from_files("site-a", tmp_path / "site.key", certificate_file=tmp_path / "a.crt")
    with pytest.raises(IdentityError, match="cannot read"):
        ClientIdentity.from_files("site-a", tmp_path / "missing.key")
    assert "PRIVATE" not in repr(with_tls)


def test_the_auditor_flags_access_changed_at_a_restart(tmp_path: Path, dev_policy: Policy) -> None:
    """Nobody signs the files a restarted enclave starts from: going back to an older
    enrolment, or naming other principals, is an audit finding."""
    path = tmp_path / "audit.log"
    for version, names in ((2, ("olivia-operator",)), (1, ("mallory",))):
        running = start_aggregator(
            log_path=path,
            log_origin="fedseal.test/identity",
            collectors=[simulated_collector()],
            access=AccessConfig(
                enrolment(version=version),
                tuple(Signer(n, Role.OPERATOR, principal_identity(n).public_key) for n in names),
            ),
        )
        running.stop(0.2)
    findings = audit_log(path, dev_policy).findings
    assert [f.kind for f in findings] == [FindingKind.INCONSISTENT_ACCESS] * 2
    assert "principals changed" in findings[0].message and "version 1 from 2" in findings[1].message

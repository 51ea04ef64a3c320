"""The operator surface: signed requests from the job's principals, with separate roles.

Valid requests are accepted and logged with their signer; forged, replayed, expired,
not-yet-valid, wrong-audience and wrong-role requests are refused with named errors, both
by the verifier itself and over the wire; the auditor re-checks every logged action.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import (
    access_config,
    make_adapter,
    operator_client,
    round_config,
    simulated_collector,
    site_client,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from identities import APPROVER, OPERATOR, principal_identity, principals, principals_json, site_identity

from aggregator import ConfigError, JobConfig, RunningAggregator, start_aggregator
from attestation import Policy
from auditor import FindingKind, audit_log
from client_sdk import AccessDeniedError, AccessDeniedReason, FedSealClient, OperatorActionError
from client_sdk._transport import AggregatorConnection
from fedseal.canonical import b64decode_canonical, b64encode, canonical_json
from fedseal.logformat import EntryKind, decode_record
from fedseal.logschema import OperatorAction
from fedseal.signed_request import (
    CLOCK_SKEW_MS,
    MAX_LIFETIME_MS,
    SIGNED_REQUEST_DOMAIN,
    ExpiredRequestError,
    ForgedRequestError,
    MalformedPrincipalsError,
    MalformedRequestError,
    NonceCache,
    NotYetValidRequestError,
    ReplayedRequestError,
    RequestCacheFullError,
    Role,
    Signer,
    UnknownActionError,
    UnknownSignerError,
    VerifiedRequest,
    WrongAudienceError,
    WrongRoleError,
    key_id,
    parse_principals,
    sign_request,
    verify_signed_request,
)

AUDIENCE = bytes(range(32))
ACTIONS = {"open_round": frozenset({Role.OPERATOR}), "approve_release": frozenset({Role.APPROVER})}
NOW = 1_780_000_000_000


def _signers() -> dict[str, Signer]:
    return {p.key_id: p for p in principals()}


def _verify(
    data: bytes, *, now: int = NOW, nonces: NonceCache | None = None, audience: bytes = AUDIENCE
) -> VerifiedRequest:
    return verify_signed_request(
        data,
        signers=_signers(),
        audience=audience,
        actions=ACTIONS,
        nonces=nonces if nonces is not None else NonceCache(),
        now=now,
    )


def _request(name: str = OPERATOR, action: str = "open_round", **kwargs: object) -> bytes:
    return sign_request(
        principal_identity(name).signing_key,
        action,
        {"round_config": {"x": 1}},
        audience=AUDIENCE,
        issued_at_ms=NOW,
        **kwargs,  # type: ignore[arg-type]
    )


# --- the verifier -----------------------------------------------------------------------------


def test_a_valid_request_verifies_once() -> None:
    nonces = NonceCache()
    data = _request()
    verified = _verify(data, nonces=nonces)
    assert verified.action == "open_round" and verified.signer.name == OPERATOR
    assert dict(verified.params) == {"round_config": {"x": 1}}
    with pytest.raises(ReplayedRequestError):
        _verify(data, nonces=nonces)
    # A new request (new nonce) by the same key is fine.
    _verify(_request(), nonces=nonces)


def test_every_refusal_has_its_name() -> None:
    document = json.loads(_request())
    signature = bytearray(base64.b64decode(document["signature"]))
    signature[0] ^= 1
    forged = canonical_json({**document, "signature": b64encode(bytes(signature))})
    with pytest.raises(ForgedRequestError):
        _verify(forged)
    # Another key signing under the operator's key id is a forgery too.
    impostor = json.loads(
        sign_request(Ed25519PrivateKey.generate(), "open_round", {}, audience=AUDIENCE, issued_at_ms=NOW)
    )
    impostor["body"]["key_id"] = principals()[0].key_id
    with pytest.raises(ForgedRequestError):
        _verify(canonical_json(impostor))
    # Changing any signed field breaks the signature.
    changed = json.loads(_request())
    changed["body"]["params"] = {"round_config": {"x": 2}}
    with pytest.raises(ForgedRequestError):
        _verify(canonical_json(changed))
    with pytest.raises(ExpiredRequestError):
        _verify(_request(), now=NOW + 120_000 + CLOCK_SKEW_MS + 1)
    with pytest.raises(NotYetValidRequestError):
        _verify(_request(), now=NOW - CLOCK_SKEW_MS - 1)
    with pytest.raises(WrongRoleError, match="approver"):
        _verify(_request(APPROVER))
    with pytest.raises(WrongRoleError, match="operator"):
        _verify(_request(OPERATOR, "approve_release"))
    with pytest.raises(UnknownActionError):
        _verify(_request(action="delete_log"))
    with pytest.raises(UnknownSignerError):
        _verify(
            sign_request(Ed25519PrivateKey.generate(), "open_round", {}, audience=AUDIENCE, issued_at_ms=NOW)
        )
    with pytest.raises(WrongAudienceError):
        _verify(_request(), audience=bytes(32))
    with pytest.raises(MalformedRequestError, match="canonical"):
        _verify(json.dumps(json.loads(_request()), indent=1).encode())
    with pytest.raises(MalformedRequestError, match="within"):
        _request(lifetime_ms=MAX_LIFETIME_MS + 1)
    with pytest.raises(MalformedRequestError, match="nonce"):
        _request(nonce=b"short")


def test_a_forged_request_does_not_use_up_the_real_nonce() -> None:
    nonces = NonceCache()
    data = _request()
    document = json.loads(data)
    document["signature"] = b64encode(bytes(64))
    with pytest.raises(ForgedRequestError):
        _verify(canonical_json(document), nonces=nonces)
    _verify(data, nonces=nonces)


def test_the_nonce_cache_is_bounded_and_forgets_expired_nonces() -> None:
    cache = NonceCache(capacity=2)
    cache.remember("k", b"a" * 16, expires_at_ms=NOW, now=NOW)
    cache.remember("k", b"b" * 16, expires_at_ms=NOW, now=NOW)
    with pytest.raises(RequestCacheFullError):
        cache.remember("k", b"c" * 16, expires_at_ms=NOW, now=NOW)
    later = NOW + CLOCK_SKEW_MS + 1
    cache.remember("k", b"c" * 16, expires_at_ms=later, now=later)  # the first two expired
    assert len(cache) == 1


def test_principals_have_one_role_per_key_and_names_are_checked() -> None:
    assert [p.role for p in parse_principals(principals_json())] == [Role.OPERATOR, Role.APPROVER]
    same_key = [principals_json()[0], {**principals_json()[0], "name": "other", "role": "approver"}]
    with pytest.raises(MalformedPrincipalsError, match="one role"):
        parse_principals(same_key)
    with pytest.raises(MalformedPrincipalsError, match="'role'"):
        parse_principals([{**principals_json()[0], "role": "site"}])
    with pytest.raises(MalformedPrincipalsError, match="exactly"):
        parse_principals([{"name": "x", "role": "operator"}])
    job = {"format": "fedseal-job/v1", "rounds": 0, "principals": principals_json()}
    assert JobConfig.from_json_obj(job).principals == principals()
    with pytest.raises(ConfigError, match="principals"):
        JobConfig.from_json_obj({**job, "principals": same_key})
    assert key_id(principals()[0].public_key) == principals()[0].key_id


# --- over the wire ------------------------------------------------------------------------------


def _log_entries(running: RunningAggregator) -> list[tuple[EntryKind, dict[str, object]]]:
    lines = running.log.path.read_bytes().splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        entry = decode_record(line, line_number=number).entry
        if entry is not None:
            out.append((entry.kind, dict(entry.fields)))
    return out


def test_a_signed_open_round_is_accepted_and_logged_with_its_signer(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    with operator_client(live_aggregator.endpoint, dev_policy) as operator:
        info = operator.open_round(round_config(1, min_clients=1, max_clients=1))
    assert info.config.round_id == 1 and info.state.value == "open"
    entries = _log_entries(live_aggregator)
    kinds = [k for k, _ in entries]
    action = entries[kinds.index(EntryKind.OPERATOR_ACTION)][1]
    assert (action["action"], action["signer"], action["role"]) == ("open_round", OPERATOR, "operator")
    assert action["key_id"] == principal_identity(OPERATOR).key_id
    assert kinds.index(EntryKind.OPERATOR_ACTION) < kinds.index(EntryKind.ROUND_OPENED)
    report = audit_log(live_aggregator.log.path, dev_policy)
    assert report.findings == ()
    assert [(a["action"], a["signer"]) for a in report.operator_actions] == [("open_round", OPERATOR)]


def test_close_round_ends_a_round_early_on_its_updates_or_fails_it_below_quorum(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    # Round 1: 3 expected, 2 needed, 2 submitted; the operator knows the third will not come.
    live_aggregator.rounds.open_round(round_config(1, min_clients=2, max_clients=3, deadline_seconds=600.0))
    for site in ("site-0", "site-1"):
        with site_client(live_aggregator.endpoint, dev_policy, site, timeout=20) as client:
            client.submit_update(make_adapter(1), round_id=1, num_examples=10)
    with operator_client(live_aggregator.endpoint, dev_policy) as operator:
        closed = operator.close_round(1, "node 3 is unavailable")
        assert (closed.info.state.value, closed.info.accepted, closed.failure) == ("closed", 2, None)
        assert operator.fetch_aggregate(1).round_id == 1  # published at once, no deadline waited
        again = operator.close_round(1, "repeated")  # an ended round is reported as it is
        assert again.info.state.value == "closed"
        # Round 2: one update, two needed: the round fails now, with the reason.
        operator.open_round(round_config(2, min_clients=2, max_clients=3, deadline_seconds=600.0))
        with site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=20) as client:
            client.submit_update(make_adapter(2), round_id=2, num_examples=10)
        failed = operator.close_round(2, "nodes 2 and 3 are unavailable")
        assert failed.info.state.value == "failed"
        assert failed.failure is not None and "1 accepted update(s), min_clients is 2" in failed.failure
        assert "nodes 2 and 3 are unavailable" in failed.failure
        with pytest.raises(OperatorActionError, match="round 9 does not exist"):
            operator.close_round(9, "no such round")
        with pytest.raises(OperatorActionError, match="params must be exactly"):
            operator.operate("close_round", {"round_id": 2})
    entries = _log_entries(live_aggregator)
    actions = [f["action"] for k, f in entries if k is EntryKind.OPERATOR_ACTION]
    assert actions.count("close_round") == 5  # every request is recorded, refused ones too
    report = audit_log(live_aggregator.log.path, dev_policy)
    assert report.findings == ()


def test_forged_replayed_expired_and_wrong_role_requests_are_refused_over_the_wire(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    params = {"round_config": round_config(1).to_json_obj()}
    with operator_client(live_aggregator.endpoint, dev_policy) as operator:
        operator.attest()
        connection: AggregatorConnection = operator._connection
        audience = connection.audience
        signed = principal_identity(OPERATOR).sign_request("open_round", params, audience)

        def refused(data: bytes) -> AccessDeniedReason:
            with pytest.raises(AccessDeniedError) as info:
                connection.operate(data)
            return info.value.reason

        document = json.loads(signed)
        document["body"]["params"]["round_config"]["min_clients"] = 1  # changed after signing
        assert refused(canonical_json(document)) is AccessDeniedReason.FORGED_REQUEST
        stale = sign_request(
            principal_identity(OPERATOR).signing_key,
            "open_round",
            params,
            audience=audience,
            issued_at_ms=1_000_000,
        )
        assert refused(stale) is AccessDeniedReason.EXPIRED_REQUEST
        early = sign_request(
            principal_identity(OPERATOR).signing_key,
            "open_round",
            params,
            audience=audience,
            issued_at_ms=2**52,
        )
        assert refused(early) is AccessDeniedReason.NOT_YET_VALID
        by_approver = principal_identity(APPROVER).sign_request("open_round", params, audience)
        assert refused(by_approver) is AccessDeniedReason.WRONG_ROLE
        by_site = site_identity("site-0").sign_request("open_round", params, audience)
        assert refused(by_site) is AccessDeniedReason.WRONG_ROLE
        by_nobody = sign_request(Ed25519PrivateKey.generate(), "open_round", params, audience=audience)
        assert refused(by_nobody) is AccessDeniedReason.UNKNOWN_SIGNER
        other_enclave = principal_identity(OPERATOR).sign_request("open_round", params, os.urandom(32))
        assert refused(other_enclave) is AccessDeniedReason.WRONG_AUDIENCE
        unknown = principal_identity(OPERATOR).sign_request("drop_log", {}, audience)
        assert refused(unknown) is AccessDeniedReason.UNKNOWN_ACTION
        # Only now the genuine one: accepted once, then refused as a replay.
        assert connection.operate(signed).action == "open_round"
        assert refused(signed) is AccessDeniedReason.REPLAYED_REQUEST
    kinds = [k for k, _ in _log_entries(live_aggregator)]
    assert kinds.count(EntryKind.OPERATOR_ACTION) == 1 and kinds.count(EntryKind.ROUND_OPENED) == 1


def test_update_job_opens_the_next_rounds_and_keeps_the_principals(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    template = {
        k: v
        for k, v in round_config(1, min_clients=1, max_clients=1).to_json_obj().items()
        if k != "round_id"
    }
    with operator_client(live_aggregator.endpoint, dev_policy) as operator:
        result = operator.update_job({"format": "fedseal-job/v1", "rounds": 2, "round_template": template})
        assert result.result["opened"]["round_config"]["round_id"] == 1
        with pytest.raises(OperatorActionError, match="principals"):
            operator.update_job(
                {
                    "format": "fedseal-job/v1",
                    "rounds": 3,
                    "round_template": template,
                    "principals": principals_json(),
                }
            )
    with site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=20) as site:
        site.submit_update(make_adapter(0), round_id=1, num_examples=1)
        live_aggregator.rounds.wait_closed(1, 10.0)  # the close follows the last receipt
        assert site.round_info(0).config.round_id == 2  # the job opened round 2 when 1 closed
    assert audit_log(live_aggregator.log.path, dev_policy).findings == ()


def test_a_site_or_an_unauthenticated_caller_cannot_operate(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    with (
        site_client(live_aggregator.endpoint, dev_policy, "site-0") as site,
        pytest.raises(AccessDeniedError) as info,
    ):
        site.open_round(round_config(1))
    assert info.value.reason is AccessDeniedReason.WRONG_ROLE
    with FedSealClient(live_aggregator.endpoint, dev_policy) as anonymous:
        anonymous.attest()
        with pytest.raises(AccessDeniedError) as info:
            anonymous._connection.operate(b"{}")
        assert info.value.reason is AccessDeniedReason.MALFORMED_REQUEST


# --- the auditor ----------------------------------------------------------------------------


def _tampered_log(tmp_path: Path, dev_policy: Policy, *, action_by: str, role: str) -> Path:
    """A log in which the enclave itself recorded an action no valid request authorized."""
    running = start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin="fedseal.test/operator",
        collectors=[simulated_collector()],
        access=access_config(),
    )
    try:
        audience = running.keys.bound.log_public_key
        body = json.loads(principal_identity(action_by).sign_request("open_round", {}, audience))
        running.log.append(
            OperatorAction(
                action="open_round",
                signer=action_by,
                role=role,
                key_id=body["body"]["key_id"],
                request=body["body"],
                signature=b64decode_canonical(body["signature"], what="signature"),
                request_digest=hashlib.sha256(SIGNED_REQUEST_DOMAIN + canonical_json(body["body"])).digest(),
            )
        )
    finally:
        running.stop(0.2)
    return running.log.path


def test_the_auditor_refuses_an_action_by_the_wrong_role(tmp_path: Path, dev_policy: Policy) -> None:
    path = _tampered_log(tmp_path, dev_policy, action_by=APPROVER, role="approver")
    kinds = [f.kind for f in audit_log(path, dev_policy).findings]
    assert kinds == [FindingKind.UNAUTHORIZED_ACTION]


def test_the_auditor_refuses_a_signer_it_was_not_told_about(tmp_path: Path, dev_policy: Policy) -> None:
    path = _tampered_log(tmp_path, dev_policy, action_by="mallory", role="operator")
    (finding,) = audit_log(path, dev_policy).findings
    assert finding.kind is FindingKind.UNAUTHORIZED_ACTION and "not a recorded principal" in finding.message

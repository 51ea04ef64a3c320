"""The auditor's view of identity and access: who was enrolled, who operated, who submitted.

From the log alone (no call to the operator), in log order:

* `principals_recorded` and `enrolment_recorded` entries say which operator/approver keys
  and which site keys are in force from there on. An enrolment's digest must be that of
  its content; a rotation must raise its version and follow (in the same enclave) a signed
  `rotate_enrolment` request that carries exactly it. Nobody signs the files a restarted enclave starts from,
  so a restart must keep the principals and must not lower the enrolment version;
* every `operator_action` must carry a valid signature by a recorded principal whose role
  may perform the action (fedseal.signed_request.ACTION_ROLES), made for the enclave that
  recorded it (the request's audience is that enclave's log key);
* every `update_accepted` must carry a valid signature, by a key enrolled for its client
  id at that point, over the header fields and ciphertext digest the entry records
  (fedseal/wire.py): the log proves which site submitted which ciphertext.

Problems come back as `AccessProblem`s; the auditor turns them into findings.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedseal.canonical import b64decode_field, canonical_json
from fedseal.enrolment import Enrolment
from fedseal.errors import FormatError
from fedseal.logformat import LogEntry
from fedseal.logschema import (
    EnrolmentCause,
    EnrolmentRecorded,
    OperatorAction,
    PrincipalsRecorded,
    UpdateAccepted,
)
from fedseal.signed_request import ACTION_ROLES, SIGNED_REQUEST_DOMAIN, Signer, parse_principals
from fedseal.wire import update_signature_message

__all__ = ["AccessAuditor", "AccessProblem", "AccessProblemKind"]


class AccessProblemKind(enum.Enum):
    BAD_UPDATE_SIGNATURE = "bad_update_signature"
    UNAUTHORIZED_ACTION = "unauthorized_action"
    INCONSISTENT_ACCESS = "inconsistent_access"


@dataclass(frozen=True)
class AccessProblem:
    kind: AccessProblemKind
    message: str


class AccessAuditor:
    """Follows the access entries of one log; `entry()` returns the problems each one shows."""

    def __init__(self) -> None:
        self.enrolment: Enrolment | None = None
        self.principals: dict[str, Signer] | None = None
        self.principals_digest = b""
        self.enclave_key: bytes | None = None
        self.restarted = False
        self.seen_start_enrolment = False
        # Enrolments carried by verified rotate_enrolment requests of this enclave, not yet in force.
        self.pending_rotations: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.enrolments: list[dict[str, Any]] = []

    def enclave_started(self, log_public_key: bytes) -> None:
        self.restarted = self.enclave_key is not None
        self.enclave_key = log_public_key
        self.seen_start_enrolment = False
        self.pending_rotations = []

    def entry(self, entry: LogEntry) -> list[AccessProblem]:
        body = entry.body
        try:
            if isinstance(body, PrincipalsRecorded):
                return self._principals(entry.index, body)
            if isinstance(body, EnrolmentRecorded):
                return self._enrolment(entry.index, body)
            if isinstance(body, OperatorAction):
                return self._action(entry.index, body)
            if isinstance(body, UpdateAccepted):
                return self._update(entry.index, body)
        except FormatError as exc:
            # The entry decoded, but a document it carries (an enrolment, a principal, a
            # signed request) does not parse under its own format.
            return [_inconsistent(f"entry {entry.index} ({entry.kind.value}) cannot be read: {exc}")]
        return []

    # ------------------------------------------------------------------ who may
    def _principals(self, index: int, body: PrincipalsRecorded) -> list[AccessProblem]:
        as_json = [p.to_fields() for p in body.principals]
        listed = parse_principals(as_json)
        digest = hashlib.sha256(canonical_json(as_json)).digest()
        problems = []
        if digest != body.principals_digest:
            problems.append(_inconsistent(f"entry {index}: principals_digest is not the digest of its list"))
        if self.principals is not None and digest != self.principals_digest:
            problems.append(
                _inconsistent(
                    f"entry {index}: the principals changed at an enclave restart; no signed "
                    "request can change them, so the operator's files did"
                )
            )
        self.principals = {p.key_id: p for p in listed}
        self.principals_digest = digest
        return problems

    def _enrolment(self, index: int, body: EnrolmentRecorded) -> list[AccessProblem]:
        enrolment = Enrolment.from_json_obj(dict(body.enrolment))
        problems = []
        if enrolment.digest() != body.enrolment_digest or enrolment.to_json_obj() != body.enrolment:
            problems.append(
                _inconsistent(f"entry {index}: the enrolment's digest is not that of its content")
            )
        if body.version != enrolment.version:
            problems.append(_inconsistent(f"entry {index}: 'version' is not the enrolment's version"))
        previous = self.enrolment
        if body.cause is EnrolmentCause.ROTATION:
            carried = dict(body.enrolment)
            if carried in self.pending_rotations:
                self.pending_rotations.remove(carried)
            else:
                problems.append(
                    _inconsistent(
                        f"entry {index}: an enrolment rotation that no signed rotate_enrolment "
                        "request of this enclave carries"
                    )
                )
            if previous is not None and enrolment.version <= previous.version:
                problems.append(_inconsistent(f"entry {index}: a rotation must raise the enrolment version"))
        else:
            if self.seen_start_enrolment:
                problems.append(_inconsistent(f"entry {index}: a second start enrolment for one enclave"))
            if self.restarted and previous is not None and enrolment.version < previous.version:
                problems.append(
                    _inconsistent(
                        f"entry {index}: a restarted enclave went back to enrolment version "
                        f"{enrolment.version} from {previous.version} (re-enrolling what a rotation removed?)"
                    )
                )
            self.seen_start_enrolment = True
        self.enrolment = enrolment
        self.enrolments.append(
            {
                "index": index,
                "version": enrolment.version,
                "cause": body.cause.value,
                "sites": len(enrolment.sites),
            }
        )
        return problems

    def _action(self, index: int, body: OperatorAction) -> list[AccessProblem]:
        request = body.request
        self.actions.append({"index": index, "action": body.action, "signer": body.signer, "role": body.role})
        signed = SIGNED_REQUEST_DOMAIN + canonical_json(dict(request))
        if hashlib.sha256(signed).digest() != body.request_digest:
            return [_unauthorized(index, "request_digest is not the digest of the recorded request")]
        if request.get("action") != body.action or request.get("key_id") != body.key_id:
            return [_unauthorized(index, "the recorded action or key id is not the signed request's")]
        signer = (self.principals or {}).get(body.key_id)
        if signer is None:
            return [_unauthorized(index, f"key {body.key_id[:16]} is not a recorded principal")]
        if signer.name != body.signer or signer.role.value != body.role:
            return [_unauthorized(index, "the signer or role recorded is not the principal's")]
        audience = b64decode_field(request.get("audience"), field="request.audience")
        if self.enclave_key is None or not hmac.compare_digest(audience, self.enclave_key):
            return [
                _unauthorized(index, "the request was made for another enclave than the one that recorded it")
            ]
        try:
            Ed25519PublicKey.from_public_bytes(signer.public_key).verify(body.signature, signed)
        except InvalidSignature:
            return [_unauthorized(index, f"the signature does not verify under {signer.name!r}'s key")]
        roles = ACTION_ROLES.get(body.action)
        if roles is not None and signer.role not in roles:
            return [_unauthorized(index, f"{signer.role.value} {signer.name!r} may not {body.action}")]
        params = request.get("params")
        if body.action == "rotate_enrolment" and isinstance(params, dict) and "enrolment" in params:
            self.pending_rotations.append(params["enrolment"])
        return []

    # ------------------------------------------------------------------ who submitted
    def _update(self, index: int, body: UpdateAccepted) -> list[AccessProblem]:
        client = body.client_id
        site = self.enrolment.site(client) if self.enrolment is not None else None
        if site is None:
            return [_bad_update(index, f"client {client[:128]!r} is not enrolled at this point of the log")]
        key = dict(zip(site.key_ids, site.keys, strict=True)).get(body.key_id)
        if key is None:
            return [
                _bad_update(index, f"key {body.key_id[:16]} is not enrolled for {client!r} at this point")
            ]
        message = update_signature_message(
            protocol_version=body.protocol_version,
            round_id=body.round_id,
            base_round_id=body.base_round_id,
            client_id=client,
            key_id=body.key_id,
            adapter_spec_digest=body.adapter_spec_digest,
            num_examples=body.num_examples,
            suite_wire_id=body.hpke_suite,
            idempotency_key_digest=body.idempotency_key_digest,
            challenge=body.challenge,
            chunk_size=body.chunk_size,
            ciphertext_size=body.ciphertext_size,
            ciphertext_digest=body.ciphertext_digest,
            data_card_digest=body.data_card_digest or b"",
            validation_digest=(
                hashlib.sha256(canonical_json(dict(body.validation))).digest()
                if body.validation is not None
                else b""
            ),
        )
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(body.signature, message)
        except InvalidSignature:
            return [
                _bad_update(index, f"the site signature does not verify under {client!r}'s key {body.key_id}")
            ]
        return []


def _inconsistent(message: str) -> AccessProblem:
    return AccessProblem(AccessProblemKind.INCONSISTENT_ACCESS, message)


def _unauthorized(index: int, message: str) -> AccessProblem:
    return AccessProblem(AccessProblemKind.UNAUTHORIZED_ACTION, f"entry {index} (operator_action): {message}")


def _bad_update(index: int, message: str) -> AccessProblem:
    return AccessProblem(
        AccessProblemKind.BAD_UPDATE_SIGNATURE, f"entry {index} (update_accepted): {message}"
    )

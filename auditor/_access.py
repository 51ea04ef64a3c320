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

from fedseal.canonical import b64decode_field, b64encode, canonical_json
from fedseal.enrolment import Enrolment
from fedseal.errors import FormatError
from fedseal.logformat import EntryKind, LogEntry
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
        self.principals_digest = ""
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
        try:
            if entry.kind is EntryKind.PRINCIPALS_RECORDED:
                return self._principals(entry)
            if entry.kind is EntryKind.ENROLMENT_RECORDED:
                return self._enrolment(entry)
            if entry.kind is EntryKind.OPERATOR_ACTION:
                return self._action(entry)
            if entry.kind is EntryKind.UPDATE_ACCEPTED:
                return self._update(entry)
        except (FormatError, KeyError, TypeError, ValueError) as exc:
            return [_inconsistent(f"entry {entry.index} ({entry.kind.value}) cannot be read: {exc}")]
        return []

    # ------------------------------------------------------------------ who may
    def _principals(self, entry: LogEntry) -> list[AccessProblem]:
        f = entry.fields
        listed = parse_principals(f["principals"])
        digest = b64encode(hashlib.sha256(canonical_json(f["principals"])).digest())
        problems = []
        if digest != f["principals_digest"]:
            problems.append(
                _inconsistent(f"entry {entry.index}: principals_digest is not the digest of its list")
            )
        if self.principals is not None and digest != self.principals_digest:
            problems.append(
                _inconsistent(
                    f"entry {entry.index}: the principals changed at an enclave restart; no signed "
                    "request can change them, so the operator's files did"
                )
            )
        self.principals = {p.key_id: p for p in listed}
        self.principals_digest = digest
        return problems

    def _enrolment(self, entry: LogEntry) -> list[AccessProblem]:
        f = entry.fields
        enrolment = Enrolment.from_json_obj(f["enrolment"])
        problems = []
        if (
            b64encode(enrolment.digest()) != f["enrolment_digest"]
            or enrolment.to_json_obj() != f["enrolment"]
        ):
            problems.append(
                _inconsistent(f"entry {entry.index}: the enrolment's digest is not that of its content")
            )
        if f["version"] != enrolment.version:
            problems.append(_inconsistent(f"entry {entry.index}: 'version' is not the enrolment's version"))
        previous = self.enrolment
        cause = f["cause"]
        if cause == "rotation":
            if f["enrolment"] in self.pending_rotations:
                self.pending_rotations.remove(f["enrolment"])
            else:
                problems.append(
                    _inconsistent(
                        f"entry {entry.index}: an enrolment rotation that no signed rotate_enrolment "
                        "request of this enclave carries"
                    )
                )
            if previous is not None and enrolment.version <= previous.version:
                problems.append(
                    _inconsistent(f"entry {entry.index}: a rotation must raise the enrolment version")
                )
        elif cause == "start":
            if self.seen_start_enrolment:
                problems.append(
                    _inconsistent(f"entry {entry.index}: a second start enrolment for one enclave")
                )
            if self.restarted and previous is not None and enrolment.version < previous.version:
                problems.append(
                    _inconsistent(
                        f"entry {entry.index}: a restarted enclave went back to enrolment version "
                        f"{enrolment.version} from {previous.version} (re-enrolling what a rotation removed?)"
                    )
                )
            self.seen_start_enrolment = True
        else:
            problems.append(
                _inconsistent(f"entry {entry.index}: unknown enrolment cause {str(cause)[:40]!r}")
            )
        self.enrolment = enrolment
        self.enrolments.append(
            {
                "index": entry.index,
                "version": enrolment.version,
                "cause": cause,
                "sites": len(enrolment.sites),
            }
        )
        return problems

    def _action(self, entry: LogEntry) -> list[AccessProblem]:
        f = entry.fields
        body = f["request"]
        self.actions.append(
            {"index": entry.index, "action": f["action"], "signer": f["signer"], "role": f["role"]}
        )
        signed = SIGNED_REQUEST_DOMAIN + canonical_json(body)
        if b64encode(hashlib.sha256(signed).digest()) != f["request_digest"]:
            return [_unauthorized(entry, "request_digest is not the digest of the recorded request")]
        if (
            not isinstance(body, dict)
            or body.get("action") != f["action"]
            or body.get("key_id") != f["key_id"]
        ):
            return [_unauthorized(entry, "the recorded action or key id is not the signed request's")]
        signer = (self.principals or {}).get(str(f["key_id"]))
        if signer is None:
            return [_unauthorized(entry, f"key {str(f['key_id'])[:16]} is not a recorded principal")]
        if signer.name != f["signer"] or signer.role.value != f["role"]:
            return [_unauthorized(entry, "the signer or role recorded is not the principal's")]
        audience = b64decode_field(body.get("audience"), field="request.audience")
        if self.enclave_key is None or not hmac.compare_digest(audience, self.enclave_key):
            return [
                _unauthorized(entry, "the request was made for another enclave than the one that recorded it")
            ]
        try:
            signature = b64decode_field(f["signature"], field="signature", size=64)
            Ed25519PublicKey.from_public_bytes(signer.public_key).verify(signature, signed)
        except InvalidSignature:
            return [_unauthorized(entry, f"the signature does not verify under {signer.name!r}'s key")]
        roles = ACTION_ROLES.get(str(f["action"]))
        if roles is not None and signer.role not in roles:
            return [_unauthorized(entry, f"{signer.role.value} {signer.name!r} may not {f['action']}")]
        params = body.get("params")
        if f["action"] == "rotate_enrolment" and isinstance(params, dict) and "enrolment" in params:
            self.pending_rotations.append(params["enrolment"])
        return []

    # ------------------------------------------------------------------ who submitted
    def _update(self, entry: LogEntry) -> list[AccessProblem]:
        f = entry.fields
        client = str(f["client_id"])
        site = self.enrolment.site(client) if self.enrolment is not None else None
        if site is None:
            return [_bad_update(entry, f"client {client[:128]!r} is not enrolled at this point of the log")]
        key = dict(zip(site.key_ids, site.keys, strict=True)).get(str(f["key_id"]))
        if key is None:
            return [
                _bad_update(
                    entry, f"key {str(f['key_id'])[:16]} is not enrolled for {client!r} at this point"
                )
            ]
        message = update_signature_message(
            protocol_version=int(f["protocol_version"]),
            round_id=int(f["round_id"]),
            base_round_id=int(f["base_round_id"]),
            client_id=client,
            key_id=str(f["key_id"]),
            adapter_spec_digest=b64decode_field(f["adapter_spec_digest"], field="adapter_spec_digest"),
            num_examples=int(f["num_examples"]),
            suite_wire_id=int(f["hpke_suite"]),
            idempotency_key_digest=b64decode_field(
                f["idempotency_key_digest"], field="idempotency_key_digest"
            ),
            challenge=b64decode_field(f["challenge"], field="challenge"),
            chunk_size=int(f["chunk_size"]),
            ciphertext_size=int(f["ciphertext_size"]),
            ciphertext_digest=b64decode_field(f["ciphertext_digest"], field="ciphertext_digest"),
        )
        try:
            signature = b64decode_field(f["signature"], field="signature", size=64)
            Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
        except InvalidSignature:
            return [
                _bad_update(entry, f"the site signature does not verify under {client!r}'s key {f['key_id']}")
            ]
        return []


def _inconsistent(message: str) -> AccessProblem:
    return AccessProblem(AccessProblemKind.INCONSISTENT_ACCESS, message)


def _unauthorized(entry: LogEntry, message: str) -> AccessProblem:
    return AccessProblem(
        AccessProblemKind.UNAUTHORIZED_ACTION, f"entry {entry.index} (operator_action): {message}"
    )


def _bad_update(entry: LogEntry, message: str) -> AccessProblem:
    return AccessProblem(
        AccessProblemKind.BAD_UPDATE_SIGNATURE, f"entry {entry.index} (update_accepted): {message}"
    )

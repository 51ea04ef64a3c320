"""The client: attest the aggregator, seal an update to the round's key, submit, verify the receipt.

Fail closed: nothing leaves this process before the aggregator's evidence has verified
under the caller's policy and is bound to a challenge this client just made, and (attested
TLS, the default) before the TLS certificate the channel ends at is the one that evidence
names. The update is sealed to the round's own HPKE key, and only once that key's
signature verifies under the log key the evidence vouches for (fedseal/roundkey.py;
ForeignRoundKeyError otherwise, and nothing is sent). It is signed by this
site's enrolled key (the header and the ciphertext digest), and the receipt must be signed
by the log key the same evidence vouches for, and cosigned by the witnesses the policy
requires (`witnesses` section). With a receipt store, every verified receipt is kept on disk.

Every update names the global adapter it was trained from (`base_round_id`: the round whose
aggregate it started from, 0 for the job's initial adapter; `Aggregate.round_id` says which
round a fetched global is). The client checks it against what the round accepts before it
seals (a synchronous round: only the current global; async: at most `max_staleness`
releases old) and sends nothing otherwise; the aggregator decides again (aggregator/_rounds.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from attestation import CollateralFetcher, Policy, VerifiedAttestation, collateral_fetcher, verify_bundle
from client_sdk._adapters import adapter_tensors
from client_sdk._errors import (
    AdapterMismatchError,
    AggregatorUnavailableError,
    ClientArgumentError,
    ClientError,
    DpRequirementError,
)
from client_sdk._identity import ClientIdentity
from client_sdk._receipts import ReceiptStore
from client_sdk._transport import (
    AggregatorConnection,
    ApprovalResult,
    ChannelSecurity,
    OperatorResult,
    RoundInfo,
)
from client_sdk._validate import check_bytes, check_int, check_seconds, check_text
from fedseal.approval import Approval
from fedseal.binding import CHALLENGE_SIZE
from fedseal.datacard import DataCard, load_data_card
from fedseal.enrolment import Enrolment
from fedseal.envelope import DEFAULT_SUITE, MIN_CHUNK_SIZE, HpkeSuite, SealContext, seal
from fedseal.errors import ReceiptError
from fedseal.logschema import UpdateAccepted
from fedseal.manifest import AggregateManifest, SignedManifest, verify_manifest
from fedseal.receipt import ExpectedUpdate, Receipt, verify_receipt
from fedseal.roundconfig import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, RoundConfig
from fedseal.roundkey import MissingRoundKeyError, RoundKeyError, VerifiedRoundKey
from fedseal.sitemetrics import METRICS_METADATA_KEY, encode_site_metrics
from fedseal.spec import AdapterSpec, WireDtype, pair_lora_names
from fedseal.validation import ValidationSummary
from fedseal.wire import PROTOCOL_VERSION, RoundState, StaleBaseError, UpdateHeader, update_staleness

__all__ = [
    "Aggregate",
    "FedSealClient",
    "RoundOutcome",
    "SealedSubmission",
    "fetch_aggregate",
    "submit_update",
]

_TORCH_DTYPE = {
    WireDtype.FLOAT32: torch.float32,
    WireDtype.BFLOAT16: torch.bfloat16,
    WireDtype.FLOAT16: torch.float16,
}


@dataclass(frozen=True)
class SealedSubmission:
    """An update sealed to one attested enclave, ready to send (and to resend, as a retry)."""

    header: UpdateHeader
    chunks: tuple[bytes, ...]
    expected: ExpectedUpdate
    attestation: VerifiedAttestation


@dataclass(frozen=True)
class RoundOutcome:
    """A round as `close_round` left it, and why it failed (None: it did not)."""

    info: RoundInfo
    failure: str | None


@dataclass(frozen=True)
class Aggregate:
    """A round's aggregate whose manifest verified under the attested log key."""

    manifest: AggregateManifest
    data: bytes  # safetensors bytes, exactly those the manifest's digest names

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(safetensors.torch.load(self.data))

    @property
    def round_id(self) -> int:
        """The round this aggregate is the result of: the `base_round_id` of updates trained
        from it."""
        return self.manifest.round_id

    @property
    def metrics(self) -> Mapping[str, float]:
        """The sites' metrics of this round as the enclave aggregated them (example-weighted
        means, fedseal/sitemetrics.py), signed with the manifest; empty when no site sent any."""
        return self.manifest.client_metrics or {}


class FedSealClient:
    """A session with one aggregator, under one appraisal policy.

    The client attests the aggregator with a new challenge for each round and on each new
    channel, and reuses that verified attestation for the round's other calls on the same
    channel (pinned to the same enclave): a restarted enclave has new keys and a new TLS
    certificate, so a client reconnects, attests again and never seals to a stale key.
    `identity` is this site's enrolled identity (or a principal's, for operator requests):
    without one the client can attest but not submit, read rounds or fetch aggregates.
    `security` and `root_certificates` choose the channel (ChannelSecurity; the default
    pins the attested certificate). `receipts` (a ReceiptStore, or a directory for one)
    keeps every verified receipt. Collateral (RIMs, OCSP answers, AMD/Intel certificates)
    comes from the bundle only, unless the policy's `collateral.source` is "online" or
    `online=True` overrides it; then what is missing is fetched through `fetcher` (default:
    HTTPS to the vendors' services).
    """

    def __init__(
        self,
        endpoint: str,
        policy: Policy,
        *,
        identity: ClientIdentity | None = None,
        security: ChannelSecurity = ChannelSecurity.ATTESTED_TLS,
        root_certificates: bytes | None = None,
        timeout: float = 60.0,
        receipts: ReceiptStore | Path | None = None,
        online: bool | None = None,
        fetcher: CollateralFetcher | None = None,
    ) -> None:
        self._endpoint = check_text(endpoint, "endpoint")
        if not isinstance(policy, Policy):
            raise ClientArgumentError(f"policy must be an attestation.Policy, got {type(policy).__name__}")
        self._collateral = collateral_fetcher(policy.collateral, online=online, fetcher=fetcher)
        if identity is not None and not isinstance(identity, ClientIdentity):
            raise ClientArgumentError(f"identity must be a ClientIdentity, got {type(identity).__name__}")
        if not isinstance(security, ChannelSecurity):
            raise ClientArgumentError(f"security must be a ChannelSecurity, got {type(security).__name__}")
        if root_certificates is not None and not isinstance(root_certificates, bytes):
            raise ClientArgumentError("root_certificates must be PEM bytes")
        if receipts is not None and not isinstance(receipts, ReceiptStore | Path):
            raise ClientArgumentError(
                f"receipts must be a ReceiptStore or a Path, got {type(receipts).__name__}"
            )
        timeout = check_seconds(timeout, "timeout", allow_zero=False)
        self._identity = identity
        self._security = security
        self._root_certificates = root_certificates
        self._policy = policy
        self._timeout = timeout
        self._receipts = ReceiptStore(receipts) if isinstance(receipts, Path) else receipts
        self._connection = self._connect()
        # The last verified attestation: (the connection it is bound to, its round, it).
        self._verified: tuple[AggregatorConnection, int, VerifiedAttestation] | None = None

    def _connect(self) -> AggregatorConnection:
        return AggregatorConnection(
            self._endpoint,
            identity=self._identity,
            security=self._security,
            root_certificates=self._root_certificates,
            timeout=self._timeout,
        )

    def reconnect(self) -> None:
        """A new channel (a restarted enclave serves a new TLS certificate).

        If the aggregator cannot be reached, raises AggregatorUnavailableError and the
        client stays closed: every later call raises AggregatorUnavailableError too, until
        a reconnect() succeeds."""
        self._connection.close()
        self._connection = self._connect()

    @property
    def identity(self) -> ClientIdentity | None:
        return self._identity

    def __enter__(self) -> FedSealClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()

    def attest(self) -> VerifiedAttestation:
        """Fetch evidence for a fresh challenge, verify it, and bind the channel to it.

        Raises AttestationError; UnattestedChannelError when the channel's TLS certificate
        is not the attested one (then nothing else is ever sent on this channel).
        """
        challenge = os.urandom(CHALLENGE_SIZE)
        bundle = self._connection.get_attestation(challenge)
        attested = verify_bundle(bundle, self._policy, challenge, fetcher=self._collateral)
        self._connection.bind(attested)
        return attested

    def _attested_for(self, round_id: int) -> VerifiedAttestation:
        """A verified attestation for `round_id` on this connection: reused within a round
        (same channel, so the same pinned enclave), fresh with a new challenge for each new
        round and after every reconnect (a restarted enclave has new keys)."""
        verified = self._verified
        if verified is not None and verified[0] is self._connection and verified[1] == round_id:
            return verified[2]
        attested = self.attest()
        self._verified = (self._connection, round_id, attested)
        return attested

    def round_info(self, round_id: int = 0) -> RoundInfo:
        check_int(round_id, "round_id", minimum=0)
        self._attested_for(round_id)
        return self._connection.get_round(round_id)

    def seal_update(
        self,
        adapter: Mapping[str, Any],
        *,
        round_id: int,
        client_id: str | None = None,
        num_examples: int,
        idempotency_key: bytes | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        suite: HpkeSuite = DEFAULT_SUITE,
        base_round_id: int | None = None,
        data_card: DataCard | Path | str | None = None,
        publish_data_card: bool = True,
        validation: ValidationSummary | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> SealedSubmission:
        """Attest the aggregator (once per round and channel) and seal `adapter` to its
        attested key; nothing is sent.

        Tensors are converted to the wire dtype the round's adapter spec names. Raises
        AdapterMismatchError if names or shapes differ from the spec, AttestationError if
        the evidence does not satisfy the policy. `client_id` defaults to (and must be)
        this client's identity. In a lora-exact round with `client_ranks`, `adapter` may
        be at any LoRA rank the round allows (`RoundConfig.allowed_lora_ranks`): the update
        is sealed for that rank's spec; another rank is an AdapterMismatchError naming both.

        `base_round_id` is the round whose aggregate `adapter` was trained from (0: the job's
        initial adapter; `Aggregate.round_id` of what you fetched). None means the current
        global as the aggregator reports it, which is right when every round trains from
        the latest aggregate. Raises StaleBaseError (nothing sealed) if the round would
        refuse it: any but the current global in a synchronous round, more than
        `max_staleness` releases old in an async one, or a round that released nothing.

        Data governance (docs/data-card.md): `data_card` (a DataCard, or the path of its JSON
        file) puts its digest in the signed header and the seal context, and the card itself
        when `publish_data_card`; `validation` (client_sdk.validation) sends the summary of
        the local data validation, signed. `metrics` (name -> number: train loss, eval loss,
        example counts...) travel sealed inside the update (fedseal/sitemetrics.py); only
        the enclave reads them, and it logs their example-weighted means per round.
        """
        _check_submission_args(round_id, num_examples, idempotency_key, chunk_size, suite, base_round_id)
        metadata = {METRICS_METADATA_KEY: encode_site_metrics(metrics)} if metrics is not None else None
        card = load_data_card(data_card) if isinstance(data_card, Path | str) else data_card
        attested = self._attested_for(round_id)
        round_info = self._connection.get_round(round_id)
        _check_dp_requirement(self._policy, round_info.config)
        base = _checked_base(round_info, base_round_id)
        tensors = adapter_tensors(adapter)
        spec = _update_spec(tensors, round_info.config)
        payload = _serialize(tensors, spec, metadata)
        return self._seal(
            payload,
            attested,
            _verified_round_key(attested, round_info, round_id),
            round_id=round_id,
            base_round_id=base,
            client_id=client_id,
            num_examples=num_examples,
            adapter_spec_digest=spec.digest(),
            idempotency_key=idempotency_key,
            chunk_size=min(chunk_size, round_info.config.max_chunk_size),
            suite=suite,
            data_card=card,
            publish_data_card=publish_data_card,
            validation=validation,
        )

    def seal_payload(
        self,
        payload: bytes,
        *,
        round_id: int,
        client_id: str | None = None,
        num_examples: int,
        adapter_spec_digest: bytes,
        idempotency_key: bytes | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        suite: HpkeSuite = DEFAULT_SUITE,
        base_round_id: int | None = None,
        data_card: DataCard | Path | str | None = None,
        publish_data_card: bool = True,
        validation: ValidationSummary | None = None,
    ) -> SealedSubmission:
        """Seal already-serialized safetensors bytes (lower level than `seal_update`; the
        payload is not checked against the round's spec, `base_round_id` is, as there;
        site metrics, if any, are the payload's own safetensors metadata)."""
        _check_submission_args(round_id, num_examples, idempotency_key, chunk_size, suite, base_round_id)
        if not isinstance(payload, bytes | bytearray):
            raise ClientArgumentError(f"payload must be bytes, got {type(payload).__name__}")
        check_bytes(adapter_spec_digest, "adapter_spec_digest", min_size=32, max_size=32)
        card = load_data_card(data_card) if isinstance(data_card, Path | str) else data_card
        attested = self._attested_for(round_id)
        round_info = self._connection.get_round(round_id)
        base = _checked_base(round_info, base_round_id)
        return self._seal(
            payload,
            attested,
            _verified_round_key(attested, round_info, round_id),
            round_id=round_id,
            base_round_id=base,
            client_id=client_id,
            num_examples=num_examples,
            adapter_spec_digest=adapter_spec_digest,
            idempotency_key=idempotency_key,
            chunk_size=chunk_size,
            suite=suite,
            data_card=card,
            publish_data_card=publish_data_card,
            validation=validation,
        )

    def _seal(
        self,
        payload: bytes,
        attested: VerifiedAttestation,
        round_key: VerifiedRoundKey,
        *,
        round_id: int,
        base_round_id: int,
        client_id: str | None,
        num_examples: int,
        adapter_spec_digest: bytes,
        idempotency_key: bytes | None,
        chunk_size: int,
        suite: HpkeSuite,
        data_card: DataCard | None = None,
        publish_data_card: bool = True,
        validation: ValidationSummary | None = None,
    ) -> SealedSubmission:
        identity = self._identity
        if identity is None:
            raise ClientError("submitting an update needs this site's enrolled identity (identity=...)")
        if client_id is None:
            client_id = identity.name
        elif client_id != identity.name:
            raise ClientError(
                f"client_id {client_id!r} is not this client's identity {identity.name!r}: the aggregator "
                "accepts updates only under the caller's enrolled id"
            )
        key = idempotency_key if idempotency_key is not None else os.urandom(32)
        card_digest = data_card.digest() if data_card is not None else b""
        summary = validation.canonical_bytes() if validation is not None else b""
        context = SealContext(
            protocol_version=PROTOCOL_VERSION,
            round_id=round_id,
            client_id=client_id,
            adapter_spec_digest=adapter_spec_digest,
            num_examples=num_examples,
            binding=attested.binding,
            round_public_key=round_key.hpke_public_key,
            idempotency_key=key,
            chunk_size=chunk_size,
            suite=suite,
            base_round_id=base_round_id,
            data_card_digest=card_digest,
            validation_digest=validation.digest() if validation is not None else b"",
        )
        # To the round's key, whose signature by the attested log key was just checked.
        sealed = seal(payload, round_key.public_key_obj(), context)
        header = UpdateHeader(
            protocol_version=PROTOCOL_VERSION,
            round_id=round_id,
            client_id=client_id,
            adapter_spec_digest=adapter_spec_digest,
            num_examples=num_examples,
            suite=suite,
            wrapped_key=sealed.wrapped_key,
            idempotency_key=key,
            challenge=attested.challenge,
            chunk_size=chunk_size,
            ciphertext_size=sealed.ciphertext_size,
            key_id=identity.key_id,
            ciphertext_digest=sealed.ciphertext_digest,
            base_round_id=base_round_id,
            data_card_digest=card_digest,
            data_card=data_card.canonical_bytes() if data_card is not None and publish_data_card else b"",
            validation_summary=summary,
        ).sign(identity.signing_key)  # sealed first: the signature covers the ciphertext digest
        # The aggregator rebuilds the context from the header: both must agree exactly.
        assert header.seal_context(attested.binding, round_key.hpke_public_key) == context
        expected = ExpectedUpdate(
            round_id=round_id,
            client_id=client_id,
            ciphertext_digest=sealed.ciphertext_digest,
            ciphertext_size=sealed.ciphertext_size,
            num_examples=num_examples,
            adapter_spec_digest=adapter_spec_digest,
            idempotency_key=key,
        )
        return SealedSubmission(header, sealed.chunks, expected, attested)

    def send(self, submission: SealedSubmission) -> Receipt:
        """Upload a sealed submission, verify its receipt against the attested log key and the
        policy's witnesses, and keep it in the receipt store (if any)."""
        text = self._connection.submit(submission.header, submission.chunks, timeout=self._timeout)
        witnesses = self._policy.witnesses
        receipt = verify_receipt(
            text,
            submission.attestation.log_public_key,
            submission.expected,
            cosigners=witnesses.verifiers() if witnesses is not None else (),
            min_cosignatures=witnesses.min if witnesses is not None else 0,
        )
        body = receipt.entry.body
        recorded = body.base_round_id if isinstance(body, UpdateAccepted) else None
        if recorded != submission.header.base_round_id:
            raise ReceiptError(
                f"receipt entry records base round {recorded!r}, but this client sent "
                f"{submission.header.base_round_id}"
            )
        if self._receipts is not None:
            self._receipts.save(receipt)
        return receipt

    def submit_update(
        self,
        adapter: Mapping[str, Any],
        *,
        round_id: int,
        client_id: str | None = None,
        num_examples: int,
        idempotency_key: bytes | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        suite: HpkeSuite = DEFAULT_SUITE,
        retries: int = 2,
        base_round_id: int | None = None,
        data_card: DataCard | Path | str | None = None,
        publish_data_card: bool = True,
        validation: ValidationSummary | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Receipt:
        """Seal `adapter` (name → torch tensor or numpy array) for `round_id`, submit it, verify the receipt.

        `base_round_id`: the round whose aggregate `adapter` was trained from (see
        `seal_update`; None: the current global). On a transport failure the upload is retried
        (re-attesting, since the enclave may have restarted) with the same idempotency key,
        so it counts at most once. `data_card`, `validation` and `metrics`: see `seal_update`.
        """
        _check_submission_args(round_id, num_examples, idempotency_key, chunk_size, suite, base_round_id)
        retries = check_int(retries, "retries", minimum=0, maximum=100)
        key = idempotency_key if idempotency_key is not None else os.urandom(32)
        attempt = 0
        while True:
            try:
                if attempt > 0:
                    self.reconnect()  # a restarted enclave serves a new certificate
                submission = self.seal_update(
                    adapter,
                    round_id=round_id,
                    client_id=client_id,
                    num_examples=num_examples,
                    idempotency_key=key,
                    chunk_size=chunk_size,
                    suite=suite,
                    base_round_id=base_round_id,
                    data_card=data_card,
                    publish_data_card=publish_data_card,
                    validation=validation,
                    metrics=metrics,
                )
                return self.send(submission)
            except AggregatorUnavailableError:
                if attempt >= retries:
                    raise
            time.sleep(min(2.0, 0.25 * 2**attempt))
            attempt += 1

    def fetch_aggregate(self, round_id: int, *, wait_seconds: float = 0.0) -> Aggregate:
        """The round's aggregate, verified against the attested log key (waits for the round to close)."""
        check_int(round_id, "round_id", minimum=1)
        wait_seconds = check_seconds(wait_seconds, "wait_seconds", allow_zero=True)
        attested = self._attested_for(round_id)
        manifest_bytes, data = self._connection.get_aggregate(round_id, wait_seconds=wait_seconds)
        signed = SignedManifest.from_bytes(manifest_bytes)
        manifest = verify_manifest(signed, attested.log_public_key_obj(), data, round_id=round_id)
        return Aggregate(manifest, data)

    def submit_approval(self, approval: Approval) -> ApprovalResult:
        """Attest, then hand an approver's signed decision (fedseal.approval.sign_approval) to
        the enclave; raises the named fedseal.approval error the aggregator refused it with."""
        self.attest()
        return self._connection.submit_approval(approval.round_id, approval.to_bytes())

    # ------------------------------------------------------------------ operator surface
    def operate(self, action: str, params: Mapping[str, Any]) -> OperatorResult:
        """Attest, then send `action` with `params` signed by this client's identity (a
        principal of the job config); AccessDeniedError if the aggregator refuses it."""
        if self._identity is None:
            raise ClientError("an operator request needs a principal's identity (identity=...)")
        self.attest()
        request = self._identity.sign_request(action, dict(params), self._connection.audience)
        return self._connection.operate(request)

    def open_round(self, config: RoundConfig) -> RoundInfo:
        """Open a round (role operator)."""
        result = self.operate("open_round", {"round_config": config.to_json_obj()}).result
        return RoundInfo(
            RoundConfig.from_json_obj(result["round_config"]),
            RoundState(result["state"]),
            int(result["accepted"]),
        )

    def close_round(self, round_id: int, reason: str) -> RoundOutcome:
        """End open round `round_id` now (role operator): it closes on the updates it has if
        they reach its `min_clients`, else it fails, recording `reason`. A round that already
        ended is reported as it is."""
        result = self.operate("close_round", {"round_id": round_id, "reason": reason}).result
        failure = result.get("failure")
        return RoundOutcome(
            RoundInfo(
                RoundConfig.from_json_obj(result["round_config"]),
                RoundState(result["state"]),
                int(result["accepted"]),
            ),
            failure if isinstance(failure, str) else None,
        )

    def update_job(self, job: Mapping[str, Any]) -> OperatorResult:
        """Replace the job's rounds and round template for rounds not opened yet (role operator)."""
        return self.operate("update_job", {"job": dict(job)})

    def rotate_enrolment(self, enrolment: Enrolment) -> OperatorResult:
        """Replace the enrolment with a higher version (role operator); removed sites and keys
        are refused from their next call on."""
        return self.operate("rotate_enrolment", {"enrolment": enrolment.to_json_obj()})


def _check_submission_args(
    round_id: object,
    num_examples: object,
    idempotency_key: object,
    chunk_size: object,
    suite: object,
    base_round_id: object,
) -> None:
    check_int(round_id, "round_id", minimum=1)
    check_int(num_examples, "num_examples", minimum=1)
    if idempotency_key is not None:
        check_bytes(idempotency_key, "idempotency_key", min_size=16, max_size=64)
    check_int(chunk_size, "chunk_size", minimum=MIN_CHUNK_SIZE, maximum=MAX_CHUNK_SIZE)
    if not isinstance(suite, HpkeSuite):
        raise ClientArgumentError(f"suite must be an HpkeSuite, got {type(suite).__name__}")
    if base_round_id is not None:
        check_int(base_round_id, "base_round_id", minimum=0)


def _update_spec(adapter: Mapping[str, torch.Tensor], config: RoundConfig) -> AdapterSpec:
    """The spec `adapter` is to be sent as: the round's, or that of its LoRA rank if the round
    allows clients at other ranks (lora-exact `client_ranks`). Names and other shapes are
    then checked against it by `_serialize`, which says what differs."""
    spec = config.adapter_spec
    if len(config.update_specs) == 1 or set(adapter) != set(spec.by_name()):
        return spec
    shapes = {name: tuple(tensor.shape) for name, tensor in adapter.items()}
    for candidate in config.update_specs.values():
        if candidate.shapes() == shapes:
            return candidate
    # No exact match: take the spec of the adapter's rank, so _serialize names what differs.
    pairs, _ = pair_lora_names(spec.by_name())
    ranks = sorted({int(adapter[p.a].shape[0]) for p in pairs if adapter[p.a].dim() == 2})
    chosen = config.spec_for_lora_rank(ranks[0]) if len(ranks) == 1 else None
    if chosen is None:
        raise AdapterMismatchError(
            f"adapter has LoRA rank(s) {ranks}; round {config.round_id} accepts LoRA ranks "
            f"{list(config.allowed_lora_ranks)} (one rank for every module); nothing was sent"
        )
    return chosen


def _serialize(
    adapter: Mapping[str, Any], spec: AdapterSpec, metadata: dict[str, str] | None = None
) -> bytes:
    # A PEFT model, a state dict, an adapter folder or a .safetensors file: see _adapters.py.
    adapter = adapter_tensors(adapter)
    expected = spec.by_name()
    missing = sorted(set(expected) - set(adapter))
    extra = sorted(set(adapter) - set(expected))
    if missing or extra:
        raise AdapterMismatchError(
            f"adapter does not match the round's adapter spec: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, tspec in expected.items():
        value = adapter[name]
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
        if tuple(tensor.shape) != tspec.shape:
            raise AdapterMismatchError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, the round's spec says {tspec.shape}"
            )
        tensors[name] = tensor.detach().to(device="cpu", dtype=_TORCH_DTYPE[tspec.dtype]).contiguous()
    return bytes(safetensors.torch.save(tensors, metadata=metadata))


def submit_update(
    endpoint: str,
    adapter: Mapping[str, Any],
    *,
    policy: Policy,
    identity: ClientIdentity,
    round_id: int,
    num_examples: int,
    timeout: float = 60.0,
    receipts: ReceiptStore | Path | None = None,
    **options: Any,
) -> Receipt:
    """Attest the aggregator at `endpoint` under `policy`, then seal, sign with `identity`,
    upload and get a verified receipt.

    Raises AttestationError (and sends nothing) if the evidence does not satisfy the policy,
    UpdateRejectedError if the aggregator refuses the update, AccessDeniedError if it refuses
    the caller, ReceiptError if its receipt does not prove the update was logged as sent.
    `receipts` keeps the verified receipt.
    """
    with FedSealClient(endpoint, policy, identity=identity, timeout=timeout, receipts=receipts) as client:
        return client.submit_update(adapter, round_id=round_id, num_examples=num_examples, **options)


def fetch_aggregate(
    endpoint: str,
    round_id: int,
    *,
    policy: Policy,
    identity: ClientIdentity,
    wait_seconds: float = 0.0,
    timeout: float = 60.0,
) -> Aggregate:
    with FedSealClient(endpoint, policy, identity=identity, timeout=timeout) as client:
        return client.fetch_aggregate(round_id, wait_seconds=wait_seconds)


def _checked_base(round_info: RoundInfo, base_round_id: int | None) -> int:
    """`base_round_id` (None: the current global), if the round would accept it; else
    StaleBaseError before anything is sealed or sent. A round that is not open refuses
    every update anyway (the aggregator says why): its base is not checked here."""
    config = round_info.config
    released = round_info.released_round_ids
    if round_info.state is not RoundState.OPEN:
        released = tuple(r for r in released if r < config.round_id)
    base = (released[-1] if released else 0) if base_round_id is None else base_round_id
    if isinstance(base, bool) or not isinstance(base, int) or base < 0:
        raise ClientError(f"base_round_id must be a non-negative integer, got {base!r}")
    if round_info.state is not RoundState.OPEN:
        return base
    params = config.params.staleness
    try:
        update_staleness(
            base,
            config.round_id,
            released,
            params.max_staleness if params is not None else None,
            complete=False,
        )
    except StaleBaseError as exc:
        raise StaleBaseError(exc.reason, f"{exc.detail}; nothing was sent") from None
    return base


def _verified_round_key(
    attested: VerifiedAttestation, round_info: RoundInfo, round_id: int
) -> VerifiedRoundKey:
    """The round's key, once signed by the log key that `attested` binds, for this round and
    the config served with it; else the named RoundKeyError, and nothing is sealed or sent."""
    signed = round_info.round_key
    if signed is None:
        raise MissingRoundKeyError(
            f"the aggregator served no signed key for round {round_id}; nothing was sent"
        )
    try:
        return signed.verify(
            attested.log_public_key, round_id=round_id, config_digest=round_info.config.digest()
        )
    except RoundKeyError as exc:
        raise type(exc)(f"{exc}; nothing was sent") from None


def _check_dp_requirement(policy: Policy, config: RoundConfig) -> None:
    """Fail closed before sealing when the policy's `require_dp` is not met by the round."""
    need = policy.require_dp
    if need is None:
        return
    dp = config.dp
    if dp is None:
        raise DpRequirementError(
            f"round {config.round_id} has no central DP, and policy {policy.name!r} requires "
            f"epsilon <= {need.max_epsilon:g}, delta <= {need.max_delta:g}; nothing was sent"
        )
    if dp.epsilon > need.max_epsilon or dp.delta > need.max_delta:
        raise DpRequirementError(
            f"round {config.round_id} promises DP epsilon={dp.epsilon:g}, delta={dp.delta:g}; policy "
            f"{policy.name!r} requires epsilon <= {need.max_epsilon:g}, delta <= {need.max_delta:g}; "
            "nothing was sent"
        )

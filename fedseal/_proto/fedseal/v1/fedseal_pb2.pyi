from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttestationRequest(_message.Message):
    __slots__ = ("challenge",)
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    challenge: bytes
    def __init__(self, challenge: _Optional[bytes] = ...) -> None: ...

class AttestationResponse(_message.Message):
    __slots__ = ("evidence_bundle",)
    EVIDENCE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    evidence_bundle: bytes
    def __init__(self, evidence_bundle: _Optional[bytes] = ...) -> None: ...

class GetRoundRequest(_message.Message):
    __slots__ = ("round_id",)
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    def __init__(self, round_id: _Optional[int] = ...) -> None: ...

class RoundInfo(_message.Message):
    __slots__ = ("round_config", "state", "accepted", "released_round_ids", "round_public_key", "round_key_signature", "log_origin")
    ROUND_CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_ROUND_IDS_FIELD_NUMBER: _ClassVar[int]
    ROUND_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ROUND_KEY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    LOG_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    round_config: bytes
    state: str
    accepted: int
    released_round_ids: _containers.RepeatedScalarFieldContainer[int]
    round_public_key: bytes
    round_key_signature: bytes
    log_origin: str
    def __init__(self, round_config: _Optional[bytes] = ..., state: _Optional[str] = ..., accepted: _Optional[int] = ..., released_round_ids: _Optional[_Iterable[int]] = ..., round_public_key: _Optional[bytes] = ..., round_key_signature: _Optional[bytes] = ..., log_origin: _Optional[str] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("protocol_version", "round_id", "client_id", "adapter_spec_digest", "num_examples", "hpke_suite", "wrapped_key", "idempotency_key", "challenge", "chunk_size", "ciphertext_size", "key_id", "ciphertext_digest", "signature", "base_round_id", "data_card_digest", "data_card", "validation_summary")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_SPEC_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    HPKE_SUITE_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    BASE_ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_CARD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_CARD_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    round_id: int
    client_id: str
    adapter_spec_digest: bytes
    num_examples: int
    hpke_suite: int
    wrapped_key: bytes
    idempotency_key: bytes
    challenge: bytes
    chunk_size: int
    ciphertext_size: int
    key_id: str
    ciphertext_digest: bytes
    signature: bytes
    base_round_id: int
    data_card_digest: bytes
    data_card: bytes
    validation_summary: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., round_id: _Optional[int] = ..., client_id: _Optional[str] = ..., adapter_spec_digest: _Optional[bytes] = ..., num_examples: _Optional[int] = ..., hpke_suite: _Optional[int] = ..., wrapped_key: _Optional[bytes] = ..., idempotency_key: _Optional[bytes] = ..., challenge: _Optional[bytes] = ..., chunk_size: _Optional[int] = ..., ciphertext_size: _Optional[int] = ..., key_id: _Optional[str] = ..., ciphertext_digest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., base_round_id: _Optional[int] = ..., data_card_digest: _Optional[bytes] = ..., data_card: _Optional[bytes] = ..., validation_summary: _Optional[bytes] = ...) -> None: ...

class SubmitUpdateRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class SubmitUpdateResponse(_message.Message):
    __slots__ = ("send_chunks", "receipt")
    SEND_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    send_chunks: bool
    receipt: bytes
    def __init__(self, send_chunks: bool = ..., receipt: _Optional[bytes] = ...) -> None: ...

class GetAggregateRequest(_message.Message):
    __slots__ = ("round_id", "wait_seconds")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    wait_seconds: float
    def __init__(self, round_id: _Optional[int] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class AggregateChunk(_message.Message):
    __slots__ = ("manifest", "data")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    data: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("tree_size",)
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    tree_size: int
    def __init__(self, tree_size: _Optional[int] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    def __init__(self, checkpoint: _Optional[str] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("index", "tree_size", "with_entry")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    WITH_ENTRY_FIELD_NUMBER: _ClassVar[int]
    index: int
    tree_size: int
    with_entry: bool
    def __init__(self, index: _Optional[int] = ..., tree_size: _Optional[int] = ..., with_entry: bool = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("old_size", "new_size")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    new_size: int
    def __init__(self, old_size: _Optional[int] = ..., new_size: _Optional[int] = ...) -> None: ...

class ProofResponse(_message.Message):
    __slots__ = ("hashes", "checkpoint", "entry")
    HASHES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    checkpoint: str
    entry: bytes
    def __init__(self, hashes: _Optional[_Iterable[bytes]] = ..., checkpoint: _Optional[str] = ..., entry: _Optional[bytes] = ...) -> None: ...

class OperatorRequest(_message.Message):
    __slots__ = ("signed_request",)
    SIGNED_REQUEST_FIELD_NUMBER: _ClassVar[int]
    signed_request: bytes
    def __init__(self, signed_request: _Optional[bytes] = ...) -> None: ...

class OperatorResponse(_message.Message):
    __slots__ = ("action", "log_index", "result")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    action: str
    log_index: int
    result: bytes
    def __init__(self, action: _Optional[str] = ..., log_index: _Optional[int] = ..., result: _Optional[bytes] = ...) -> None: ...

class ApprovalRequest(_message.Message):
    __slots__ = ("round_id", "approval")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    approval: bytes
    def __init__(self, round_id: _Optional[int] = ..., approval: _Optional[bytes] = ...) -> None: ...

class ApprovalResponse(_message.Message):
    __slots__ = ("state", "approvals", "min_approvals", "log_index")
    STATE_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    MIN_APPROVALS_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    state: str
    approvals: int
    min_approvals: int
    log_index: int
    def __init__(self, state: _Optional[str] = ..., approvals: _Optional[int] = ..., min_approvals: _Optional[int] = ..., log_index: _Optional[int] = ...) -> None: ...

class AddCheckpointRequest(_message.Message):
    __slots__ = ("old_size", "consistency_proof", "checkpoint", "key_entry", "key_entry_proof")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_PROOF_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    KEY_ENTRY_FIELD_NUMBER: _ClassVar[int]
    KEY_ENTRY_PROOF_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    consistency_proof: _containers.RepeatedScalarFieldContainer[bytes]
    checkpoint: str
    key_entry: bytes
    key_entry_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, old_size: _Optional[int] = ..., consistency_proof: _Optional[_Iterable[bytes]] = ..., checkpoint: _Optional[str] = ..., key_entry: _Optional[bytes] = ..., key_entry_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AddCheckpointResponse(_message.Message):
    __slots__ = ("cosignature",)
    COSIGNATURE_FIELD_NUMBER: _ClassVar[int]
    cosignature: str
    def __init__(self, cosignature: _Optional[str] = ...) -> None: ...

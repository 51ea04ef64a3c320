"""A witness for FedSeal logs: split-view protection (C2SP tlog-witness semantics).

The request and the refusals it shares with the log's side are in fedseal/witness.py; the
gRPC service that serves it is auditor/_witness_server.py.

A witness keeps, per log origin it watches, the last checkpoint it cosigned. It cosigns a
new checkpoint only if

1. the checkpoint is signed by a log key the witness knows to be attested, or by a new
   key whose `enclave_started` entry comes with the request: that entry must be in the
   checkpoint's tree (inclusion proof), its evidence must verify under the witness's
   policy, and the checkpoint must name it as its key entry. A key older than the newest
   one the witness knows (a key that already handed over) is refused;
2. it is consistent with the last checkpoint the witness cosigned (RFC 9162 consistency
   proof from `old_size`, which must be the witness's size: otherwise the witness answers
   with a conflict carrying its size, as tlog-witness's 409 does);
3. its `fedseal-time` is not in the future (beyond the allowed clock skew).

The new state is written to the state file (atomically, fsynced) *before* the
cosignature is returned, so a witness never cosigns two inconsistent checkpoints, even
across its own restarts. The first checkpoint a witness sees for a log is taken on trust
(old size 0), as with any witness.

Cosignatures are C2SP tlog-cosignature lines (Ed25519, signature type 0x04). A witness
key file holds one line in the signed-note private key format of Go's
golang.org/x/mod/sumdb/note, with type byte 0x04::

    PRIVATE+KEY+<name>+<key id, 8 hex digits>+<base64(0x04 || 32-byte Ed25519 seed)>

It must be readable by its owner only. The matching verifier key string
(`name+keyid+base64(0x04 || public key)`) is what clients list in their policy.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from attestation import Policy
from fedseal import strictjson
from fedseal._atomicfile import create_durably, replace_durably
from fedseal.canonical import b64decode_canonical
from fedseal.checkpoint import Checkpoint, open_checkpoint
from fedseal.errors import FedSealError, FormatError
from fedseal.logformat import CheckpointExtensions, LogEntry
from fedseal.merkle import is_trivially_consistent, leaf_hash, verify_consistency, verify_inclusion
from fedseal.note import (
    SIG_TYPE_COSIGNATURE_V1,
    CosignatureSigner,
    NoteVerifier,
    compute_key_id,
    split_note,
    unverified_signatures,
    validate_key_name,
)
from fedseal.witness import (
    AddCheckpointRequest,
    KeyEntryNeededError,
    UnknownLogError,
    WitnessConflictError,
    WitnessRefusedError,
)

from ._enclave import KeyAttestationError, attest_enclave_entry

__all__ = ["STATE_FORMAT", "Witness", "WitnessKey"]

STATE_FORMAT = "fedseal-witness-state/v1"
_KEY_PREFIX = "PRIVATE+KEY+"


@dataclass(frozen=True)
class WitnessKey:
    """A witness's cosigning key (Ed25519, tlog-cosignature type 0x04)."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        validate_key_name(self.name)

    @classmethod
    def generate(cls, name: str) -> WitnessKey:
        return cls(name, Ed25519PrivateKey.generate())

    def signer(self) -> CosignatureSigner:
        return CosignatureSigner(self.name, self.private_key)

    def verifier_key(self) -> str:
        """The verifier key string clients put in their policy's `witnesses.keys`."""
        return self.signer().verifier_key_string()

    def write(self, path: Path) -> None:
        """Write the key file (owner-only permissions; refuses to overwrite)."""
        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        public = self.signer().public_key_bytes
        key_id = compute_key_id(self.name, SIG_TYPE_COSIGNATURE_V1, public).hex()
        material = base64.b64encode(bytes([SIG_TYPE_COSIGNATURE_V1]) + seed).decode("ascii")
        text = f"{_KEY_PREFIX}{self.name}+{key_id}+{material}\n"
        create_durably(path, text.encode("ascii"))

    @classmethod
    def load(cls, path: Path) -> WitnessKey:
        """Read a key file; FormatError names what is wrong (never the key itself)."""
        try:
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):  # a folder's mode bits say nothing of a key's exposure
                raise FormatError(f"witness key file {path} is not a file")
            if mode & 0o077:
                raise FormatError(f"witness key file {path} is readable by others; chmod 600 it")
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise FormatError(f"cannot read witness key file {path}: {exc}") from None
        if not text.startswith(_KEY_PREFIX):
            raise FormatError(f"witness key file {path} does not start with {_KEY_PREFIX!r}")
        parts = text[len(_KEY_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise FormatError(f"witness key file {path} is not PRIVATE+KEY+name+keyid+key")
        name, key_id, material = parts
        raw = b64decode_canonical(material, what=f"key in {path}")
        if len(raw) != 33 or raw[0] != SIG_TYPE_COSIGNATURE_V1:
            raise FormatError(f"witness key file {path} does not hold a type 0x04 Ed25519 key")
        key = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if compute_key_id(name, SIG_TYPE_COSIGNATURE_V1, key.signer().public_key_bytes).hex() != key_id:
            raise FormatError(f"witness key file {path}: the key id does not match the key")
        return key


@dataclass(frozen=True)
class _KnownKey:
    verifier: NoteVerifier
    entry_index: int


@dataclass(frozen=True)
class _LogState:
    size: int
    root: bytes
    checkpoint: str
    keys: tuple[_KnownKey, ...]

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": base64.b64encode(self.root).decode("ascii"),
            "checkpoint": self.checkpoint,
            "keys": [
                {"verifier_key": k.verifier.key_string(), "entry_index": k.entry_index} for k in self.keys
            ],
        }

    @classmethod
    def from_json_obj(cls, obj: Any, where: str) -> _LogState:
        try:
            keys = tuple(
                _KnownKey(NoteVerifier.from_key_string(k["verifier_key"]), int(k["entry_index"]))
                for k in obj["keys"]
            )
            return cls(
                int(obj["size"]),
                b64decode_canonical(obj["root"], what=f"{where} root", size=32),
                str(obj["checkpoint"]),
                keys,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{where} is malformed: {exc}") from None


class Witness:
    """Cosigns checkpoints of the logs it watches (see the module docstring)."""

    def __init__(
        self,
        key: WitnessKey,
        state_path: Path,
        policy: Policy,
        origins: Sequence[str],
        *,
        clock: Callable[[], float] = time.time,
        max_clock_skew: float = 300.0,
    ) -> None:
        if not origins:
            raise FormatError("a witness must watch at least one log origin")
        self._signer = key.signer()
        self._state_path = state_path
        self._policy = policy
        self._origins = frozenset(origins)
        self._clock = clock
        self._skew_ms = int(max_clock_skew * 1000)
        self._lock = threading.Lock()
        self._logs = self._load_state()

    @property
    def verifier_key(self) -> str:
        return self._signer.verifier_key_string()

    def last_checkpoint(self, origin: str) -> str | None:
        with self._lock:
            state = self._logs.get(origin)
            return state.checkpoint if state is not None else None

    def add_checkpoint(self, request: AddCheckpointRequest) -> str:
        """Check `request` and return a cosignature line for its checkpoint, or raise."""
        origin = _origin_of(request.checkpoint)
        if origin not in self._origins:
            raise UnknownLogError(f"this witness does not watch log origin {origin!r}")
        with self._lock:
            state = self._logs.get(origin)
            known = state.keys if state is not None else ()
            cp, key = self._signed_by(request, origin, known)
            newest = max((k.entry_index for k in known), default=-1)
            if key.entry_index < newest:
                raise WitnessRefusedError(
                    f"checkpoint signed by the key of entry {key.entry_index}, which handed over "
                    f"to the key of entry {newest}"
                )
            ext = CheckpointExtensions.of(cp)
            if ext.time_ms > self._clock() * 1000 + self._skew_ms:
                raise WitnessRefusedError(f"checkpoint for size {cp.size} is dated in the future")
            self._check_consistency(request, cp, state)
            keys = known if any(k.entry_index == key.entry_index for k in known) else (*known, key)
            logs = {**self._logs, origin: _LogState(cp.size, cp.root_hash, request.checkpoint, keys)}
            # Saved first, then kept: a failed save (OSError) leaves the witness where it was.
            self._save_state(logs)
            self._logs = logs
            return self._signer.signature_line(cp.body(), int(self._clock()))

    def _signed_by(
        self, request: AddCheckpointRequest, origin: str, known: tuple[_KnownKey, ...]
    ) -> tuple[Checkpoint, _KnownKey]:
        ids = {s.key_id for s in unverified_signatures(request.checkpoint)}
        for k in known:
            if k.verifier.key_id in ids:
                try:
                    cp = open_checkpoint(request.checkpoint, [k.verifier], origin).checkpoint
                except FedSealError as exc:
                    raise WitnessRefusedError(f"checkpoint signature does not verify: {exc}") from exc
                if CheckpointExtensions.of(cp).key_entry != k.entry_index:
                    raise WitnessRefusedError("checkpoint names another key entry than its signer's")
                return cp, k
        if request.key_entry is None:
            raise KeyEntryNeededError("the checkpoint's key is new to this witness: send its key entry")
        try:
            entry = LogEntry.from_leaf_data(request.key_entry, where="key entry")
            attested = attest_enclave_entry(entry, self._policy)
            if attested.origin != origin:
                raise WitnessRefusedError(f"the key entry is for log origin {attested.origin!r}")
            cp = open_checkpoint(request.checkpoint, [attested.verifier], origin).checkpoint
            if CheckpointExtensions.of(cp).key_entry != entry.index:
                raise WitnessRefusedError("checkpoint names another key entry than the one sent")
            verify_inclusion(
                leaf_hash(request.key_entry), entry.index, cp.size, request.key_entry_proof, cp.root_hash
            )
        except WitnessRefusedError:
            raise
        except (KeyAttestationError, FedSealError) as exc:
            raise WitnessRefusedError(f"the checkpoint's key is not attested: {exc}") from exc
        return cp, _KnownKey(attested.verifier, entry.index)

    @staticmethod
    def _check_consistency(request: AddCheckpointRequest, cp: Checkpoint, state: _LogState | None) -> None:
        old_size = state.size if state is not None else 0
        if request.old_size != old_size:
            raise WitnessConflictError(
                f"old size {request.old_size} is not this witness's size {old_size}", old_size
            )
        if cp.size < old_size:
            raise WitnessConflictError(
                f"checkpoint size {cp.size} is below this witness's size {old_size}", old_size
            )
        if state is None or is_trivially_consistent(old_size):
            if request.consistency_proof:
                raise WitnessRefusedError("a consistency proof from size 0 must be empty")
            return
        try:
            verify_consistency(old_size, cp.size, request.consistency_proof, state.root, cp.root_hash)
        except FedSealError as exc:
            raise WitnessRefusedError(
                f"checkpoint for size {cp.size} is not consistent with the one this witness "
                f"cosigned for size {old_size} (a fork?): {exc}"
            ) from exc

    def _load_state(self) -> dict[str, _LogState]:
        path = self._state_path
        # Checked at start-up: a state that can never be saved would fail every cosigning.
        folder = path.parent
        if not folder.is_dir():
            raise FormatError(f"witness state {path}: the folder {folder} does not exist or is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise FormatError(f"witness state {path}: the folder {folder} is not writable")
        if path.is_dir():
            raise FormatError(f"witness state {path} is a folder, not a file")
        if not path.exists():
            return {}
        try:
            obj = strictjson.loads(path.read_bytes(), what=f"witness state {path}")
        except FormatError:
            raise
        except OSError as exc:
            raise FormatError(f"cannot read witness state {path}: {exc}") from None
        if (
            not isinstance(obj, dict)
            or obj.get("format") != STATE_FORMAT
            or not isinstance(obj.get("logs"), dict)
        ):
            raise FormatError(f"witness state {path} is not a {STATE_FORMAT} document")
        return {o: _LogState.from_json_obj(s, f"witness state for {o!r}") for o, s in obj["logs"].items()}

    def _save_state(self, logs: dict[str, _LogState]) -> None:
        """Write `logs` as the state file atomically and durably (fsync file, rename, fsync
        directory); OSError if it cannot be written."""
        path = self._state_path
        data = json.dumps(
            {"format": STATE_FORMAT, "logs": {o: s.to_json_obj() for o, s in sorted(logs.items())}},
            indent=1,
        ).encode("utf-8")
        replace_durably(path, data)


def _origin_of(note: str) -> str:
    return Checkpoint.parse_body(split_note(note)[0]).origin

"""The `witnesses` section of a policy: cosignatures a client requires on its receipts.

    "witnesses": {
      "keys": ["witness-a.example+1a2b3c4d+BLy...", "..."],
      "min": 2
    }

`keys` are C2SP verifier key strings of type 0x04 (tlog-cosignature, Ed25519), one per
witness; `min` (1..len(keys)) is how many of them must have cosigned the checkpoint in a
receipt. A witness cosigns only a checkpoint consistent with every earlier one it saw
(auditor/_witness.py), so `min` independent witnesses make showing this client a view of
the log that others do not see (a split view) require that many witnesses to collude.
Without the section no cosignature is required.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedseal.errors import FormatError
from fedseal.note import SIG_TYPE_COSIGNATURE_V1, NoteVerifier

from ._encoding import json_type
from ._errors import PolicyError

__all__ = ["WitnessPolicy"]

_MAX_WITNESSES = 64


@dataclass(frozen=True)
class WitnessPolicy:
    keys: tuple[str, ...]
    min: int

    def __post_init__(self) -> None:
        if not isinstance(self.keys, tuple) or not self.keys or len(self.keys) > _MAX_WITNESSES:
            raise PolicyError(f"'witnesses.keys' must list 1..{_MAX_WITNESSES} verifier keys")
        seen: set[tuple[str, bytes]] = set()
        for index, key in enumerate(self.keys):
            try:
                verifier = NoteVerifier.from_key_string(key) if isinstance(key, str) else None
            except FormatError as exc:
                raise PolicyError(f"'witnesses.keys[{index}]' is not a verifier key: {exc}") from exc
            if verifier is None or verifier.sig_type != SIG_TYPE_COSIGNATURE_V1:
                raise PolicyError(f"'witnesses.keys[{index}]' must be a cosignature (type 0x04) key")
            if (verifier.name, verifier.key_id) in seen:
                raise PolicyError(f"'witnesses.keys[{index}]' repeats a witness")
            seen.add((verifier.name, verifier.key_id))
        if isinstance(self.min, bool) or not isinstance(self.min, int) or not 1 <= self.min <= len(self.keys):
            raise PolicyError(f"'witnesses.min' must be an integer in 1..{len(self.keys)}")

    def verifiers(self) -> tuple[NoteVerifier, ...]:
        return tuple(NoteVerifier.from_key_string(k) for k in self.keys)

    @classmethod
    def from_json_value(cls, value: object, *, where: str) -> WitnessPolicy:
        if not isinstance(value, dict) or set(value) != {"keys", "min"}:
            raise PolicyError(f"{where}: key 'witnesses' must be an object with exactly 'keys' and 'min'")
        keys = value["keys"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise PolicyError(
                f"{where}: key 'witnesses.keys' must be an array of strings, got {json_type(keys)}"
            )
        try:
            return cls(tuple(keys), value["min"])
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None

"""Tests for fedseal.note: Go sumdb vectors, key IDs, key strings, strict opening."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedseal.errors import FormatError, NoteError, SignatureError
from fedseal.note import (
    MAX_SIGNATURES,
    SIG_TYPE_COSIGNATURE_V1,
    SIG_TYPE_ED25519,
    CosignatureSigner,
    NoteSigner,
    NoteVerifier,
    b64decode_strict,
    compute_key_id,
    cosignature_message,
    format_signature_line,
    open_note,
    parse_signature_line,
    split_note,
    unverified_signatures,
    validate_key_name,
)

VECTOR_FILE = Path(__file__).parent / "vectors" / "signed-note" / "note_vectors.json"


@pytest.fixture(scope="module")
def vec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTOR_FILE.read_text())
    return data


def _private_key_from_go_skey(skey: str) -> tuple[str, Ed25519PrivateKey]:
    """Parse Go's ``PRIVATE+KEY+name+hash+base64(0x01 || seed)`` signer key format."""
    prefix = "PRIVATE+KEY+"
    assert skey.startswith(prefix)
    name, _key_id, encoded = skey[len(prefix) :].split("+", 2)
    raw = base64.b64decode(encoded)
    assert len(raw) == 33
    assert raw[0] == SIG_TYPE_ED25519
    return name, Ed25519PrivateKey.from_private_bytes(raw[1:])


@pytest.fixture(scope="module")
def peter(vec: dict[str, Any]) -> NoteSigner:
    name, key = _private_key_from_go_skey(vec["signer_key"])
    return NoteSigner(name, key)


@pytest.fixture(scope="module")
def verifiers(vec: dict[str, Any]) -> dict[str, NoteVerifier]:
    return {n: NoteVerifier.from_key_string(k) for n, k in vec["verifier_keys"].items()}


def _signer(name: str = "example.com/log") -> NoteSigner:
    return NoteSigner(name, Ed25519PrivateKey.generate())


# --- Go sumdb vectors --------------------------------------------------------------------


def test_sign_reproduces_go_vector(vec: dict[str, Any], peter: NoteSigner) -> None:
    assert peter.sign(vec["text"]) == vec["signed_by_peter"]
    assert peter.key_id.hex() == "c74f20a3"
    assert peter.verifier_key_string() == vec["verifier_keys"]["PeterNeumann"]


def test_verifier_key_strings_round_trip(vec: dict[str, Any], verifiers: dict[str, NoteVerifier]) -> None:
    for name, key_string in vec["verifier_keys"].items():
        v = verifiers[name]
        assert v.name == name
        assert v.sig_type == SIG_TYPE_ED25519
        assert v.key_string() == key_string
        assert v.key_id.hex() == key_string.split("+")[1]


def test_open_go_vectors(vec: dict[str, Any], verifiers: dict[str, NoteVerifier]) -> None:
    peter_v, enoch_v = verifiers["PeterNeumann"], verifiers["EnochRoot"]

    one = open_note(vec["signed_by_peter"], [peter_v])
    assert one.text == vec["text"]
    assert one.signer_names == ("PeterNeumann",)
    assert one.signatures[0].key_id == bytes.fromhex("c74f20a3")
    assert one.signatures[0].timestamp is None

    both = open_note(vec["signed_by_peter_and_enoch"], [peter_v, enoch_v])
    assert both.text == vec["text"]
    assert both.signer_names == ("PeterNeumann", "EnochRoot")

    # Unknown keys are ignored: Enoch alone verifies the two-signature note.
    assert open_note(vec["signed_by_peter_and_enoch"], [enoch_v]).signer_names == ("EnochRoot",)
    # Bytes input is accepted as UTF-8.
    assert open_note(vec["signed_by_peter"].encode(), [peter_v]).text == vec["text"]


def test_go_vector_rejections(vec: dict[str, Any], verifiers: dict[str, NoteVerifier]) -> None:
    peter_v, enoch_v = verifiers["PeterNeumann"], verifiers["EnochRoot"]
    signed: str = vec["signed_by_peter"]

    # Tampered text.
    with pytest.raises(NoteError, match="does not verify"):
        open_note(signed.replace("cryptography", "cryptographY"), [peter_v])
    # Tampered signature (flip one bit of the signature, keep the key ID).
    line = split_note(signed)[1][0]
    parsed = parse_signature_line(line)
    bad_sig = bytes([parsed.signature[0] ^ 1]) + parsed.signature[1:]
    bad_line = format_signature_line(parsed.name, parsed.key_id, bad_sig)
    with pytest.raises(NoteError, match="does not verify"):
        open_note(vec["text"] + "\n" + bad_line, [peter_v])
    # Only an unknown key signed.
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(signed, [enoch_v])
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(signed, [])


# --- key IDs and key strings --------------------------------------------------------------


def test_key_id_computation() -> None:
    key = Ed25519PrivateKey.generate()
    signer = NoteSigner("example.com/log", key)
    pub = signer.public_key_bytes
    want = hashlib.sha256(b"example.com/log\n\x01" + pub).digest()[:4]
    assert signer.key_id == want == compute_key_id("example.com/log", 1, pub)

    cosigner = CosignatureSigner("example.com/log", key)
    want_cosig = hashlib.sha256(b"example.com/log\n\x04" + pub).digest()[:4]
    assert cosigner.key_id == want_cosig
    assert cosigner.key_id != signer.key_id  # same key, distinct type: no ambiguity

    vkey = signer.verifier_key_string()
    name, key_id, material = vkey.split("+", 2)
    assert name == "example.com/log"
    assert key_id == want.hex()
    assert base64.b64decode(material) == b"\x01" + pub
    assert base64.b64decode(cosigner.verifier_key_string().split("+", 2)[2])[0] == 0x04
    assert NoteVerifier.from_key_string(cosigner.verifier_key_string()).sig_type == 0x04


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("nameonly", "form name\\+keyid\\+key"),
        ("name+c74f20a3", "form name\\+keyid\\+key"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "empty"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "space"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "lowercase hex"),
        ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 lowercase hex"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T!", "base64"),
        ("PeterNeumann+c74f20a3+", "empty"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW+", "base64"),
        ("PeterNeumann+c74f20a3+ApYC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "type 0x02"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy", "bytes, expected 32"),
    ],
)
def test_bad_key_strings(vkey: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        NoteVerifier.from_key_string(vkey)


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\u00a0b", "a\u2003b", "tab\tname"])
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(FormatError):
        validate_key_name(name)
    with pytest.raises(FormatError):
        NoteSigner(name, Ed25519PrivateKey.generate())


def test_verifier_from_raw_key_and_object() -> None:
    key = Ed25519PrivateKey.generate()
    signer = NoteSigner("example.com/log", key)
    v1 = NoteVerifier("example.com/log", signer.public_key_bytes)
    v2 = NoteVerifier("example.com/log", key.public_key())
    assert v1.key_string() == v2.key_string() == signer.verifier_key_string()
    assert v1.same_key(v2)
    assert "NoteVerifier(" in repr(v1)
    assert "Signer(" in repr(signer)
    with pytest.raises(FormatError, match="31 bytes"):
        NoteVerifier("x", b"\x00" * 31)
    with pytest.raises(FormatError, match="unsupported signature type"):
        NoteVerifier("x", signer.public_key_bytes, sig_type=0x02)


def test_b64decode_strict() -> None:
    assert b64decode_strict("AAEC", "x") == b"\x00\x01\x02"
    with pytest.raises(FormatError, match="not canonical"):
        b64decode_strict("AB==", "x")  # stray bits after the last full byte
    with pytest.raises(FormatError, match="not valid base64"):
        b64decode_strict("AA", "x")  # missing padding
    with pytest.raises(FormatError, match="not valid base64"):
        b64decode_strict("AA AA===", "x")
    with pytest.raises(FormatError, match="not valid base64"):
        b64decode_strict("\u00e9AAA", "x")


# --- signing and opening -------------------------------------------------------------------


def test_sign_requires_valid_text() -> None:
    signer = _signer()
    for text in ["", "no final newline", "bell\x07\n", "cr\r\n"]:
        with pytest.raises(NoteError):
            signer.sign(text)


def test_text_may_contain_blank_lines() -> None:
    signer = _signer()
    text = "para one\n\npara two\n\n"
    note = signer.sign(text)
    assert open_note(note, [signer.verifier()]).text == text


def test_wrong_key_with_colliding_identity_is_rejected() -> None:
    # A line claiming a known (name, key ID) but signed by another key must fail, not be skipped.
    real = _signer("example.com/log")
    impostor = Ed25519PrivateKey.generate()
    text = "hello\n"
    forged_sig = impostor.sign(text.encode())
    note = text + "\n" + format_signature_line("example.com/log", real.key_id, forged_sig)
    with pytest.raises(NoteError, match="does not verify") as info:
        open_note(note, [real.verifier()])
    assert isinstance(info.value.__cause__, SignatureError)


def test_same_name_other_key_id_is_ignored() -> None:
    real = _signer("example.com/log")
    other = _signer("example.com/log")  # same name, different key (so different key ID)
    text = "hello\n"
    note = real.sign(text) + other.signature_line(text)
    assert open_note(note, [real.verifier()]).signer_names == ("example.com/log",)
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(other.sign(text), [real.verifier()])


def test_duplicate_signature_from_known_key_is_rejected() -> None:
    signer = _signer()
    note = signer.sign("hello\n")
    doubled = note + "".join(line + "\n" for line in split_note(note)[1])
    with pytest.raises(NoteError, match="more than once"):
        open_note(doubled, [signer.verifier()])
    # A repeated line from an unknown key is ignored like any unknown line.
    other = _signer("other.example")
    repeated_unknown = note + other.signature_line("hello\n") * 2
    assert open_note(repeated_unknown, [signer.verifier()]).signer_names == (signer.name,)


def test_ambiguous_verifiers_are_refused() -> None:
    signer = _signer()
    good = signer.verifier()
    # Same name and key ID, different key material: only constructible by forging the ID.
    forged = NoteVerifier(signer.name, Ed25519PrivateKey.generate().public_key())
    object.__setattr__(forged, "_key_id", good.key_id)
    with pytest.raises(NoteError, match="share name"):
        open_note(signer.sign("x\n"), [good, forged])
    # Passing the same key twice is fine.
    assert open_note(signer.sign("x\n"), [good, signer.verifier()]).signer_names == (signer.name,)


def test_sixteen_signatures_accepted_and_limit_enforced() -> None:
    text = "many signers\n"
    signers = [_signer(f"example.com/s{i}") for i in range(16)]
    note = text + "\n" + "".join(s.signature_line(text) for s in signers)
    opened = open_note(note, [s.verifier() for s in signers])
    assert len(opened.signatures) == 16

    extra = _signer("example.com/extra")
    too_many = text + "\n" + extra.signature_line(text) * (MAX_SIGNATURES + 1)
    with pytest.raises(NoteError, match="more than"):
        open_note(too_many, [extra.verifier()])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda n: n.replace("\n\n", "\n"), "no blank line"),
        (lambda n: n[:-1], "does not end in a newline"),
        (lambda n: n + "\n", "no signature lines"),
        (lambda n: n.replace("\u2014 ", "- "), "em dash"),
        (lambda n: n.replace("\u2014 example.com/log ", "\u2014 example.com/log"), "malformed"),
        (lambda n: n.rstrip("\n") + " \n", "malformed"),
        (lambda n: n.rstrip("=\n") + "\n", "malformed"),
        (lambda n: "ctrl\x01" + n, "control character"),
        (lambda n: n + "\u2014 example.com/log AAAA\n", "too short"),
        (lambda n: n + "\u2014 bad+name AAAAAAA=\n", "malformed"),
    ],
)
def test_malformed_notes(mutate: Any, message: str) -> None:
    signer = _signer("example.com/log")
    note: str = mutate(signer.sign("hello\nworld\n"))
    with pytest.raises(NoteError, match=message):
        open_note(note, [signer.verifier()])


def test_invalid_utf8_is_rejected() -> None:
    signer = _signer()
    raw = signer.sign("hello\n").encode()
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(b"\xff" + raw, [signer.verifier()])
    with pytest.raises(NoteError, match="UTF-8"):
        open_note("\ud800" + raw.decode(), [signer.verifier()])


def test_wrong_signature_length_is_rejected() -> None:
    signer = _signer()
    line = format_signature_line(signer.name, signer.key_id, b"\x00" * 63)
    with pytest.raises(NoteError, match="63 bytes, expected 64"):
        open_note("hello\n\n" + line, [signer.verifier()])


# --- cosignature signature type 0x04 ---------------------------------------------------------


def test_cosignature_type_round_trip() -> None:
    log = _signer("example.com/log")
    witness = CosignatureSigner("witness.example/w1", Ed25519PrivateKey.generate())
    text = "example.com/log\n5\n" + base64.b64encode(b"\x00" * 32).decode() + "\n"
    note = log.sign(text) + witness.signature_line(text, 1_700_000_000)
    opened = open_note(note, [log.verifier(), witness.verifier()])
    assert opened.signer_names == ("example.com/log", "witness.example/w1")
    cosig = opened.signatures[1]
    assert cosig.sig_type == SIG_TYPE_COSIGNATURE_V1
    assert cosig.timestamp == 1_700_000_000

    parsed = parse_signature_line(witness.signature_line(text, 7))
    assert parsed.signature[:8] == (7).to_bytes(8, "big")
    # The signed message is the tlog-cosignature one, over the raw Ed25519 key.
    assert cosignature_message(text, 7) == b"cosignature/v1\ntime 7\n" + text.encode()


def test_cosignature_tampered_timestamp_fails() -> None:
    witness = CosignatureSigner("witness.example/w1", Ed25519PrivateKey.generate())
    text = "body\n"
    parsed = parse_signature_line(witness.signature_line(text, 100))
    v = witness.verifier()
    assert v.verify(text, parsed.signature).timestamp == 100
    bumped = (101).to_bytes(8, "big") + parsed.signature[8:]
    with pytest.raises(SignatureError, match="does not verify"):
        v.verify(text, bumped)
    huge = (2**63).to_bytes(8, "big") + parsed.signature[8:]
    with pytest.raises(SignatureError, match="2\\^63-1"):
        v.verify(text, huge)
    with pytest.raises(SignatureError, match="expected 72"):
        v.verify(text, parsed.signature[:-1])
    with pytest.raises(FormatError, match="outside"):
        witness.signature_line(text, -1)
    with pytest.raises(FormatError, match="outside"):
        witness.signature_line(text, 2**63)


def test_split_note_is_the_one_place_a_note_is_taken_apart() -> None:
    signer = _signer()
    note = signer.sign("hello\n\nworld\n")
    text, lines = split_note(note)
    assert text == "hello\n\nworld\n"  # the last blank line separates, not the first
    assert len(lines) == 1 and parse_signature_line(lines[0]).key_id == signer.verifier().key_id
    garbled = note + "\u2014 not a signature line\n"
    assert [s.key_id for s in unverified_signatures(garbled)] == [signer.verifier().key_id]
    for bad, message in (
        ("hello\n", "no blank line"),
        ("hello\n\n", "no signature lines"),
        (note.rstrip("\n"), "does not end in a newline"),
        (note.replace("hello", "hel\x01lo"), "control character"),
    ):
        with pytest.raises(NoteError, match=message):
            split_note(bad)
        with pytest.raises(NoteError, match=message):
            unverified_signatures(bad)

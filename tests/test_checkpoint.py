"""Tests for fedseal.checkpoint: checkpoint bodies, signing, cosignatures, tlog-proof."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedseal.checkpoint import (
    TLOG_PROOF_HEADER,
    Checkpoint,
    TlogProof,
    check_log_origin,
    cosign_checkpoint,
    open_checkpoint,
    sign_checkpoint,
    verify_cosignature,
    verify_tlog_proof,
)
from fedseal.errors import FormatError, NoteError, ProofError, SignatureError
from fedseal.merkle import MerkleTree, leaf_hash
from fedseal.note import (
    SIG_TYPE_COSIGNATURE_V1,
    CosignatureSigner,
    NoteSigner,
    NoteVerifier,
    parse_signature_line,
    split_note,
)

ORIGIN = "fedseal.example/log"
ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()


@pytest.fixture(scope="module")
def log_signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def witness_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def witness(witness_key: Ed25519PrivateKey) -> NoteVerifier:
    return CosignatureSigner("witness.example/w1", witness_key).verifier()


# --- checkpoint body ------------------------------------------------------------------------


def test_body_format_and_round_trip() -> None:
    cp = Checkpoint(ORIGIN, 20852163, ROOT)
    assert cp.body() == f"{ORIGIN}\n20852163\n{ROOT_B64}\n"
    assert Checkpoint.parse_body(cp.body()) == cp

    with_ext = Checkpoint(ORIGIN, 0, ROOT, ("ext one", "ext two"))
    assert with_ext.body() == f"{ORIGIN}\n0\n{ROOT_B64}\next one\next two\n"
    assert Checkpoint.parse_body(with_ext.body()) == with_ext


def test_spec_example_body_parses() -> None:
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.parse_body(body)
    assert (cp.origin, cp.size, cp.extensions) == ("example.com/behind-the-sofa", 20852163, ())
    assert cp.body() == body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{ORIGIN}\n1\n{ROOT_B64}", "does not end in a newline"),
        (f"{ORIGIN}\n1\n", "2 lines, expected at least 3"),
        ("", "does not end in a newline"),
        (f"\n1\n{ROOT_B64}\n", "origin line is empty"),
        (f"{ORIGIN}\n01\n{ROOT_B64}\n", "leading zeros"),
        (f"{ORIGIN}\n00\n{ROOT_B64}\n", "leading zeros"),
        (f"{ORIGIN}\n-1\n{ROOT_B64}\n", "not a decimal"),
        (f"{ORIGIN}\n+1\n{ROOT_B64}\n", "not a decimal"),
        (f"{ORIGIN}\n1_000\n{ROOT_B64}\n", "not a decimal"),
        (f"{ORIGIN}\n\u0661\n{ROOT_B64}\n", "not a decimal"),  # Arabic-Indic digit one
        (f"{ORIGIN}\n 1\n{ROOT_B64}\n", "not a decimal"),
        (f"{ORIGIN}\n\n{ROOT_B64}\n", "not a decimal"),
        (f"{ORIGIN}\n{2**64}\n{ROOT_B64}\n", "64 bits"),
        (f"{ORIGIN}\n1\n{ROOT_B64[:-1]}\n", "root hash is not valid base64"),
        (f"{ORIGIN}\n1\n{ROOT_B64[:-2]}9=\n", "not canonical"),
        (f"{ORIGIN}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", "31 bytes"),
        (f"{ORIGIN}\n1\n{ROOT_B64}\n\n", "extension line 0 is empty"),
        (f"{ORIGIN}\n1\n{ROOT_B64}\n\next\n", "extension line 0 is empty"),
        (f"{ORIGIN}\r\n1\n{ROOT_B64}\n", "control character"),
        (f"{ORIGIN}\n1\n{ROOT_B64}\nta\tb\n", "control character"),
    ],
)
def test_parse_body_rejects(body: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Checkpoint.parse_body(body)


def test_checkpoint_constructor_validates() -> None:
    with pytest.raises(FormatError, match="origin is empty"):
        Checkpoint("", 1, ROOT)
    with pytest.raises(FormatError, match="newline"):
        Checkpoint("a\nb", 1, ROOT)
    with pytest.raises(FormatError, match="outside"):
        Checkpoint(ORIGIN, -1, ROOT)
    with pytest.raises(FormatError, match="33 bytes"):
        Checkpoint(ORIGIN, 1, ROOT + b"\x00")
    with pytest.raises(FormatError, match="tuple"):
        Checkpoint(ORIGIN, 1, ROOT, ["x"])  # type: ignore[arg-type]


# --- signed checkpoints -----------------------------------------------------------------------


def test_sign_and_open(log_signer: NoteSigner) -> None:
    cp = Checkpoint(ORIGIN, 42, ROOT)
    note = sign_checkpoint(cp, log_signer)
    assert note.startswith(cp.body() + "\n\u2014 " + ORIGIN + " ")
    verified = open_checkpoint(note, [log_signer.verifier()], ORIGIN)
    assert verified.checkpoint == cp
    assert [s.name for s in verified.log_signatures] == [ORIGIN]
    assert verified.cosignatures == ()


def test_open_rejects(log_signer: NoteSigner) -> None:
    cp = Checkpoint(ORIGIN, 42, ROOT)
    note = sign_checkpoint(cp, log_signer)
    with pytest.raises(NoteError, match="does not match expected origin"):
        open_checkpoint(note, [log_signer.verifier()], "other.example/log")
    other = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_checkpoint(note, [other.verifier()], ORIGIN)
    with pytest.raises(NoteError, match="does not verify"):
        open_checkpoint(note.replace("\n42\n", "\n43\n"), [log_signer.verifier()], ORIGIN)
    # A correctly signed note whose text is not a checkpoint body.
    junk = log_signer.sign(f"{ORIGIN}\n042\n{ROOT_B64}\n")
    with pytest.raises(FormatError, match="leading zeros"):
        open_checkpoint(junk, [log_signer.verifier()], ORIGIN)


# --- cosignatures ------------------------------------------------------------------------------


def test_cosignature_exact_message(witness_key: Ed25519PrivateKey) -> None:
    cp = Checkpoint("example.com/behind-the-sofa", 20852163, ROOT)
    line = cosign_checkpoint(cp, "witness.example/w1", witness_key, 1679315147)
    assert line.startswith("\u2014 witness.example/w1 ")
    assert line.endswith("\n")
    parsed = parse_signature_line(line)
    pub = witness_key.public_key().public_bytes_raw()
    assert parsed.key_id == hashlib.sha256(b"witness.example/w1\n\x04" + pub).digest()[:4]
    assert len(parsed.signature) == 8 + 64
    assert int.from_bytes(parsed.signature[:8], "big") == 1679315147
    # Check the Ed25519 signature directly over the tlog-cosignature message.
    message = (
        b"cosignature/v1\ntime 1679315147\n"
        b"example.com/behind-the-sofa\n20852163\n" + ROOT_B64.encode() + b"\n"
    )
    witness_key.public_key().verify(parsed.signature[8:], message)


def test_verify_cosignature(witness_key: Ed25519PrivateKey, witness: NoteVerifier) -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    line = cosign_checkpoint(cp, "witness.example/w1", witness_key, 1_700_000_123)
    assert verify_cosignature(cp, line, witness) == 1_700_000_123
    assert verify_cosignature(cp, line.rstrip("\n"), witness) == 1_700_000_123

    with pytest.raises(SignatureError, match="does not verify"):
        verify_cosignature(Checkpoint(ORIGIN, 8, ROOT), line, witness)
    parsed = parse_signature_line(line)
    later = (1_700_000_124).to_bytes(8, "big") + parsed.signature[8:]
    retimed = "\u2014 witness.example/w1 " + base64.b64encode(parsed.key_id + later).decode()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_cosignature(cp, retimed, witness)
    other = CosignatureSigner("witness.example/w2", Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="not cosigner"):
        verify_cosignature(cp, other.signature_line(cp.body(), 1), witness)
    plain = NoteVerifier(witness.name, witness.public_key_bytes)
    with pytest.raises(FormatError, match="not a cosignature key"):
        verify_cosignature(cp, line, plain)
    with pytest.raises(FormatError, match="em dash"):
        verify_cosignature(cp, "- witness.example/w1 AAAA", witness)


def test_cosigned_checkpoint_note(
    log_signer: NoteSigner, witness_key: Ed25519PrivateKey, witness: NoteVerifier
) -> None:
    cp = Checkpoint(ORIGIN, 99, ROOT)
    note = sign_checkpoint(cp, log_signer) + cosign_checkpoint(cp, "witness.example/w1", witness_key, 1234)
    verified = open_checkpoint(note, [log_signer.verifier(), witness], ORIGIN)
    assert [s.sig_type for s in verified.cosignatures] == [SIG_TYPE_COSIGNATURE_V1]
    assert verified.cosignature_time("witness.example/w1") == 1234
    with pytest.raises(NoteError, match="no verified cosignature"):
        verified.cosignature_time("witness.example/w9")
    # Without the witness key the cosignature is an unknown line and is ignored.
    assert open_checkpoint(note, [log_signer.verifier()], ORIGIN).cosignatures == ()
    # The cosignature alone does not stand in for the log's signature.
    with pytest.raises(NoteError, match="no verified log signature"):
        open_checkpoint(note, [witness], ORIGIN)
    # A cosignature over a different checkpoint rejects the note when the witness is known.
    stale = sign_checkpoint(cp, log_signer) + cosign_checkpoint(
        Checkpoint(ORIGIN, 98, ROOT), "witness.example/w1", witness_key, 1234
    )
    with pytest.raises(NoteError, match="does not verify"):
        open_checkpoint(stale, [log_signer.verifier(), witness], ORIGIN)


# --- tlog-proof ----------------------------------------------------------------------------------


H1 = hashlib.sha256(b"hash1").digest()
H2 = hashlib.sha256(b"hash2").digest()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def test_tlog_proof_format_matches_go_marshal() -> None:
    # Expected strings from transparency-dev/formats proof/tlog_proof_test.go (TestMarshal).
    p = TlogProof(None, 5, (H1, H2), "test checkpoint\n")
    assert p.to_text() == f"{TLOG_PROOF_HEADER}\nindex 5\n{_b64(H1)}\n{_b64(H2)}\n\ntest checkpoint\n"
    extra = b"extra information"
    q = TlogProof(extra, 10, (H1,), "checkpoint data\n")
    assert q.to_text() == (
        f"c2sp.org/tlog-proof@v1\nextra {_b64(extra)}\nindex 10\n{_b64(H1)}\n\ncheckpoint data\n"
    )
    r = TlogProof(None, 0, (), "checkpoint\n")
    assert r.to_text() == "c2sp.org/tlog-proof@v1\nindex 0\n\ncheckpoint\n"
    for proof in (p, q, r, TlogProof(b"", 1, (), "c\n")):
        assert TlogProof.parse(proof.to_text()) == proof
        assert TlogProof.parse(proof.to_text().encode()) == proof


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wrong-header\nindex 0\n\ncheckpoint\n", "does not start with"),
        ("c2sp.org/tlog-proof@v1", "does not start with"),
        ("c2sp.org/tlog-proof@v1\nextra !!notbase64!!\nindex 0\n\ncheckpoint\n", "extra data"),
        ("c2sp.org/tlog-proof@v1\nextra AB==\nindex 0\n\ncheckpoint\n", "not canonical"),
        ("c2sp.org/tlog-proof@v1\n\n\ncheckpoint\n", "index N"),
        ("c2sp.org/tlog-proof@v1\nindex notanumber\n\ncheckpoint\n", "not a decimal"),
        ("c2sp.org/tlog-proof@v1\nindex -5\n\ncheckpoint\n", "not a decimal"),
        ("c2sp.org/tlog-proof@v1\nindex 07\n\ncheckpoint\n", "leading zeros"),
        ("c2sp.org/tlog-proof@v1\nindex 18446744073709551616\n\ncheckpoint\n", "64 bits"),
        ("c2sp.org/tlog-proof@v1\nindex 0\n!!notbase64!!\n\ncheckpoint\n", "hash 0"),
        (f"c2sp.org/tlog-proof@v1\nindex 0\n{_b64(bytes(64))}\n\ncheckpoint\n", "64 bytes"),
        (f"c2sp.org/tlog-proof@v1\nindex 0\n{_b64(H1)}\n", "no blank line"),
        (f"c2sp.org/tlog-proof@v1\nindex 0\n{_b64(H1)}", "no blank line"),
        ("c2sp.org/tlog-proof@v1\nindex 0\n\n", "no checkpoint"),
        ("c2sp.org/tlog-proof@v1\nindex 0", "index N"),
        ("c2sp.org/tlog-proof@v1\nextra AAAA\n", "index N"),
        ("c2sp.org/tlog-proof@v1\r\nindex 0\n\ncheckpoint\n", "does not start with"),
        ("c2sp.org/tlog-proof@v1\nindex 0\n" + f"{_b64(H1)}\n" * 65 + "\nc\n", "more than 64"),
    ],
)
def test_tlog_proof_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        TlogProof.parse(text)


def test_tlog_proof_parse_rejects_bad_utf8() -> None:
    with pytest.raises(FormatError, match="UTF-8"):
        TlogProof.parse(b"c2sp.org/tlog-proof@v1\nindex 0\n\n\xff\n")


def test_tlog_proof_constructor_validates() -> None:
    with pytest.raises(FormatError, match="31 bytes"):
        TlogProof(None, 0, (H1[:31],), "c\n")
    with pytest.raises(FormatError, match="outside"):
        TlogProof(None, -1, (), "c\n")
    with pytest.raises(FormatError, match="empty"):
        TlogProof(None, 0, (), "")
    with pytest.raises(FormatError, match="tuple"):
        TlogProof(None, 0, [H1], "c\n")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def logged(log_signer: NoteSigner) -> tuple[MerkleTree, str]:
    tree = MerkleTree()
    for i in range(21):
        tree.append(b"entry %d" % i)
    note = sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), log_signer)
    return tree, note


def test_verify_tlog_proof_end_to_end(
    logged: tuple[MerkleTree, str],
    log_signer: NoteSigner,
    witness_key: Ed25519PrivateKey,
    witness: NoteVerifier,
) -> None:
    tree, note = logged
    cp = Checkpoint.parse_body(split_note(note)[0])
    cosigned = note + cosign_checkpoint(cp, "witness.example/w1", witness_key, 99)
    proof = TlogProof(b"ctx", 13, tuple(tree.inclusion_proof(13)), cosigned)
    parsed = TlogProof.parse(proof.to_text())
    assert parsed == proof

    verifiers = [log_signer.verifier(), witness]
    verified = verify_tlog_proof(parsed, b"entry 13", verifiers, ORIGIN)
    assert verified.checkpoint.size == 21
    assert verified.cosignature_time("witness.example/w1") == 99
    verify_tlog_proof(parsed, leaf_hash(b"entry 13"), verifiers, ORIGIN, leaf_is_hash=True)

    # Every leaf of the tree proves.
    for i in range(tree.size):
        p = TlogProof(None, i, tuple(tree.inclusion_proof(i)), note)
        verify_tlog_proof(TlogProof.parse(p.to_text()), b"entry %d" % i, verifiers, ORIGIN)


def test_verify_tlog_proof_tampering(logged: tuple[MerkleTree, str], log_signer: NoteSigner) -> None:
    tree, note = logged
    verifiers = [log_signer.verifier()]
    good = TlogProof(None, 13, tuple(tree.inclusion_proof(13)), note)
    verify_tlog_proof(good, b"entry 13", verifiers, ORIGIN)

    with pytest.raises(ProofError):
        verify_tlog_proof(good, b"entry 12", verifiers, ORIGIN)
    with pytest.raises(ProofError):
        verify_tlog_proof(good, b"entry 13", verifiers, ORIGIN, leaf_is_hash=True)
    with pytest.raises(ProofError):
        verify_tlog_proof(TlogProof(None, 12, good.proof, note), b"entry 13", verifiers, ORIGIN)
    flipped = (bytes([good.proof[0][0] ^ 1]) + good.proof[0][1:], *good.proof[1:])
    with pytest.raises(ProofError):
        verify_tlog_proof(TlogProof(None, 13, flipped, note), b"entry 13", verifiers, ORIGIN)
    with pytest.raises(ProofError, match="expected"):
        verify_tlog_proof(TlogProof(None, 13, good.proof[:-1], note), b"entry 13", verifiers, ORIGIN)
    with pytest.raises(ProofError, match="not below tree size"):
        verify_tlog_proof(TlogProof(None, 21, good.proof, note), b"entry 13", verifiers, ORIGIN)
    # The extra data is unauthenticated and does not affect verification.
    verify_tlog_proof(TlogProof(b"anything", 13, good.proof, note), b"entry 13", verifiers, ORIGIN)

    # Checkpoint problems surface as NoteError.
    with pytest.raises(NoteError, match="origin"):
        verify_tlog_proof(good, b"entry 13", verifiers, "other.example/log")
    other = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    with pytest.raises(NoteError, match="no signature from a known key"):
        verify_tlog_proof(good, b"entry 13", [other.verifier()], ORIGIN)
    # A checkpoint for a different (smaller) tree signed by another key does not verify.
    forged_cp = Checkpoint(ORIGIN, 14, tree.root(14))
    forged = TlogProof(None, 13, tuple(tree.inclusion_proof(13, 14)), other.sign(forged_cp.body()))
    with pytest.raises(NoteError):
        verify_tlog_proof(forged, b"entry 13", verifiers, ORIGIN)
    # Root swapped under the log's signature.
    swapped = note.replace(_b64(tree.root()), _b64(tree.root(14)))
    with pytest.raises(NoteError, match="does not verify"):
        verify_tlog_proof(TlogProof(None, 13, good.proof, swapped), b"entry 13", verifiers, ORIGIN)


@pytest.mark.parametrize("origin", ["", "has space", "fedseal.local/log\n", "-leading-dash", "a" * 129, "é"])
def test_a_log_origin_outside_the_rule_is_refused(origin: str) -> None:
    # One rule for the aggregator's --log-origin and a witness's; the trailing newline got
    # past the aggregator's old `match` with `$`.
    with pytest.raises(FormatError, match="log origin"):
        check_log_origin(origin)


def test_a_log_origin_inside_the_rule_is_kept() -> None:
    for origin in ("fedseal.local/log", "a", "A" * 128, "x_y-z.0/1"):
        assert check_log_origin(origin) == origin

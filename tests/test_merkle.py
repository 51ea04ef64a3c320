"""Tests for fedseal.merkle: transparency-dev vectors, a naive RFC 6962 reference, tampering."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedseal.errors import FormatError, ProofError
from fedseal.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    is_trivially_consistent,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors" / "merkle"

# The leaves the vectors were generated from (vectors/merkle/SOURCE.txt).
VECTOR_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
VECTOR_ROOT_8 = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


def _vector_files(kind: str) -> list[Path]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert files, f"no {kind} vectors found under {VECTORS}"
    return files


def _id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


@dataclass(frozen=True)
class InclusionVector:
    path: Path
    index: int
    size: int
    root: bytes
    leaf_hash: bytes
    proof: list[bytes]
    want_err: bool


@dataclass(frozen=True)
class ConsistencyVector:
    path: Path
    size1: int
    size2: int
    root1: bytes
    root2: bytes
    proof: list[bytes]
    want_err: bool


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture(params=_vector_files("inclusion"), ids=_id)
def inclusion_vector(request: pytest.FixtureRequest) -> InclusionVector:
    path: Path = request.param
    d = _load(path)
    return InclusionVector(
        path=path,
        index=d["leafIdx"],
        size=d["treeSize"],
        root=_b64(d["root"]),
        leaf_hash=_b64(d["leafHash"]),
        proof=[_b64(p) for p in d["proof"] or []],
        want_err=d["wantErr"],
    )


@pytest.fixture(params=_vector_files("consistency"), ids=_id)
def consistency_vector(request: pytest.FixtureRequest) -> ConsistencyVector:
    path: Path = request.param
    d = _load(path)
    return ConsistencyVector(
        path=path,
        size1=d["size1"],
        size2=d["size2"],
        root1=_b64(d["root1"]),
        root2=_b64(d["root2"]),
        proof=[_b64(p) for p in d["proof"] or []],
        want_err=d["wantErr"],
    )


@pytest.fixture(scope="module")
def vector_tree() -> MerkleTree:
    tree = MerkleTree()
    for leaf in VECTOR_LEAVES:
        tree.append(leaf)
    return tree


def test_inclusion_vector(inclusion_vector: InclusionVector, vector_tree: MerkleTree) -> None:
    v = inclusion_vector
    if v.want_err:
        with pytest.raises(ProofError):
            verify_inclusion(v.leaf_hash, v.index, v.size, v.proof, v.root)
        return
    verify_inclusion(v.leaf_hash, v.index, v.size, v.proof, v.root)
    if v.path.name == "happy-path.json":
        # The happy paths come from the 8 known leaves: our tree must produce them too.
        assert vector_tree.leaf_hash_at(v.index) == v.leaf_hash
        assert vector_tree.root(v.size) == v.root
        assert vector_tree.inclusion_proof(v.index, v.size) == v.proof


def test_consistency_vector(consistency_vector: ConsistencyVector, vector_tree: MerkleTree) -> None:
    v = consistency_vector
    if v.want_err:
        with pytest.raises(ProofError):
            verify_consistency(v.size1, v.size2, v.proof, v.root1, v.root2)
        return
    verify_consistency(v.size1, v.size2, v.proof, v.root1, v.root2)
    if v.path.name == "happy-path.json":
        assert vector_tree.root(v.size1) == v.root1
        assert vector_tree.root(v.size2) == v.root2
        assert vector_tree.consistency_proof(v.size1, v.size2) == v.proof


def test_vector_counts() -> None:
    # Guard against the parametrisation silently shrinking.
    assert len(_vector_files("inclusion")) == 98
    assert len(_vector_files("consistency")) == 98


# --- hashing ----------------------------------------------------------------------------


def test_hash_definitions() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = b"L" * 32, b"R" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert leaf_hash(b"").hex() == ("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")


def test_root_of_vector_leaves(vector_tree: MerkleTree) -> None:
    assert vector_tree.root() == VECTOR_ROOT_8
    assert vector_tree.size == len(vector_tree) == 8


# --- naive RFC 6962 reference ------------------------------------------------------------


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """Direct transcription of RFC 6962 §2.1, §2.1.1 and §2.1.2 over a list of leaf hashes."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves

    @functools.cache  # noqa: B019 - instances live for one test module
    def mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return self.leaves[lo]
        k = _split(n)
        return node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [self.mth(lo, hi)]
        k = _split(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, whole), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


MAX_N = 70


@pytest.fixture(scope="module")
def big() -> tuple[MerkleTree, Reference]:
    tree = MerkleTree()
    for i in range(MAX_N):
        assert tree.append(i.to_bytes(4, "big") * (i % 5)) == i
    ref = Reference([tree.leaf_hash_at(i) for i in range(MAX_N)])
    return tree, ref


def test_roots_for_every_earlier_size(big: tuple[MerkleTree, Reference]) -> None:
    tree, ref = big
    for size in range(MAX_N + 1):
        assert tree.root(size) == ref.mth(0, size), size
    assert tree.root(0) == EMPTY_ROOT


def test_inclusion_proofs_all_pairs(big: tuple[MerkleTree, Reference]) -> None:
    tree, ref = big
    checked = 0
    for size in range(1, MAX_N + 1):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref.path(index, 0, size), (index, size)
            verify_inclusion(tree.leaf_hash_at(index), index, size, proof, root)
            checked += 1
    assert checked == MAX_N * (MAX_N + 1) // 2


def test_consistency_proofs_all_pairs(big: tuple[MerkleTree, Reference]) -> None:
    tree, ref = big
    checked = 0
    for new in range(1, MAX_N + 1):
        new_root = tree.root(new)
        for old in range(1, new + 1):
            proof = tree.consistency_proof(old, new)
            assert proof == ref.subproof(old, 0, new, True), (old, new)
            verify_consistency(old, new, proof, tree.root(old), new_root)
            checked += 1
    assert checked == MAX_N * (MAX_N + 1) // 2


def test_incremental_tree_matches_fresh_trees() -> None:
    # root(size) on a grown tree equals the root of a tree that only ever had size leaves.
    grown = MerkleTree()
    for i in range(300):
        grown.append(b"leaf %d" % i)
    for size in (1, 2, 3, 127, 128, 129, 255, 256, 257, 299, 300):
        fresh = MerkleTree()
        for i in range(size):
            fresh.append(b"leaf %d" % i)
        assert grown.root(size) == fresh.root()


# --- tampering ---------------------------------------------------------------------------


def _flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


def test_inclusion_tampering(big: tuple[MerkleTree, Reference]) -> None:
    tree, _ = big
    index, size = 37, 61
    leaf, root = tree.leaf_hash_at(index), tree.root(size)
    proof = tree.inclusion_proof(index, size)
    verify_inclusion(leaf, index, size, proof, root)

    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = _flip(bad[i])
        with pytest.raises(ProofError, match="does not lead to the given root"):
            verify_inclusion(leaf, index, size, bad, root)
    with pytest.raises(ProofError):
        verify_inclusion(_flip(leaf), index, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, proof, _flip(root))
    for other_index in (index - 1, index + 1):
        with pytest.raises(ProofError):
            verify_inclusion(leaf, other_index, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size + 1, proof, tree.root(size + 1))
    with pytest.raises(ProofError, match="expected"):
        verify_inclusion(leaf, index, size, proof[:-1], root)
    with pytest.raises(ProofError, match="expected"):
        verify_inclusion(leaf, index, size, [*proof, root], root)
    with pytest.raises(ProofError, match="not below tree size"):
        verify_inclusion(leaf, size, size, proof, root)
    with pytest.raises(ProofError, match="leaf hash is 31 bytes"):
        verify_inclusion(leaf[:31], index, size, proof, root)
    with pytest.raises(ProofError, match="proof hash 0 is 33 bytes"):
        verify_inclusion(leaf, index, size, [proof[0] + b"\x00", *proof[1:]], root)


def test_consistency_tampering(big: tuple[MerkleTree, Reference]) -> None:
    tree, _ = big
    old, new = 13, 58
    old_root, new_root = tree.root(old), tree.root(new)
    proof = tree.consistency_proof(old, new)
    verify_consistency(old, new, proof, old_root, new_root)

    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = _flip(bad[i])
        with pytest.raises(ProofError, match=r"does not lead to the (old|new) root"):
            verify_consistency(old, new, bad, old_root, new_root)
    with pytest.raises(ProofError, match="old root"):
        verify_consistency(old, new, proof, _flip(old_root), new_root)
    with pytest.raises(ProofError, match="new root"):
        verify_consistency(old, new, proof, old_root, _flip(new_root))
    with pytest.raises(ProofError):
        verify_consistency(old, new, proof, new_root, old_root)
    with pytest.raises(ProofError):
        verify_consistency(old + 1, new, proof, tree.root(old + 1), new_root)
    with pytest.raises(ProofError):
        verify_consistency(old, new - 1, proof, old_root, tree.root(new - 1))
    with pytest.raises(ProofError, match="expected"):
        verify_consistency(old, new, proof[1:], old_root, new_root)
    with pytest.raises(ProofError, match="larger than new size"):
        verify_consistency(new, old, proof, new_root, old_root)
    with pytest.raises(ProofError, match="empty consistency proof"):
        verify_consistency(old, new, [], old_root, new_root)


def test_size_zero_convention() -> None:
    tree = MerkleTree()
    tree.append(b"x")
    # The vectors' convention: no proof check from size 0, even with an "empty" proof.
    with pytest.raises(ProofError, match="size 0"):
        verify_consistency(0, 1, [], EMPTY_ROOT, tree.root())
    with pytest.raises(ProofError, match="size 0"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    # Callers ask first instead.
    assert is_trivially_consistent(0)
    assert not is_trivially_consistent(1)
    with pytest.raises(ValueError, match="negative"):
        is_trivially_consistent(-1)
    with pytest.raises(ValueError, match="old_size"):
        tree.consistency_proof(0, 1)


def test_equal_sizes() -> None:
    tree = MerkleTree()
    for i in range(5):
        tree.append(bytes([i]))
    assert tree.consistency_proof(5, 5) == []
    verify_consistency(5, 5, [], tree.root(), tree.root())
    with pytest.raises(ProofError, match="roots differ"):
        verify_consistency(5, 5, [], tree.root(), tree.root(4))
    with pytest.raises(ProofError, match="not empty"):
        verify_consistency(5, 5, [tree.root()], tree.root(), tree.root())


def test_root_from_inclusion_proof() -> None:
    tree = MerkleTree()
    for i in range(11):
        tree.append(bytes([i]))
    proof = tree.inclusion_proof(6, 11)
    assert root_from_inclusion_proof(tree.leaf_hash_at(6), 6, 11, proof) == tree.root()
    with pytest.raises(ProofError, match="negative"):
        root_from_inclusion_proof(tree.leaf_hash_at(6), -1, 11, proof)


# --- tree API ----------------------------------------------------------------------------


def test_tree_argument_checks() -> None:
    tree = MerkleTree()
    assert tree.root() == EMPTY_ROOT
    with pytest.raises(ValueError, match="outside"):
        tree.inclusion_proof(0, 0)
    tree.append(b"a")
    tree.append(b"b")
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        tree.root(3)
    with pytest.raises(ValueError, match="outside"):
        tree.inclusion_proof(2, 2)
    with pytest.raises(ValueError, match="outside"):
        tree.inclusion_proof(-1)
    with pytest.raises(ValueError, match="old_size"):
        tree.consistency_proof(2, 1)
    with pytest.raises(IndexError):
        tree.leaf_hash_at(2)
    with pytest.raises(FormatError, match="31 bytes"):
        tree.append_leaf_hash(b"\x00" * 31)
    assert tree.append_leaf_hash(leaf_hash(b"c")) == 2
    assert tree.leaf_hash_at(2) == leaf_hash(b"c")
    # Defaults: proofs against the current size.
    assert tree.inclusion_proof(0) == tree.inclusion_proof(0, 3)
    assert tree.consistency_proof(1) == tree.consistency_proof(1, 3)


def test_large_tree_proofs_are_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedseal.merkle as merkle_module

    tree = MerkleTree()
    n = (1 << 16) + 12345
    for i in range(n):
        tree.append_leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest())

    calls = 0
    real = merkle_module.node_hash

    def counting(left: bytes, right: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real(left, right)

    monkeypatch.setattr(merkle_module, "node_hash", counting)
    root = tree.root(n - 7)
    proof = tree.inclusion_proof(54321, n - 7)
    cproof = tree.consistency_proof(40000, n - 7)
    # O(log n) hashing per query: well under 3 * 17 per call, never O(n).
    assert calls < 3 * 3 * 17
    monkeypatch.undo()
    verify_inclusion(tree.leaf_hash_at(54321), 54321, n - 7, proof, root)
    verify_consistency(40000, n - 7, cproof, tree.root(40000), root)

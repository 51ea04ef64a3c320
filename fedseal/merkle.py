"""RFC 9162 Merkle tree: hashing, an append-only in-memory tree, and proof verification.

Hashing (RFC 9162 §2.1.1, same as RFC 6962 §2.1)::

    leaf hash  = SHA-256(0x00 || data)
    node hash  = SHA-256(0x01 || left || right)
    empty root = SHA-256("")

A tree of n > 1 leaves splits at k, the largest power of two smaller than n.

Proof generation follows RFC 6962 §2.1.1 (audit paths, ``PATH``) and §2.1.2 (consistency
proofs, ``PROOF``/``SUBPROOF``); verification follows RFC 9162 §2.1.3.2 (inclusion) and
§2.1.4.2 (consistency). Verification never answers with a bool: it returns ``None`` or
raises :class:`~fedseal.errors.ProofError` naming what failed.

Storage: :class:`MerkleTree` keeps, for every level k, the hashes of the complete,
aligned subtrees of 2**k leaves built so far (level 0 holds the leaf hashes), packed in
one ``bytearray`` per level. Every subtree of any earlier tree size is either one of those
stored hashes or lies on that size's ragged right edge, so a root or a proof for any size
costs O(log n) hash operations, and an append costs amortised O(1).

Consistency from size 0 (a convention, pick one): the transparency-dev test vectors
reject every consistency check whose old size is 0 (even 0 -> 0), while C2SP witnesses
(tlog-witness) accept an old size of 0 with an empty proof, since the empty tree is a
prefix of every tree. :func:`verify_consistency` follows the vectors and raises
``ProofError`` when ``old_size == 0``; a caller that tracks a log from its empty state
must first ask :func:`is_trivially_consistent` and skip the proof check when it says so.
The same applies to generation: :meth:`MerkleTree.consistency_proof` refuses
``old_size == 0`` (RFC 6962 §2.1.2 defines proofs only for 0 < m <= n).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fedseal.errors import FormatError, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "is_trivially_consistent",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The split point k of RFC 6962 §2.1: the largest power of two strictly less than n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def is_trivially_consistent(old_size: int) -> bool:
    """Say whether any tree is consistent with a tree of ``old_size`` without a proof.

    Only the empty tree (size 0) qualifies: it is a prefix of every tree. Callers check
    this before :func:`verify_consistency`, which rejects old size 0 (see module docstring).
    """
    if old_size < 0:
        raise ValueError(f"tree size {old_size} is negative")
    return old_size == 0


class MerkleTree:
    """An append-only RFC 9162 Merkle tree held in memory.

    Any earlier size of the tree can be queried: ``root(size)``, ``inclusion_proof(index,
    size)`` and ``consistency_proof(old, new)`` all cost O(log n) hashes. Not thread-safe:
    callers serialise appends with reads.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        # _levels[k] packs the hashes of the complete subtrees of 2**k leaves, in order.
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def append(self, leaf_data: bytes) -> int:
        """Append a leaf's data (hashed here as a leaf) and return its index."""
        return self.append_leaf_hash(leaf_hash(leaf_data))

    def append_leaf_hash(self, h: bytes) -> int:
        """Append an already computed leaf hash and return its index."""
        if len(h) != HASH_SIZE:
            raise FormatError(f"leaf hash is {len(h)} bytes, expected {HASH_SIZE}")
        index = self._size
        self._levels[0] += h
        self._size += 1
        # Each time a level gains its second-of-a-pair hash, the pair completes a subtree one
        # level up; there are at most log2(n) such carries and amortised one per append.
        level, count, current = 0, self._size, bytes(h)
        while count % 2 == 0:
            stored = self._levels[level]
            left = bytes(stored[-2 * HASH_SIZE : -HASH_SIZE])
            current = node_hash(left, current)
            level += 1
            count //= 2
            if level == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level] += current
        return index

    def leaf_hash_at(self, index: int) -> bytes:
        """Return the leaf hash stored at ``index``."""
        if not 0 <= index < self._size:
            raise IndexError(f"leaf index {index} is outside the tree of size {self._size}")
        return self._perfect(index, 1)

    def root(self, size: int | None = None) -> bytes:
        """Return the root hash of the tree of the first ``size`` leaves (default: all)."""
        size = self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return self._range_root(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the audit path for leaf ``index`` in the tree of ``size`` leaves.

        RFC 6962 §2.1.1 ``PATH(m, D[n])``, ordered from the leaf's sibling up to the
        root's child.
        """
        size = self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is outside the tree of size {size}")
        proof: list[bytes] = []
        lo, hi = 0, size
        # Walk from the root down; each step records the sibling of the half holding index.
        # Only a sibling on the ragged right edge is not a stored hash, and the walk meets
        # at most one such sibling (after going left it stays inside a complete subtree).
        while hi - lo > 1:
            k = _largest_power_of_two_below(hi - lo)
            if index < lo + k:
                proof.append(self._range_root(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_root(lo, lo + k))
                lo += k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the consistency proof between the trees of ``old_size`` and ``new_size``.

        RFC 6962 §2.1.2 ``PROOF(m, D[n])``; requires 0 < old_size <= new_size (see the
        module docstring for old size 0). Equal sizes give an empty proof.
        """
        new_size = self._check_size(new_size)
        if not 0 < old_size <= new_size:
            raise ValueError(
                f"consistency proof needs 0 < old_size <= new_size, got {old_size} and {new_size}"
            )
        proof: list[bytes] = []
        lo, hi, m = 0, new_size, old_size
        whole_old_tree = True  # SUBPROOF's flag b: is D[lo:lo+m] the whole old tree?
        while True:
            n = hi - lo
            if m == n:
                if not whole_old_tree:
                    proof.append(self._range_root(lo, hi))
                break
            k = _largest_power_of_two_below(n)
            if m <= k:
                proof.append(self._range_root(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_root(lo, lo + k))
                lo += k
                m -= k
                whole_old_tree = False
        proof.reverse()
        return proof

    # -- internals -------------------------------------------------------------------

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise ValueError(f"tree size {size} is outside 0..{self._size}")
        return size

    def _perfect(self, start: int, width: int) -> bytes:
        """Stored hash of the complete subtree of ``width`` (a power of two) leaves at ``start``."""
        level = width.bit_length() - 1
        offset = (start >> level) * HASH_SIZE
        return bytes(self._levels[level][offset : offset + HASH_SIZE])

    def _range_root(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a node of some tree: lo is aligned to the node's width.

        The range splits into complete subtrees of strictly decreasing power-of-two widths;
        by RFC 6962's split rule the root is node(P1, node(P2, ... Pm)).
        """
        parts: list[bytes] = []
        pos, remaining = lo, hi - lo
        while remaining:
            width = 1 << (remaining.bit_length() - 1)
            parts.append(self._perfect(pos, width))
            pos += width
            remaining -= width
        h = parts.pop()
        while parts:
            h = node_hash(parts.pop(), h)
        return h


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def _inclusion_proof_length(index: int, size: int) -> int:
    """Expected audit path length: the inner path plus the ragged-border part."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner + border


def root_from_inclusion_proof(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Compute the root that ``proof`` implies for ``leaf_hash`` at ``index`` in ``size``.

    RFC 9162 §2.1.3.2 steps 1-4; raises ProofError if the proof cannot be valid for any
    root (index out of range, wrong length, wrong hash sizes).
    """
    if index < 0 or size < 0:
        raise ProofError(f"negative leaf index {index} or tree size {size}")
    if index >= size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    _check_hash(leaf_hash, "leaf hash")
    expected = _inclusion_proof_length(index, size)
    if len(proof) != expected:
        raise ProofError(
            f"inclusion proof has {len(proof)} hashes, expected {expected} for index {index} in size {size}"
        )
    fn, sn = index, size - 1
    r = leaf_hash
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion proof hash {i}")
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                # Skip the levels where this node has no right sibling (ragged right edge).
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2. Returns None on success; raises ProofError otherwise.
    """
    computed = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if not hmac.compare_digest(computed, root):
        raise ProofError(f"inclusion proof for index {index} in size {size} does not lead to the given root")


def verify_consistency(
    old_size: int,
    new_size: int,
    proof: Sequence[bytes],
    old_root: bytes,
    new_root: bytes,
) -> None:
    """Check that the tree ``old_root`` of ``old_size`` is a prefix of ``new_root``'s tree.

    RFC 9162 §2.1.4.2. Returns None on success; raises ProofError otherwise. Old size 0
    is rejected: callers ask :func:`is_trivially_consistent` first (module docstring).
    """
    if old_size < 0 or new_size < 0:
        raise ProofError(f"negative tree size ({old_size}, {new_size})")
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == 0:
        raise ProofError(
            "consistency proof from size 0 is not checked: the empty tree is trivially "
            "consistent (use is_trivially_consistent)"
        )
    if old_size == new_size:
        if proof:
            raise ProofError(f"sizes are equal ({old_size}) but the proof is not empty")
        # Roots are compared as given, without a length check: the transparency-dev vectors
        # accept equal placeholder roots here, and equality is all that can be checked.
        if not hmac.compare_digest(old_root, new_root):
            raise ProofError(f"sizes are equal ({old_size}) but the roots differ")
        return
    if not proof:
        raise ProofError(f"empty consistency proof from size {old_size} to {new_size}")
    for i, p in enumerate(proof):
        _check_hash(p, f"consistency proof hash {i}")

    # Expected length: the inclusion path of leaf old_size-1, minus the levels inside the
    # largest complete subtree ending at old_size, plus that subtree's root unless it is
    # the whole old tree (old_size a power of two), whose root the verifier already has.
    shift = (old_size & -old_size).bit_length() - 1
    inner = ((old_size - 1) ^ (new_size - 1)).bit_length()
    border = ((old_size - 1) >> inner).bit_count()
    old_is_power_of_two = old_size == 1 << shift
    expected = (inner - shift) + border + (0 if old_is_power_of_two else 1)
    if len(proof) != expected:
        raise ProofError(
            f"consistency proof has {len(proof)} hashes, expected {expected} "
            f"from size {old_size} to {new_size}"
        )

    path = list(proof)
    if old_is_power_of_two:
        # The old tree is itself a complete subtree of the new one: its root seeds the walk.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    if not hmac.compare_digest(fr, old_root):
        raise ProofError(f"consistency proof does not lead to the old root (size {old_size})")
    if not hmac.compare_digest(sr, new_root):
        raise ProofError(f"consistency proof does not lead to the new root (size {new_size})")

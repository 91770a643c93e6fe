"""The Merkle tree against a second implementation written here from RFC 6962 section 2.1 alone.

Nothing of :mod:`stella.evidence.merkle` is used to compute the expected values: ``mth``, ``path`` and
``proof`` below transcribe the RFC's recursive definitions, and ``root_from_path`` walks a path with the same
recursion instead of RFC 9162's bit arithmetic the project uses.
"""

from __future__ import annotations

import hashlib

import pytest

from stella.evidence import merkle


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 6962 2.1."""
    n = len(d)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + d[0])
    k = _k(n)
    return _h(b"\x01" + mth(d[:k]) + mth(d[k:]))


def path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 2.1.1."""
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 6962 2.1.2."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def root_from_path(m: int, n: int, leaf: bytes, proof: list[bytes]) -> bytes:
    """Recompute the root from a leaf hash and PATH(m, D[n]) by the RFC's recursion."""
    if n == 1:
        assert not proof
        return leaf
    k = _k(n)
    if m < k:
        return _h(b"\x01" + root_from_path(m, k, leaf, proof[:-1]) + proof[-1])
    return _h(b"\x01" + proof[-1] + root_from_path(m - k, n - k, leaf, proof[:-1]))


def _data(n: int) -> list[bytes]:
    return [f"packet {i}".encode() for i in range(n)]


def _stored(d: list[bytes]) -> dict[merkle.Node, bytes]:
    """Every perfect subtree hash, as the database trigger stores them, built by appending leaf after leaf."""
    nodes: dict[merkle.Node, bytes] = {}
    for index, data in enumerate(d):
        siblings = {node: nodes[node] for node in merkle.left_siblings_needed(index)}
        nodes.update(merkle.parents_completed(index, merkle.leaf_hash(data), siblings))
    return nodes


@pytest.mark.parametrize("n", [*range(0, 34), 63, 64, 65, 100])
def test_roots_match_the_rfc(n: int) -> None:
    d = _data(n)
    assert merkle.root_from_leaves([merkle.leaf_hash(x) for x in d]) == mth(d)
    if n:
        stored = _stored(d)
        assert merkle.roots_of([(0, n)], stored.__getitem__) == [mth(d)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 31, 33])
def test_inclusion_proofs_match_the_rfc_and_verify(n: int) -> None:
    d = _data(n)
    stored = _stored(d)
    root = mth(d)
    for m in range(n):
        proof = merkle.roots_of(merkle.inclusion_ranges(m, n), stored.__getitem__)
        assert proof == path(m, d)
        leaf = merkle.leaf_hash(d[m])
        assert root_from_path(m, n, leaf, proof) == root
        merkle.verify_inclusion(m, n, leaf, proof, root)
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(m, n, merkle.leaf_hash(b"forged"), proof, root)
        if proof:
            with pytest.raises(merkle.ProofError):
                merkle.verify_inclusion(m, n, leaf, proof[:-1], root)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 21])
def test_consistency_proofs_match_the_rfc_and_verify(n: int) -> None:
    d = _data(n)
    stored = _stored(d)
    for m in range(1, n + 1):
        ranges = merkle.consistency_ranges(m, n)
        proof = merkle.roots_of(ranges, stored.__getitem__) if m < n else []
        assert proof == (subproof(m, d, True) if m < n else [])
        merkle.verify_consistency(m, n, mth(d[:m]), mth(d), proof)


def test_a_rewritten_history_fails_the_consistency_proof() -> None:
    old = _data(11)
    rewritten = [*old[:4], b"packet 4, rewritten", *old[5:], b"packet 11", b"packet 12"]
    proof = subproof(11, rewritten, True)
    with pytest.raises(merkle.ProofError, match="older root"):
        merkle.verify_consistency(11, 13, mth(old), mth(rewritten), proof)
    shortened = old[:9]  # the two newest packets deleted, then two new ones appended
    regrown = [*shortened, b"other 9", b"other 10", b"other 11"]
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(11, 12, mth(old), mth(regrown), subproof(11, regrown, True))


@pytest.mark.parametrize(("n", "first", "last"), [(1, 0, 1), (9, 0, 9), (9, 3, 7), (17, 16, 17), (33, 5, 6)])
def test_a_range_and_the_subtrees_around_it_recompute_the_root(n: int, first: int, last: int) -> None:
    d = _data(n)
    stored = _stored(d)
    ranges = merkle.outside_ranges(n, first, last)
    outside = dict(zip(ranges, merkle.roots_of(ranges, stored.__getitem__), strict=True))
    leaves = [merkle.leaf_hash(x) for x in d[first:last]]
    assert merkle.range_root(n, first, leaves, outside) == mth(d)
    if first > 0 or last < n:
        # Dropping the subtree of a deleted packet cannot be hidden: the root cannot be recomputed without it.
        with pytest.raises(merkle.ProofError):
            merkle.range_root(n, first, leaves, dict(list(outside.items())[1:]))
    changed = [*leaves[:-1], merkle.leaf_hash(b"changed")]
    assert merkle.range_root(n, first, changed, outside) != mth(d)

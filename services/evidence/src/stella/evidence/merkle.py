"""RFC 6962 Merkle trees over a tenant's packets: hashing, proofs and their verification.

Leaf ``i`` of a tenant's tree is packet ``i + 1`` of its chain; the leaf's data is the packet's signed DSSE
payload (the in-toto statement bytes, base64-decoded from the envelope), so the tree commits to exactly what
was signed. Hashing is RFC 6962 section 2.1 (SHA-256)::

    leaf hash  = SHA-256(0x00 || leaf data)
    node hash  = SHA-256(0x01 || left || right)
    MTH({})    = SHA-256()                         (the empty tree)
    MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n]))    with k the largest power of two smaller than n

The service stores the hash of every *perfect* subtree (``level``, ``index``: the ``2**level`` leaves from
``index * 2**level``). Every subtree the RFC's recursion visits is a perfect subtree or splits into a run of
them, so roots and proofs for any tree size are computed from stored hashes with one query (see
:func:`perfect_cover`), and nothing is recomputed from the leaves.

The proofs (inclusion ``PATH`` and consistency ``PROOF`` of RFC 6962 section 2.1.1/2.1.2) and their
verification (the algorithms of RFC 9162 section 2.1.3.2 and 2.1.4.2) need only this module and ``hashlib``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

HASH_SIZE: Final[int] = 32
"""Bytes of a SHA-256 hash."""

EMPTY_ROOT: Final[bytes] = hashlib.sha256(b"").digest()
"""Root hash of the empty tree."""

Range = tuple[int, int]
"""A half-open range of leaf indexes ``[start, end)``."""

Node = tuple[int, int]
"""A perfect subtree: ``(level, index)``, the ``2**level`` leaves from ``index * 2**level``."""


class ProofError(ValueError):
    """A proof does not verify, or its arguments are out of range."""


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 6962 hash of a leaf."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(size: int) -> int:
    """Return the largest power of two smaller than ``size`` (``size`` > 1)."""
    return 1 << ((size - 1).bit_length() - 1)


def perfect_cover(start: int, end: int) -> list[Node]:
    """The perfect subtrees that make up ``[start, end)``, left to right, largest first.

    For every range the RFC 6962 recursion visits, the root of the range is the right fold of these nodes'
    hashes with :func:`node_hash` (see :func:`fold`).
    """
    nodes: list[Node] = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while (1 << level) > end - start:
            level -= 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """Combine the hashes of a range's perfect cover (left to right) into the range's root."""
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = node_hash(left, root)
    return root


def parents_completed(index: int, leaf: bytes, left_siblings: Mapping[Node, bytes]) -> list[tuple[Node, bytes]]:
    """The perfect subtrees that appending leaf ``index`` completes, with their hashes, the leaf first.

    Args:
        index: Index of the new leaf.
        leaf: Its leaf hash.
        left_siblings: The hashes of the nodes :func:`left_siblings_needed` names for ``index``.
    """
    completed: list[tuple[Node, bytes]] = [((0, index), leaf)]
    level, position, current = 0, index, leaf
    while position & 1:
        current = node_hash(left_siblings[(level, position - 1)], current)
        level, position = level + 1, position >> 1
        completed.append(((level, position), current))
    return completed


def left_siblings_needed(index: int) -> list[Node]:
    """The stored nodes whose hashes :func:`parents_completed` needs to append leaf ``index``."""
    needed: list[Node] = []
    level, position = 0, index
    while position & 1:
        needed.append((level, position - 1))
        level, position = level + 1, position >> 1
    return needed


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The ranges whose roots form the inclusion proof of leaf ``index`` in a tree of ``size`` (RFC 6962 PATH).

    Raises:
        ProofError: When ``index`` is not a leaf of the tree.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    ranges: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()  # the proof lists siblings from the leaf up
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[Range]:
    """The ranges whose roots form the consistency proof from ``old_size`` to ``new_size`` (RFC 6962 PROOF).

    Raises:
        ProofError: When ``old_size`` is not between 1 and ``new_size``.
    """
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from a tree of {old_size} to one of {new_size} leaves")
    ranges: list[Range] = []
    start, end, complete = 0, new_size, True
    m = old_size
    while True:
        if m == end - start:
            if not complete:
                ranges.append((start, end))
            break
        k = split_point(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, complete = start + k, m - k, False
    ranges.reverse()
    return ranges


def nodes_for(ranges: Iterable[Range]) -> set[Node]:
    """Every stored node needed to compute the roots of ``ranges``."""
    return {node for start, end in ranges for node in perfect_cover(start, end)}


def roots_of(ranges: Iterable[Range], lookup: Callable[[Node], bytes]) -> list[bytes]:
    """The roots of ``ranges`` from stored perfect subtree hashes (``lookup`` raises ``KeyError`` if missing)."""
    return [fold([lookup(node) for node in perfect_cover(start, end)]) for start, end in ranges]


def root_from_leaves(leaves: Sequence[bytes]) -> bytes:
    """The root of a tree whose leaf hashes are ``leaves``, in ``O(n)`` hashing and ``O(log n)`` memory."""
    stack: list[tuple[int, bytes]] = []  # (level, hash) of the perfect subtrees of the prefix so far
    for leaf in leaves:
        level, current = 0, leaf
        while stack and stack[-1][0] == level:
            current = node_hash(stack.pop()[1], current)
            level += 1
        stack.append((level, current))
    return fold([h for _, h in stack])


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with ``root`` (RFC 9162 2.1.3.2).

    Raises:
        ProofError: When it is not.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("the inclusion proof does not lead to the root hash")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree of ``old_size`` with ``old_root`` is a prefix of the one of ``new_size`` with
    ``new_root`` (RFC 9162 section 2.1.4.2).

    Raises:
        ProofError: When it is not (a rewritten history), or the proof is malformed.
    """
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency from a tree of {old_size} to one of {new_size} leaves")
    if old_size == new_size:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("two checkpoints of the same size have different root hashes")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node of the path
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofError("the consistency proof does not lead to the older root: history was rewritten")
    if sr != new_root:
        raise ProofError("the consistency proof does not lead to the newer root")


def range_root(size: int, first: int, leaves: Sequence[bytes], outside: Mapping[Range, bytes]) -> bytes:
    """The root of a tree of ``size`` leaves from leaves ``[first, first + len(leaves))`` and the roots of the
    subtrees around them (as :func:`outside_ranges` names them).

    Raises:
        ProofError: When a needed outside root is missing.
    """
    last = first + len(leaves)

    def mth(start: int, end: int) -> bytes:
        if end <= first or start >= last:
            try:
                return outside[(start, end)]
            except KeyError:
                raise ProofError(f"the root of leaves {start}..{end - 1} is missing") from None
        if end - start == 1:
            return leaves[start - first]
        if start >= first and end <= last:
            return root_from_leaves(leaves[start - first : end - first])
        k = split_point(end - start)
        return node_hash(mth(start, start + k), mth(start + k, end))

    if size == 0:
        return EMPTY_ROOT
    return mth(0, size)


def outside_ranges(size: int, first: int, last: int) -> list[Range]:
    """The maximal subtrees of the RFC 6962 recursion over ``size`` leaves that hold none of ``[first, last)``.

    With their roots and the leaves ``[first, last)``, :func:`range_root` recomputes the tree's root.
    """
    found: list[Range] = []

    def walk(start: int, end: int) -> None:
        if end <= first or start >= last:
            found.append((start, end))
            return
        if end - start == 1 or (start >= first and end <= last):
            return
        k = split_point(end - start)
        walk(start, start + k)
        walk(start + k, end)

    if size > 0:
        walk(0, size)
    return found

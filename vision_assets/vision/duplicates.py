"""Duplicate groups: exact copies by sha256, near-exact copies by perceptual-hash Hamming distance.

Comparing every pair is O(n²), too slow at 100k images. Multi-index hashing finds the candidates instead: split the
64-bit pHash into `max_distance + 1` chunks; by the pigeonhole principle two hashes within `max_distance` bits of each
other agree exactly on at least one chunk, so only hashes sharing a chunk are compared.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

HASH_BITS = 64


class _Groups:
    """Union-find over keys."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)

    def groups(self) -> list[list[str]]:
        members: dict[str, list[str]] = defaultdict(list)
        for key in self.parent:
            members[self.find(key)].append(key)
        return sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda g: g[0])


def exact_groups(sha256_by_key: Mapping[str, str]) -> list[list[str]]:
    by_hash: dict[str, list[str]] = defaultdict(list)
    for key, digest in sha256_by_key.items():
        if digest:
            by_hash[digest].append(key)
    return sorted((sorted(keys) for keys in by_hash.values() if len(keys) > 1), key=lambda g: g[0])


def near_groups(phash_by_key: Mapping[str, str], max_distance: int) -> list[list[str]]:
    """Groups of images whose pHashes (16 hex digits) are within `max_distance` bits, linked transitively."""
    hashes = {key: int(value, 16) for key, value in phash_by_key.items() if value}
    chunks = max_distance + 1
    bounds = [(HASH_BITS * i // chunks, HASH_BITS * (i + 1) // chunks) for i in range(chunks)]
    buckets: dict[tuple[int, int], list[str]] = defaultdict(list)
    for key, value in hashes.items():
        for index, (low, high) in enumerate(bounds):
            buckets[(index, (value >> low) & ((1 << (high - low)) - 1))].append(key)
    groups = _Groups()
    compared: set[tuple[str, str]] = set()
    for members in buckets.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                pair = (a, b) if a < b else (b, a)
                if pair in compared:
                    continue
                compared.add(pair)
                if bin(hashes[a] ^ hashes[b]).count("1") <= max_distance:
                    groups.union(a, b)
    return groups.groups()

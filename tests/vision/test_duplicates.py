import random
import time

from vision_assets.vision.duplicates import exact_groups, near_groups


def flip(value: str, bits: list[int]) -> str:
    number = int(value, 16)
    for bit in bits:
        number ^= 1 << bit
    return f"{number:016x}"


def test_exact_groups():
    assert exact_groups({"a": "x", "b": "y", "c": "x", "d": None, "e": "y", "f": "z"}) == [["a", "c"], ["b", "e"]]


def test_near_groups_respect_the_distance_and_link_transitively():
    base = "c3a5f00f0ff0a5c3"
    hashes = {"a": base, "b": flip(base, [1]), "c": flip(base, [1, 40]), "far": flip(base, [0, 9, 18, 27, 36, 45])}
    assert near_groups(hashes, 0) == []
    assert near_groups(hashes, 1) == [["a", "b", "c"]]  # a~b (1 bit), b~c (1 bit): one group
    assert near_groups({"a": base, "same": base}, 0) == [["a", "same"]]


def test_agrees_with_brute_force():
    rng = random.Random(7)
    hashes = {f"k{i}": f"{rng.getrandbits(64):016x}" for i in range(300)}
    hashes |= {f"copy{i}": flip(hashes[f"k{i}"], rng.sample(range(64), rng.randint(0, 3))) for i in range(40)}
    found = {frozenset(g) for g in near_groups(hashes, 3)}
    keys = sorted(hashes)
    pairs = {(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]
             if bin(int(hashes[a], 16) ^ int(hashes[b], 16)).count("1") <= 3}
    for a, b in pairs:
        assert any(a in g and b in g for g in found)
    assert all(len(g) > 1 for g in found)


def test_fast_at_catalogue_scale():
    rng = random.Random(1)
    hashes = {f"k{i}": f"{rng.getrandbits(64):016x}" for i in range(100_000)}
    started = time.perf_counter()
    near_groups(hashes, 2)
    assert time.perf_counter() - started < 20  # brute force would compare 5e9 pairs

"""Object key -> image id: readable, stable, and safe everywhere it is shown or parsed.

Image ids are keys of the `images` registry (a Dagster dynamic partitions definition no asset is partitioned by),
end up in URLs and in the UI's tables, and the results store uses them as path segments. (They were partition keys
when every image was a partition; the name of this module and of `partition_key_for` stayed.) So an image id keeps
the object key when it is already plain, and
otherwise becomes a readable slug plus `~` and a hash of the raw key. `~` never occurs in a plain key, so a
slugged key can never collide with a plain one. The mapping back to the object is stored by the sensor
(`RegisteredImage`), never reconstructed from the partition key.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_LENGTH = 120
HASH_CHARS = 10
_SUFFIX_LENGTH = 1 + HASH_CHARS

# Letters and digits of any script, plus a few separators that mean nothing to the UI's selection grammar.
_PLAIN_SEGMENT = re.compile(r"^[\w\-.@+=()]+$")
_UNSAFE_RUN = re.compile(r"[^\w\-.@+=()]+")


def _is_plain_segment(segment: str) -> bool:
    return bool(_PLAIN_SEGMENT.match(segment)) and ".." not in segment and not segment.startswith(".")


def _is_plain(key: str) -> bool:
    if not key or len(key) > MAX_LENGTH or key != unicodedata.normalize("NFC", key):
        return False
    return all(_is_plain_segment(segment) for segment in key.split("/"))


def _slug_segment(segment: str) -> str:
    slug = _UNSAFE_RUN.sub("_", segment)
    slug = re.sub(r"\.{2,}", ".", slug).strip("._")
    return slug


def object_key_hash(object_key: str) -> str:
    return hashlib.sha256(object_key.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def partition_key_for(object_key: str) -> str:
    """The partition key for an object key (relative to the store prefix). Deterministic."""
    if _is_plain(object_key):
        return object_key
    normalized = unicodedata.normalize("NFC", object_key)
    segments = [_slug_segment(s) for s in normalized.split("/")]
    slug = "/".join(s for s in segments if s) or "object"
    budget = MAX_LENGTH - _SUFFIX_LENGTH
    if len(slug) > budget:
        # Keep the tail: the file name is the part people recognise.
        slug = slug[-budget:].lstrip("/._-") or "object"
    return f"{slug}~{object_key_hash(object_key)}"


def is_safe_partition_key(partition_key: str) -> bool:
    """True for keys this module can produce; used to assert the invariant in tests and at registration."""
    if "~" in partition_key:
        slug, _, digest = partition_key.rpartition("~")
        return bool(re.fullmatch(r"[0-9a-f]{%d}" % HASH_CHARS, digest)) and (slug == "" or _is_plain(slug))
    return _is_plain(partition_key)

"""One contract, both stores: S3 (moto's server over HTTP) and a local folder."""

import os
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import image_bytes
from vision_assets.vision.storage.object_store import FolderObjectStore, ObjectMissing, ObjectTooLarge, S3ObjectStore


def test_put_get_head_roundtrip(object_store):
    data = image_bytes()
    object_store.put("cam1/a b.png", data, "image/png")
    described, body = object_store.get("cam1/a b.png")
    assert body == data
    assert described.size == len(data)
    assert described.etag and described.last_modified.tzinfo is not None
    assert object_store.head("cam1/a b.png") == described


def test_rewrite_changes_the_etag(object_store):
    object_store.put("k.png", b"one")
    first = object_store.head("k.png")
    object_store.put("k.png", b"two, longer")
    assert object_store.head("k.png").etag != first.etag


def test_an_unchanged_object_is_copied_within_the_store_and_a_changed_or_gone_one_is_not(object_store):
    object_store.put("uploads/a.jpg", b"the upload")
    version, _ = object_store.get("uploads/a.jpg")
    assert object_store.copy_if_unchanged(version, "results/a/working.jpg")
    assert object_store.get("results/a/working.jpg")[1] == b"the upload"
    object_store.put("uploads/a.jpg", b"replaced since")  # the upload replaced: the copy keeps what it copied
    assert object_store.get("results/a/working.jpg")[1] == b"the upload"
    assert not object_store.copy_if_unchanged(version, "results/a/working-2.jpg")  # not the version read
    object_store.delete("uploads/a.jpg")
    assert not object_store.copy_if_unchanged(version, "results/a/working-3.jpg")  # gone
    assert object_store.get("results/a/working.jpg")[1] == b"the upload"  # deleting the upload leaves the copy
    assert [o.key for o in object_store.list("results/")] == ["results/a/working.jpg"]  # nothing half-made left
    odd = "uploads/été #1?%20 & co+.jpg"
    object_store.put(odd, b"odd key")
    assert object_store.copy_if_unchanged(object_store.head(odd), "results/odd/working.jpg")
    assert object_store.get("results/odd/working.jpg")[1] == b"odd key"


def test_missing_objects(object_store):
    with pytest.raises(ObjectMissing):
        object_store.get("nope.jpg")
    with pytest.raises(ObjectMissing):
        object_store.head("nope.jpg")


def test_too_large_is_refused_before_reading(object_store):
    object_store.put("big.bin", b"x" * 5000)
    with pytest.raises(ObjectTooLarge) as error:
        object_store.get("big.bin", max_bytes=1000)
    assert error.value.size == 5000


def test_zero_byte_object(object_store):
    object_store.put("empty.jpg", b"")
    described, body = object_store.get("empty.jpg", max_bytes=100)
    assert body == b"" and described.size == 0


def test_listing_follows_pagination_past_1000(object_store):
    keys = [f"many/{i:05d}.jpg" for i in range(1234)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: object_store.put(k, b"x"), keys))
    object_store.put("other/not-listed.jpg", b"x")
    listed = [o.key for o in object_store.list("many/")]
    assert sorted(listed) == keys


def test_slices_resume_in_key_order_whatever_the_folders(object_store):
    # Folders and files interleave in key order: `a.jpg` < `a/x.jpg` < `a0.jpg` ('.' < '/' < '0'), which a
    # folder-by-folder walk does not give; each slice starts just after the last key of the one before.
    keys = ["a.jpg", "a/x.jpg", "a/y/z.jpg", "a0.jpg", "b b.jpg", "b/1.jpg", "ü.jpg"] + [f"m/{i:04d}.jpg" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: object_store.put(f"up/{k}", b"x"), keys))
    object_store.put("upper.jpg", b"x")  # outside the prefix `up/`
    listed, after, slices = [], "", 0
    while True:
        page = object_store.list_slice("up/", after, 400)
        assert len(page.objects) <= 400
        listed += [o.key for o in page.objects]
        slices += 1
        if not page.truncated:
            break
        after = page.last_key
    assert listed == sorted(f"up/{k}" for k in keys) and slices == 3
    assert [o.key for o in object_store.list_slice("up/", "up/a/x.jpg", 2).objects] == ["up/a/y/z.jpg", "up/a0.jpg"]
    assert object_store.list_slice("up/", "up/ü.jpg", 10) == type(page)([], False)


def test_odd_keys_roundtrip(object_store):
    for key in ["sp ace/ü.jpg", "comma,key.jpg", "dots...jpg", "a+b=c(1).jpg"]:
        object_store.put(key, key.encode())
        assert object_store.get(key)[1] == key.encode()
    assert {"sp ace/ü.jpg", "comma,key.jpg"} <= {o.key for o in object_store.list()}


HOSTILE_KEYS = [
    "caf\u00e9.jpg", "cafe\u0301.jpg",  # NFC / NFD twins: two different objects
    "\u202egpj.evil\u202c.jpg", "\u200fmarks\u200e.jpg",  # right-to-left override and marks
    "bell\x07.jpg", "tab\there.jpg", "esc\x1b[31m.jpg",  # control characters
    "hash#frag.jpg", "question?.jpg", "q?a=1&b=2.jpg", "percent%2Fslash.jpg", "100%.jpg", "%E2%82%AC.jpg",
    "sp ace .jpg ", "semi;colon.jpg", "quote\"s'.jpg", "<angle>.jpg", "back\\slash.jpg",
    ("k" * 99 + "/") * 9 + "k" * 96 + ".jpg",  # 1,000 bytes, in folders (a file name stops at 255)
]
# No file can be named so: traversal, empty and dot segments, a 1,000-byte name.
S3_ONLY_KEYS = ["../../etc/passwd.jpg", "a/./b.jpg", "x/../..", "a/../b/x.jpg", "a//b.jpg", "/leading.jpg", "k" * 996 + ".jpg"]
FOLDER_ONLY_KEYS = ["new\nline.jpg"]  # legal in S3 too, but moto's server answers 404 to it


def key_of_uri(store, uri: str) -> str:
    """What any URI parser makes of the store's URI: the key it names."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        assert parts.netloc == store.bucket and not parts.query and not parts.fragment
        return unquote(parts.path.removeprefix("/"))
    assert parts.scheme == "file" and not parts.query and not parts.fragment
    return unquote(parts.path, errors="surrogateescape").removeprefix(f"{store.root}/")


def test_hostile_keys_roundtrip_through_the_store_and_their_uris(object_store):
    keys = HOSTILE_KEYS + (S3_ONLY_KEYS if isinstance(object_store, S3ObjectStore) else FOLDER_ONLY_KEYS)
    for key in keys:
        object_store.put(key, key.encode())
        assert object_store.get(key)[1] == key.encode(), ascii(key)
        uri = object_store.uri(key)
        assert key_of_uri(object_store, uri) == key, ascii(key)
        # Nothing that resolves dot segments (urljoin, a browser) can make it name another object.
        assert not {".", ".."} & set(urlsplit(uri).path.split("/")), uri
    assert set(keys) <= {o.key for o in object_store.list()}


def test_uris(object_store):
    uri = object_store.uri("x/y.jpg")
    assert uri.startswith("s3://") or uri.startswith("file://")
    assert uri.endswith("x/y.jpg")
    assert object_store.uri("my photo#1?.jpg").endswith("my%20photo%231%3F.jpg")


def test_folder_store_refuses_keys_outside_its_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    store = FolderObjectStore(root)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"s")
    store.put("inside/photo.jpg", b"p")
    (root / "out").symlink_to(outside)  # a folder that leads out
    (root / "inside" / "link.jpg").symlink_to(outside / "secret.jpg")  # a file that does
    (root / "alias").symlink_to(root / "inside")  # a folder that stays in
    for _ in range(2):  # the second time from the folders the store resolved the first time
        for key in ["../escape.jpg", "inside/../../escape.jpg", "out/secret.jpg", "inside/link.jpg", "..", "out/"]:
            with pytest.raises(ValueError, match="outside the store folder"):
                store.put(key, b"x")
        assert store.get("alias/photo.jpg")[1] == store.get("inside/photo.jpg")[1] == b"p"
    assert not (tmp_path / "escape.jpg").exists() and (outside / "secret.jpg").read_bytes() == b"s"


def test_folder_store_writes_atomically(tmp_path):
    store = FolderObjectStore(tmp_path)
    store.put("a/b.json", b"{}")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]  # no temp file left behind


def test_folder_listing_walks_only_below_the_prefix(tmp_path, monkeypatch):
    store = FolderObjectStore(tmp_path)
    for key in ["images/a.jpg", "results/x/~source.json", "results/x/y/~source.json", "results/xy/~source.json"]:
        store.put(key, b"{}")
    walked = []
    real_walk = os.walk
    monkeypatch.setattr(os, "walk", lambda top, *a, **k: (walked.append(top), real_walk(top, *a, **k))[1])
    assert sorted(o.key for o in store.list("results/x/")) == ["results/x/y/~source.json", "results/x/~source.json"]
    assert walked == [tmp_path / "results" / "x"]
    assert sorted(o.key for o in store.list("results/x")) == ["results/x/y/~source.json", "results/x/~source.json",
                                                              "results/xy/~source.json"]
    assert list(store.list("nowhere/")) == []


@pytest.mark.parametrize("hedge_seconds", [0.2, 0.0])
def test_a_stalled_small_request_is_asked_again_alongside(s3_endpoint, s3_client, bucket, hedge_seconds,
                                                          monkeypatch):
    """The first ask of every request held back 1 s by a proxy in front of moto, asking again answered at once (the
    client's own timeout is longer, so only hedging can help): with hedging, no read or small write waits for its
    stall; without, each waits it out. A large upload is never sent twice."""
    import time

    import boto3
    from botocore.config import Config

    from tests.faults import FlakyStoreProxy
    from vision_assets.vision.storage import object_store
    from vision_assets.vision.storage.object_store import HEDGED_PUT_BYTES, S3ObjectStore

    closed = []  # the losing GET answers' bodies, closed once they arrive (not left holding a connection)
    real_close = object_store._close_unused_body

    def recording_close(attempt):
        real_close(attempt)
        if attempt.exception() is None and "Body" in (answer := attempt.result()):
            closed.append(answer["Body"])

    monkeypatch.setattr(object_store, "_close_unused_body", recording_close)

    for n in range(2):
        s3_client.put_object(Bucket=bucket, Key=f"records/{n}.json", Body=b'{"n": %d}' % n)
    proxy = FlakyStoreProxy(s3_endpoint, delay_seconds=1, delay_first_asks=True)
    client = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                          config=Config(read_timeout=10, retries={"mode": "standard", "max_attempts": 1}))
    store = S3ObjectStore(client, bucket, hedge_seconds=hedge_seconds)
    try:
        times = []
        for n in range(2):
            started = time.perf_counter()
            assert store.get(f"records/{n}.json")[1] == b'{"n": %d}' % n
            store.put(f"records/{n}.copy.json", b"{}", "application/json")
            times.append(time.perf_counter() - started)
        big = b"x" * (HEDGED_PUT_BYTES + 1)
        started = time.perf_counter()
        store.put("records/big.bin", big)
        big_seconds = time.perf_counter() - started
    finally:
        proxy.close()
    if hedge_seconds:
        assert max(times) < 0.9 and store.requests_hedged == 4, (times, store.requests_hedged)
        deadline = time.monotonic() + 5
        while len(closed) < 2 and time.monotonic() < deadline:  # the two stalled GETs answer 1 s after their ask
            time.sleep(0.1)
        assert len(closed) == 2 and all(body._raw_stream.closed for body in closed), closed
    else:
        assert min(times) >= 2.0 and store.requests_hedged == 0, times
    assert big_seconds >= 1.0  # waited out, not sent twice
    assert s3_client.get_object(Bucket=bucket, Key="records/1.copy.json")["Body"].read() == b"{}"

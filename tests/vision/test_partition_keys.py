import pytest

from vision_assets.vision.partition_keys import MAX_LENGTH, is_safe_partition_key, partition_key_for

ODD_KEYS = [
    "my photo.jpg",
    "café/été.jpg",
    "cafe\u0301.jpg",  # NFD: must differ from the NFC key above
    "a,b,c.jpg",
    "wait...what.jpg",
    "../../etc/passwd.jpg",
    "./x.jpg",
    "dir//double.jpg",
    "[a...b].png",
    "star*.jpg",
    'quote"d\'.jpg',
    "tab\tand\nnewline.jpg",
    "~tilde.jpg",
    "x" * 500 + ".jpg",
    "deep/" * 60 + "leaf.jpg",
    "日本語の写真.jpeg",
    ".hidden.jpg",
    "trailing space .jpg",
    "%2e%2e/encoded.jpg",
    "back\\slash.jpg",
]


@pytest.mark.parametrize("key", ["cam1/img_000.jpg", "holiday-2024/IMG_1234.JPG", "a.b.c.png", "日本語.jpg"])
def test_plain_keys_are_kept_as_they_are(key):
    assert partition_key_for(key) == key


@pytest.mark.parametrize("key", ODD_KEYS)
def test_odd_keys_become_safe_readable_keys(key):
    partition_key = partition_key_for(key)
    assert is_safe_partition_key(partition_key)
    assert len(partition_key) <= MAX_LENGTH
    for syntax in (",", "...", "[", "]", "*", '"', "'", "\n", "\t", "\\"):
        assert syntax not in partition_key
    assert not any(segment in ("", ".", "..") for segment in partition_key.split("/"))
    assert partition_key_for(key) == partition_key  # deterministic


def test_readable_part_survives():
    assert partition_key_for("my photo.jpg").startswith("my_photo.jpg~")
    assert partition_key_for("x" * 500 + ".jpg").split("~")[0].endswith(".jpg")


def test_distinct_objects_get_distinct_partitions():
    keys = ODD_KEYS + ["a_b_c.jpg", "a b c.jpg", "a,b c.jpg", "my_photo.jpg", "my photo .jpg"]
    partition_keys = [partition_key_for(k) for k in keys]
    assert len(set(partition_keys)) == len(keys)


def test_a_sanitised_key_never_equals_a_plain_one():
    sanitised = partition_key_for("a b.jpg")
    assert "~" in sanitised and partition_key_for(sanitised) != sanitised


"""mmgdino.sources: inputs listed into image keys (files, folders, URIs), manifests, versions, reading by key."""

import json
import os

import pytest
from PIL import Image

from mmgdino import sources
from mmgdino.errors import ImageReadError, UsageError


def _image(path, size=(8, 6), color=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_file_uris_are_listed_and_read_through_pyarrow(tmp_path):
    pytest.importorskip("pyarrow")
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 6), (10, 20, 30)).save(tmp_path / "a" / "b" / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = sources.list_images([f"file://{tmp_path}/a"], {".png"})
    assert [key for key, _ in found] == [f"file://{tmp_path}/a/b/x.png"]
    image = sources.read_image(found[0][0])
    assert image.size == (8, 6) and image.getpixel((0, 0)) == (10, 20, 30)
    assert found[0][1] == sources.version_of(found[0][0])


def test_folders_are_searched_recursively_and_each_image_is_listed_once(tmp_path, monkeypatch):
    a = _image(tmp_path / "in" / "a.png")
    b = _image(tmp_path / "in" / "deep" / "b.JPG")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    found = sources.list_images(["in", str(a), "in/a.png"])  # a given three ways: one key
    assert [key for key, _ in found] == [str(a.resolve()), str(b.resolve())]
    assert all(version == sources.version_of(key) for key, version in found)


def test_missing_inputs_and_uris_where_they_cannot_run_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="missing.png: no such file or directory"):
        sources.list_images([str(tmp_path / "missing.png")])
    with pytest.raises(UsageError, match="URIs need --ray"):
        sources.list_images([f"file://{tmp_path}"], uris=False)


def test_a_version_changes_with_the_file(tmp_path):
    path = _image(tmp_path / "a.png")
    before = sources.version_of(path)
    _image(path, size=(9, 6))
    os.utime(path, ns=(1, 1))
    assert sources.version_of(path) != before


def test_manifests_in_json_lines_csv_and_parquet_give_the_same_entries(tmp_path):
    _image(tmp_path / "imgs" / "a.png")
    _image(tmp_path / "imgs" / "b.png")
    entries = [("imgs/a.png", ["a cat", "a dog"]), ("imgs/b.png", ["a ball"])]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps({"image": i, "labels": l}) for i, l in entries) + "\n\n")  # blank line ok
    csv = tmp_path / "m.csv"
    csv.write_text("image,labels\n" + "".join(f"{i},{';'.join(l)}\n" for i, l in entries))
    want = [(str((tmp_path / i).resolve()), l) for i, l in entries]
    assert sources.read_manifest(jsonl) == want
    assert sources.read_manifest(csv) == want
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"image": [i for i, _ in entries], "labels": [l for _, l in entries]}), parquet)
    assert sources.read_manifest(parquet) == want


def test_uris_in_a_manifest_stay_uris(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "s3://bucket/a.png", "labels": ["x"]}) + "\n")
    assert sources.read_manifest(manifest) == [("s3://bucket/a.png", ["x"])]


@pytest.mark.parametrize(
    "content, words",
    [("", "no entries"), ('{"image": "a.png"}\n', "needs an image and its labels"), ("{not json\n", "needs an image")],
)
def test_bad_manifests_are_one_line(tmp_path, content, words):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(content)
    with pytest.raises(UsageError, match=words):
        sources.read_manifest(manifest)
    with pytest.raises(UsageError, match="no such file"):
        sources.read_manifest(tmp_path / "none.jsonl")


def test_an_unreadable_uri_names_itself(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="bad.png"):
        sources.read_image(f"file://{tmp_path}/bad.png")

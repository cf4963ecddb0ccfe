"""mmgdino.results: the records file and its progress file (resume exactly, refuse other settings), COCO results,
atomic writes."""

import json

import pytest

from mmgdino.errors import UsageError
from mmgdino.results import ResultStore, StdoutRecords, write_atomically, write_coco

SETTINGS = {"model": "m", "threshold": 0.3}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _record(key, label="a", score=0.5):
    return {"image": key, "label": label, "labels": [label], "score": score, "box": [0, 0, 1, 1]}


def test_a_rerun_skips_finished_images_and_redoes_changed_and_unfinished_ones(tmp_path):
    out = tmp_path / "r.jsonl"
    store = ResultStore(out, SETTINGS)
    assert store.open({"a": "v1", "b": "v1", "c": "v1"}) == ["a", "b", "c"]
    store.add("a", "v1", [_record("a"), _record("a", "b")])
    store.add("b", "v1", [_record("b")])
    store.close()
    with out.open("a") as f:  # c's records written, its progress line never: an interrupted write
        f.write(json.dumps(_record("c")) + "\n" + '{"image": "c", "lab')
    store = ResultStore(out, SETTINGS)
    assert store.open({"a": "v1", "b": "v2", "c": "v1"}) == ["b", "c"]  # b changed since
    store.close()
    assert [r["image"] for r in _rows(out)] == ["a", "a"]
    progress = _rows(out.with_name("r.jsonl.progress"))
    assert progress[0] == {"settings": SETTINGS} and [p["image"] for p in progress[1:]] == ["a"]


def test_other_settings_into_the_same_file_are_refused_naming_what_differs(tmp_path):
    out = tmp_path / "r.jsonl"
    store = ResultStore(out, SETTINGS)
    store.open({"a": "v1"})
    store.add("a", "v1", [_record("a")])
    store.close()
    with pytest.raises(UsageError, match=r"other settings \(threshold differ\)"):
        ResultStore(out, {**SETTINGS, "threshold": 0.5}).open({"a": "v1"})


def test_a_records_file_without_its_progress_file_is_not_touched(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps(_record("a")) + "\n")
    with pytest.raises(UsageError, match="no r.jsonl.progress beside it"):
        ResultStore(out, SETTINGS).open({"a": "v1"})
    assert _rows(out) == [_record("a")]


def test_coco_results_and_their_ids(tmp_path):
    records = [_record("/x/1.png", "a cat", 0.9), _record("/x/2.png", "a dog", 0.4),
               {"image": "/x/3.png", "label": None, "labels": [], "score": None, "box": None}]  # fmt: skip
    records[0]["box"] = [10, 20, 30, 60]
    out, ids = write_coco(records, tmp_path / "res.json", ["a cat", "a dog"])
    results = json.loads(out.read_text())
    mapping = json.loads(ids.read_text())
    assert results[0] == {"image_id": 1, "category_id": 1, "bbox": [10, 20, 20, 40], "score": 0.9}
    assert len(results) == 2  # the image without detections has no result, but an id
    assert [i["file_name"] for i in mapping["images"]] == ["/x/1.png", "/x/2.png", "/x/3.png"]
    assert mapping["categories"] == [{"id": 1, "name": "a cat"}, {"id": 2, "name": "a dog"}]


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "f.json"
    write_atomically(path, "one\n")
    write_atomically(path, "two\n")
    assert path.read_text() == "two\n" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_stdout_records_are_json_lines(capsys):
    store = StdoutRecords()
    store.add("a", None, [_record("a"), _record("a", "b")])
    store.close()
    assert [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()] == ["a", "b"]

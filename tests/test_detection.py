"""mmgdino.detection: the records `mmgdino detect` writes and the settings a rerun must agree on (the command
itself runs in test_cli.py)."""

from mmgdino.detection import DetectJob, DetectRun, detection_records, settings_of


def test_an_image_without_detections_has_one_record_with_nulls():
    assert detection_records("a.png", []) == [{"image": "a.png", "label": None, "labels": [], "score": None,
                                               "box": None}]  # fmt: skip
    found = [{"label": "x", "labels": ["x"], "score": 0.5, "box": [0, 0, 1, 1]}]
    assert detection_records("a.png", found) == [{"image": "a.png", **found[0]}]


def test_settings_name_the_model_folder_resolved_and_the_dtype_by_name(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    run = DetectRun({}, {}, ["a"], DetectJob("model", dtype="bfloat16", threshold=0.4))
    settings = settings_of(run)
    assert settings["model"] == str((tmp_path / "model").resolve()) and settings["dtype"] == "bfloat16"
    assert settings["threshold"] == 0.4 and settings["labels"] == ["a"]
    assert settings_of(DetectRun({}, {}, ["a"], DetectJob("org/hub-id")))["model"] == "org/hub-id"

"""Where a run over images writes (`mmgdino detect`, `mmgdino eval`'s predictions), so that an interrupted run
loses nothing and a rerun redoes exactly what is unfinished.

The records file (JSON Lines, one line per detection, an image without detections as one line with null fields)
has a progress file beside it, `OUT.progress`: its first line holds the settings that determine the results
(model, labels, thresholds, dtype), then one line per finished image (its key and version: `sources.version_of`).
Per image, the drawing (if any) is written first, then all of its records in one write, then its progress line.
A rerun with the same settings skips finished, unchanged images; drops the records of images that never got their
progress line (an interrupted write) or whose file changed since, and redoes them; a rerun with other settings
into the same file is refused with one line saying what differs.
"""

import json
import os
import sys
from pathlib import Path

from .errors import UsageError


def _parse_json_lines(text):
    """Complete JSON lines (a line cut short by an interrupted write is skipped)."""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _read_json_lines(path):
    return _parse_json_lines(path.read_text()) if path.exists() else []


def write_atomically(path, text):
    """`text` at `path`, all or nothing: a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ResultStore:
    """A records file and its progress file (module docstring); `add` one image's records at a time."""

    def __init__(self, records_path, settings):
        self.records = Path(records_path)
        self.progress = self.records.with_name(self.records.name + ".progress")
        self.settings = settings
        self._records_fd = self._progress_fd = None

    def open(self, versions):
        """versions: {image key: current version} of the images of this run. Returns the keys still to do."""
        done = {}
        if self.records.exists() and self.records.stat().st_size > 0:
            if not self.progress.exists():
                raise UsageError(
                    f"{self.records} exists but has no {self.progress.name} beside it (not written by this version "
                    "of mmgdino detect); choose another --out or remove the file"
                )
            lines = _read_json_lines(self.progress)
            previous = lines[0].get("settings", {}) if lines else {}
            differ = sorted(k for k in set(previous) | set(self.settings) if previous.get(k) != self.settings.get(k))
            if differ:
                raise UsageError(
                    f"{self.records} holds results made with other settings ({', '.join(differ)} differ); "
                    "use another --out, or remove it and its .progress file to start over"
                )
            done = {row["image"]: row["version"] for row in lines[1:] if "image" in row and "version" in row}
            finished = {key for key, version in done.items() if versions.get(key, version) == version}
            self._keep_only(finished)
        else:
            finished = set()
            self._write_progress_header([])
        return [key for key in versions if key not in finished]

    def _write_progress_header(self, finished_rows):
        lines = [json.dumps({"settings": self.settings})] + [json.dumps(row) for row in finished_rows]
        write_atomically(self.progress, "\n".join(lines) + "\n")

    def _keep_only(self, finished):
        """Rewrite both files without the records of unfinished or changed images (only when there are any)."""
        raw = self.records.read_text()
        rows = _parse_json_lines(raw)
        kept = [row for row in rows if row.get("image") in finished]
        if len(kept) != len(rows) or (raw and not raw.endswith("\n")) or len(rows) != len(raw.splitlines()):
            write_atomically(self.records, "".join(json.dumps(row) + "\n" for row in kept))
        progress = [row for row in _read_json_lines(self.progress)[1:] if row.get("image") in finished]
        self._write_progress_header(progress)

    def add(self, key, version, records):
        """All of one image's records in one write, then its progress line."""
        if self._records_fd is None:
            self._records_fd = os.open(self.records, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._progress_fd = os.open(self.progress, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _write_all(self._records_fd, "".join(json.dumps(r) + "\n" for r in records))
        _write_all(self._progress_fd, json.dumps({"image": key, "version": version}) + "\n")

    def close(self):
        for fd in (self._records_fd, self._progress_fd):
            if fd is not None:
                os.close(fd)
        self._records_fd = self._progress_fd = None

    def all_records(self):
        return _read_json_lines(self.records)


class StdoutRecords:
    """Records as JSON Lines on stdout (a run without an output file), one image at a time; nothing to resume."""

    def add(self, key, version, records):
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in records))
        sys.stdout.flush()

    def close(self):
        pass


def _write_all(fd, text):
    data = text.encode()
    while data:
        data = data[os.write(fd, data) :]


def write_coco(records, out, categories):
    """A COCO results array (image_id, category_id, bbox as x, y, w, h, score) at `out`, and beside it
    `<out stem>.ids.json` mapping the ids to image paths and label names."""
    out = Path(out)
    images = sorted({r["image"] for r in records})
    image_ids = {path: i + 1 for i, path in enumerate(images)}
    category_ids = {name: i + 1 for i, name in enumerate(categories)}
    results = []
    for r in records:
        if r.get("label") is None:
            continue
        x0, y0, x1, y1 = r["box"]
        results.append({"image_id": image_ids[r["image"]], "category_id": category_ids[r["label"]],
                        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)], "score": r["score"]})  # fmt: skip
    write_atomically(out, json.dumps(results) + "\n")
    ids = {"images": [{"id": i, "file_name": p} for p, i in image_ids.items()],
           "categories": [{"id": i, "name": n} for n, i in category_ids.items()]}  # fmt: skip
    ids_path = out.with_name(out.stem + ".ids.json")
    write_atomically(ids_path, json.dumps(ids, indent=1) + "\n")
    return out, ids_path

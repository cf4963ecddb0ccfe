"""`mmgdino detect` once its arguments are checked: images and vocabularies through `Detector` into JSON Lines (or
a COCO results file), drawings beside them, resumable, in this process or on Ray.

The settings that decide the results (model, runtime, dtype, thresholds, labels) are written with them; a rerun
with the same settings does only what is missing (`results.ResultStore`), one with other settings is refused.
"""

from dataclasses import dataclass, field
from pathlib import Path

from . import distributed, loop
from .detector import Detector
from .drawing import draw, drawing_paths
from .loading import dtype_name
from .results import ResultStore, StdoutRecords, write_coco


def detection_records(key, detections):
    """One image's records: one per detection, or one with null fields when there is none."""
    empty = {"label": None, "labels": [], "score": None, "box": None}
    return [{"image": key, **d} for d in detections or [empty]]


@dataclass
class DetectJob:
    """`Detector.detect` on a batch: per image, its records as `mmgdino detect` writes them (a `loop` job)."""

    model: str
    device: str = None
    dtype: str = None
    threshold: float = 0.3
    text_threshold: float = 0.25
    chunk_merge_iou: float = None
    batch_size: int = 1  # images per forward inside a Ray batch: 1 gives the same results whatever Ray groups
    runtime: str = None
    compile: object = False  # mmgdino.compiled: True / False / "auto"
    calibration: list = None  # int8: the images whose activations set its ranges
    fault_injection: dict = field(default=None, repr=False)  # tests only: see loop.inject_fault

    def setup(self):
        self.detector = Detector(self.model, device=self.device, dtype=self.dtype, runtime=self.runtime,
                                 compile=self.compile, calibration=self.calibration)  # fmt: skip

    def __call__(self, keys, images, payloads):
        loop.inject_fault(self)
        results = self.detector.detect(images, payloads, threshold=self.threshold, text_threshold=self.text_threshold,
                                       batch_size=self.batch_size, chunk_merge_iou=self.chunk_merge_iou)  # fmt: skip
        return [detection_records(key, found) for key, found in zip(keys, results)]


@dataclass
class DetectRun:
    """Checked arguments of one `mmgdino detect`."""

    images: dict  # {key: version}, each image once
    vocabularies: dict  # {key: labels}
    labels_setting: object  # what the settings record of the labels: the list, or "manifest <path>"
    job: DetectJob
    out: str = None
    format: str = "jsonl"
    draw: str = None
    ray: distributed.RayOptions = None
    threads: int = None


def settings_of(run):
    """What determines the results; a rerun into the same output must agree on all of it."""
    model = run.job.model
    return (
        {
            "model": str(Path(model).resolve()) if Path(model).exists() else model,
            "runtime": run.job.runtime,
            "dtype": dtype_name(run.job.dtype),
            "threshold": run.job.threshold,
            "text_threshold": run.job.text_threshold,
            "chunk_merge_iou": run.job.chunk_merge_iou,
            "labels": run.labels_setting,
        }
        | ({"calibration": run.job.calibration} if run.job.calibration else {})
        | ({"compiled": True} if run.job.compile else {})
    )


def detect_images(run, log=print):
    """Runs `run`; returns the `loop.Summary` (its failures named on `log`, one line each)."""
    store = StdoutRecords()
    if run.out:
        records_path = Path(run.out) if run.format == "jsonl" else Path(str(run.out) + ".records.jsonl")
        store = ResultStore(records_path, settings_of(run))
        todo = store.open(run.images)
    else:
        todo = list(run.images)
    if not todo:
        log(f"all {len(run.images)} images are already in {run.out}")
        summary = loop.Summary(0, 0, [], 0.0, 0.0)
    else:
        items = [(key, run.vocabularies[key]) for key in todo]
        threads = run.threads or loop.default_threads()
        try:
            if run.ray is not None:
                summary = distributed.run(run.job, items, store, run.images, run.ray, threads=threads, log=log)
                rates = ", ".join(f"{name} {rate} img/s" for name, rate in summary.workers.items())
                log(f"ray: {summary.images} images, {summary.records} records, {len(summary.failures)} failed, "
                    f"{summary.seconds} s; per worker: {rates}")  # fmt: skip
            else:
                drawings = drawing_paths(list(run.images), run.draw) if run.draw else {}

                def on_image(key, image, records):  # the drawing first: a record never lacks its drawing
                    if run.draw:
                        draw(image, [r for r in records if r["label"] is not None], drawings[key])

                summary = loop.run_images(run.job, items, store, run.images, batch_size=run.job.batch_size,
                                          threads=threads, desc="detect", log=log, on_image=on_image)  # fmt: skip
        finally:
            store.close()
    if run.out and run.format == "coco":
        categories = list(dict.fromkeys(label for labels in run.vocabularies.values() for label in labels))
        out, ids = write_coco(store.all_records(), run.out, categories)
        log(f"wrote {out} and {ids}")
    if summary.failures:
        log(f"{len(summary.failures)} of {len(todo)} images failed (named above)")
    return summary

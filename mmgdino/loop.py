"""The one loop over a set of images that `mmgdino detect`, `mmgdino eval` and their `--ray` runs share.

A *job* is what runs the model: `setup()` loads it (once per process, or once per Ray actor), and
`job(keys, images, payloads)` turns a batch of upright RGB images into each image's records. The loop reads
images by key (a bad image becomes a failure naming it, never the end of the run), calls the job batch by batch,
and writes each image's records through a store (`results.ResultStore` or `results.StdoutRecords`) the moment
the image is done, so an interrupted run loses nothing. On Ray the same job runs in a pool of actors
(`mmgdino.distributed.run`), written through the same store.

Every process that runs a job uses the same number of intra-op threads (`threads`, default: this process's), so a
Ray run gives the same numbers as a single-process run on the same machine (thread counts change float sums).
"""

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ImageReadError
from .sources import read_image


@dataclass
class Summary:
    images: int  # images the job ran on or failed to read
    records: int
    failures: list  # [(key, one-line reason)], not written: a rerun tries them again
    seconds: float  # wall time of the whole run
    model_seconds: float  # time inside the job (one process); per worker on Ray: see workers
    workers: dict = field(default_factory=dict)  # Ray: {worker: images per second}


def progress_bar(total, desc, enabled=True):
    """A tqdm bar on stderr (None without tqdm, or for fewer than two images)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total < 2, file=sys.stderr)


def set_threads(threads):
    """The intra-op thread count a job runs with (None: leave it)."""
    if threads:
        torch.set_num_threads(int(threads))


def default_threads():
    """What a run's jobs use unless told: this process's intra-op thread count, in every process of the run."""
    return torch.get_num_threads()


def inject_fault(job):
    """Tests only: with job.fault_injection = {"marker": path, "after_batches": n}, the first process to reach
    batch n + 1 exits without a word, once (the marker file says it happened)."""
    spec = getattr(job, "fault_injection", None)
    if not spec:
        return
    spec["batches_seen"] = spec.get("batches_seen", 0) + 1  # per process: each Ray actor holds its own copy
    if spec["batches_seen"] > spec["after_batches"]:
        try:
            fd = os.open(Path(spec["marker"]), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def run_images(job, items, store, versions, *, batch_size=1, threads=None, progress=True, desc="images", log=None,
               on_image=None):  # fmt: skip
    """Runs `job` over items [(key, payload)] in this process, writing each image's records through `store` with
    its version (`versions[key]`). on_image(key, image, records), if given, runs before an image's records are
    written (so a record never lacks its drawing). Returns a `Summary`."""
    began = time.perf_counter()
    if not items:
        return Summary(0, 0, [], 0.0, 0.0)
    set_threads(threads)
    job.setup()
    failures, records, model_seconds = [], 0, 0.0
    bar = progress_bar(len(items), desc, progress)
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            keys, images, payloads = [], [], []
            for key, payload in batch:
                try:
                    images.append(read_image(key))
                except ImageReadError as exc:
                    failures.append((key, str(exc)))
                    if log:
                        log(str(exc))
                    continue
                keys.append(key)
                payloads.append(payload)
            if keys:
                called = time.perf_counter()
                found = job(keys, images, payloads)
                model_seconds += time.perf_counter() - called
                for key, image, image_records in zip(keys, images, found):
                    if on_image is not None:
                        on_image(key, image, image_records)
                    store.add(key, versions.get(key), image_records)
                    records += len(image_records)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return Summary(len(items), records, failures, round(time.perf_counter() - began, 2), model_seconds)

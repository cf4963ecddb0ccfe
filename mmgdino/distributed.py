"""`mmgdino detect --ray` and `mmgdino eval --ray`: the same work on a Ray cluster, through Ray Data.

The pipeline: image keys (local paths, or URIs any pyarrow filesystem reads: s3://, gs://, file://, ...) ->
decode on CPU tasks (upright RGB arrays; a bad image becomes an error row, not a failure of the run) ->
`map_batches` over a pool of actors, each holding one model, with an explicit batch size -> rows streamed back to
this process, which writes them through the same store a single-process run uses (`mmgdino.loop`).

Exactly once: every image has one key; this process writes an image's records only for the first row it sees
with that key (a batch Ray retries after a worker died may deliver some twice), and its progress line after
them, so a rerun (same command) does only what is missing. Resources: on GPU clusters one GPU per actor by
default; on CPU-only clusters actors claim a CPU each and at least one CPU is left for the decode tasks (actors
holding every CPU would starve the tasks that feed them, and the pipeline would hang).
"""

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .errors import ImageReadError, UsageError
from .loop import Summary, progress_bar, set_threads
from .sources import read_image

RAY_EXTRA = "pip install 'ray[data]' (or mmgdino[ray])"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray needs Ray Data: {RAY_EXTRA}") from None
    return ray


# ------------------------------------------------------------------ Ray


@dataclass
class RayOptions:
    address: str = "local"  # "local": a private single-node cluster; "auto" or host:port: an existing one
    workers: int = None
    gpus_per_worker: float = None
    cpus_per_worker: float = None
    batch_size: int = 4


def check_options(options):
    for name in ("workers", "gpus_per_worker", "cpus_per_worker"):
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or value < (1 if name == "workers" else 0)):
            raise UsageError(
                f"--{name.replace('_', '-')} must be {'>= 1' if name == 'workers' else '>= 0'}, got {value}"
            )
    if isinstance(options.batch_size, bool) or not isinstance(options.batch_size, int) or options.batch_size < 1:
        raise UsageError(f"--batch-size must be a whole number >= 1, got {options.batch_size!r}")


@contextmanager
def cluster(address):
    """Ray, started or joined. "local" starts a private node bound to 127.0.0.1 (its files in a temporary
    folder, no dashboard, no usage reporting, no token written to ~/.ray) and stops every process it started."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    if address == "local":
        temp = tempfile.mkdtemp(prefix="mmgdino-ray-")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray resolves even an explicit 127.0.0.1 to the machine's network address unless told it is a
        # one-machine setup: this switch (read by this process now, by the processes it starts from the
        # environment) keeps every Ray process on loopback.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(address="local", num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", include_dashboard=False,
                 _temp_dir=temp, log_to_driver=False, configure_logging=False)  # fmt: skip
    else:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as exc:
            raise UsageError(f"--ray {address}: cannot join the cluster ({str(exc).splitlines()[0]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()
        if address == "local":  # the private node's logs and spilled objects go with it
            shutil.rmtree(temp, ignore_errors=True)


def plan(resources, options):
    """(workers, gpus per worker, cpus per worker) for the cluster's resources; UsageError when the request
    cannot run (more GPUs than there are, or actors that would leave no CPU to decode images)."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    per_gpu = options.gpus_per_worker if options.gpus_per_worker is not None else (1 if gpus else 0)
    if per_gpu and per_gpu > gpus:
        raise UsageError(f"--gpus-per-worker {per_gpu}: the cluster has {gpus:g} GPUs")
    per_cpu = options.cpus_per_worker if options.cpus_per_worker is not None else (1 if not per_gpu else 0.5)
    if options.workers is not None:
        workers = options.workers
    elif per_gpu:
        workers = max(1, int(gpus // per_gpu))
    else:
        workers = max(1, int((cpus - 1) // per_cpu)) if per_cpu else 1
    if per_gpu and workers * per_gpu > gpus:
        raise UsageError(f"{workers} workers x {per_gpu:g} GPUs need more than the cluster's {gpus:g} GPUs")
    if workers * per_cpu > cpus - 1:
        raise UsageError(
            f"{workers} workers x {per_cpu:g} CPUs would leave none of the cluster's {cpus:g} CPUs to decode images "
            "(the pipeline would hang): lower --workers or --cpus-per-worker"
        )
    return workers, per_gpu, per_cpu


def _decode(batch):
    images, errors = [], []
    for key in batch["key"]:
        try:
            images.append(np.asarray(read_image(str(key))))
            errors.append("")
        except ImageReadError as exc:
            images.append(np.zeros((1, 1, 3), dtype=np.uint8))
            errors.append(str(exc))
    out = dict(batch)
    out["image"] = np.array(images + [None], dtype=object)[:-1]  # ragged: one array per image
    out["error"] = np.array(errors, dtype=object)
    return out


class _Worker:
    """One model per actor, loaded once; runs the job on each batch of decoded images."""

    def __init__(self, job, threads):
        import ray

        set_threads(threads)
        self.job = job
        self.job.setup()
        self.name = f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"

    def __call__(self, batch):
        from PIL import Image

        keys = [str(k) for k in batch["key"]]
        good = [i for i, e in enumerate(batch["error"]) if not e]
        records = [""] * len(keys)
        began = time.perf_counter()
        if good:
            images = [Image.fromarray(np.asarray(batch["image"][i], dtype=np.uint8)) for i in good]
            payloads = [json.loads(batch["payload"][i]) for i in good]
            for i, found in zip(good, self.job([keys[i] for i in good], images, payloads)):
                records[i] = json.dumps(found)
        seconds = time.perf_counter() - began
        return {"key": np.array(keys, dtype=object), "records": np.array(records, dtype=object),
                "error": np.array([str(e) for e in batch["error"]], dtype=object),
                "worker": np.array([self.name] * len(keys), dtype=object),
                "seconds": np.array([seconds / len(keys)] * len(keys))}  # fmt: skip


def run(job, items, store, versions, options, threads=None, progress=True, log=None):
    """Runs `job` over items [(key, payload)] on Ray, each actor with `threads` intra-op threads, writing each
    image's records through `store` exactly once. Returns a `loop.Summary`."""
    check_options(options)
    log = log or (lambda message: None)
    began = time.perf_counter()
    with cluster(options.address) as ray:
        workers, per_gpu, per_cpu = plan(ray.cluster_resources(), options)
        log(f"ray: {workers} workers x ({per_gpu:g} GPU, {per_cpu:g} CPU), batches of {options.batch_size}, "
            f"{len(items)} images")  # fmt: skip
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        blocks = max(1, min(len(items), 4 * workers, (len(items) + options.batch_size - 1) // options.batch_size))
        rows = [{"key": key, "payload": json.dumps(payload)} for key, payload in items]
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        dataset = dataset.map_batches(_decode, batch_size=options.batch_size, num_cpus=1 if per_cpu >= 1 else 0.5)
        dataset = dataset.map_batches(
            _Worker, fn_constructor_args=(job, threads), batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=per_gpu or None, num_cpus=per_cpu,
            max_restarts=-1, max_task_retries=-1,
        )  # fmt: skip
        bar = progress_bar(len(items), "ray", progress)
        written, failures, records_count, per_worker = set(), [], 0, {}
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for key, records, error, worker, seconds in zip(batch["key"], batch["records"], batch["error"],
                                                                batch["worker"], batch["seconds"]):  # fmt: skip
                    key = str(key)
                    if key in written:  # delivered again by a retried batch
                        continue
                    written.add(key)
                    stats = per_worker.setdefault(str(worker), [0, 0.0])
                    stats[0] += 1
                    stats[1] += float(seconds)
                    if error:
                        failures.append((key, str(error)))  # not recorded: a rerun tries it again
                        log(str(error))
                    else:
                        found = json.loads(records)
                        records_count += len(found)
                        store.add(key, versions[key], found)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    return Summary(images=len(written), records=records_count, failures=failures,
                   seconds=round(time.perf_counter() - began, 2),
                   model_seconds=sum(seconds for _, seconds in per_worker.values()),
                   workers={name: round(n / s, 3) if s else None for name, (n, s) in per_worker.items()})  # fmt: skip

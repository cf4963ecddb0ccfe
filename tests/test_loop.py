"""mmgdino.loop: the one loop over a set of images (detect, eval): bad images are failures that do not stop the
run and are not written, every image's records are written as it finishes, the hook runs first, the thread count
is set, nothing loads when there is nothing to do."""

import json

import torch
from PIL import Image

from mmgdino import loop
from mmgdino.results import ResultStore


class CountingJob:
    def __init__(self):
        self.setups, self.batches, self.threads = 0, [], None

    def setup(self):
        self.setups += 1
        self.threads = torch.get_num_threads()

    def __call__(self, keys, images, payloads):
        self.batches.append(list(keys))
        return [[{"image": k, "size": list(im.size), "payload": p}] for k, im, p in zip(keys, images, payloads)]


def _folder(tmp_path):
    keys = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        if i == 2:
            path.write_bytes(b"broken")
        else:
            Image.new("RGB", (10 + i, 8)).save(path)
        keys.append(str(path))
    return keys


def test_the_loop_writes_each_image_as_it_finishes_and_reports_bad_ones(tmp_path):
    keys = _folder(tmp_path)
    store = ResultStore(tmp_path / "out.jsonl", {"s": 1})
    versions = {k: "v" for k in keys}
    store.open(versions)
    order, logged = [], []
    job = CountingJob()
    threads = torch.get_num_threads()
    try:
        summary = loop.run_images(job, [(k, {"i": i}) for i, k in enumerate(keys)], store, versions, batch_size=2,
                                  threads=1, progress=False, log=logged.append,
                                  on_image=lambda key, image, records: order.append(key))  # fmt: skip
        assert job.threads == 1
    finally:
        store.close()
        torch.set_num_threads(threads)
    assert job.setups == 1 and job.batches == [keys[:2], keys[3:4], keys[4:]]
    assert summary.images == 5 and summary.records == 4 and [k for k, _ in summary.failures] == [keys[2]]
    assert len(logged) == 1 and "2.png" in logged[0]
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["image"] for r in written] == order == [k for k in keys if k != keys[2]]
    assert written[1] == {"image": keys[1], "size": [11, 8], "payload": {"i": 1}}


def test_nothing_to_do_loads_nothing(tmp_path):
    job = CountingJob()
    summary = loop.run_images(job, [], None, {}, progress=False)
    assert job.setups == 0 and summary.images == 0


def test_an_injected_fault_ends_the_first_process_once(tmp_path, monkeypatch):
    exits = []
    monkeypatch.setattr(loop.os, "_exit", exits.append)
    job = CountingJob()
    job.fault_injection = {"marker": str(tmp_path / "died"), "after_batches": 1}
    loop.inject_fault(job)
    assert exits == []
    loop.inject_fault(job)
    loop.inject_fault(job)
    assert exits == [1] and (tmp_path / "died").exists()

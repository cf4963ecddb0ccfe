"""`python -m mmgdino.bench.cold_start`: from process start to the first detection of `mmgdino detect` on one
image, and the process's peak memory (file cache warm), for mmgdino (eager; compiled with an empty cache, then with
the cache the first run filled) and for transformers' zero-shot-object-detection pipeline. Each run is a fresh
process.

The checkpoint is MM Grounding DINO tiny with random weights saved to a folder with a processor whose tokenizer
has a made-up vocabulary (no downloads): loading, tokenizing and detecting cost what a real checkpoint's do.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..environment import git_commit, versions
from .cpu_peers import cpu_record
from .report import write_record

TRANSFORMERS_PIPELINE = """
import sys
from transformers import pipeline
detector = pipeline("zero-shot-object-detection", model=sys.argv[1], device="cpu")
print(detector(sys.argv[2], candidate_labels=["a cat", "a remote control"], threshold=0.0)[:1])
"""


def save_tiny_checkpoint(directory):
    """The tiny architecture (Swin-T, BERT-base sized vocabulary) with random weights and an offline processor."""
    from transformers import BertTokenizer, GroundingDinoProcessor, MMGroundingDinoConfig
    from transformers import MMGroundingDinoForObjectDetection as Reference
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    directory = Path(directory)
    config = MMGroundingDinoConfig()
    Reference(config).eval().save_pretrained(directory)
    specials = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: "."}
    words = {1037: "a", 4937: "cat", 6556: "remote", 2491: "control"}
    vocab = [specials.get(i) or words.get(i) or f"w{i}" for i in range(config.text_config.vocab_size)]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 800, "longest_edge": 1333}),
        tokenizer=BertTokenizer(str(directory / "vocab.txt"), do_lower_case=True),
    )
    processor.save_pretrained(directory)
    return directory


# Runs the command and prints its wall seconds, its own peak resident set (KiB) and its exit code. A small
# launcher, because Linux carries a process's ru_maxrss high-water mark across exec: a child forked straight from
# this process, which holds a model, could report this process's size instead of its own.
LAUNCHER = """
import os, subprocess, sys, time
began = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(time.perf_counter() - began, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def timed_process(command, env=None):
    """(wall seconds from start to exit, peak resident MiB) of a fresh process; RuntimeError if it fails."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, command)], env=env, capture_output=True,
                          text=True)  # fmt: skip
    seconds, peak_kib, code = done.stdout.split()
    if int(code):
        raise RuntimeError(f"{' '.join(map(str, command))} failed: {done.stderr[-500:]}")
    return float(seconds), int(peak_kib) / 1024


def run(dtype="auto", log=print):
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = save_tiny_checkpoint(tmp / "checkpoint")
        image = tmp / "image.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(image)
        detect = [sys.executable, "-m", "mmgdino.cli", "detect", str(image), "--labels", "a cat", "a remote control",
                  "--model", str(checkpoint), "--device", "cpu", "--dtype", dtype]  # fmt: skip
        env = dict(os.environ, MMGDINO_CACHE_DIR=str(tmp / "cache"), HF_HUB_OFFLINE="1")
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        pipeline = [sys.executable, "-c", TRANSFORMERS_PIPELINE, str(checkpoint), str(image)]
        runs = [
            (f"mmgdino detect, {dtype}, eager", detect + ["--compile", "off"]),
            (f"mmgdino detect, {dtype}, compiled, empty cache", detect + ["--compile", "on"]),
            (f"mmgdino detect, {dtype}, compiled, with the cache", detect + ["--compile", "on"]),
            ("transformers pipeline, float32", pipeline),
        ]  # fmt: skip
        # One unrecorded run first, so that every recorded one finds the libraries and the checkpoint in the OS's
        # file cache (a start after a reboot or under memory pressure also reads them from disk: not measured here).
        timed_process(runs[0][1], env)
        for name, command in runs:
            seconds, peak = timed_process(command, env)
            rows.append({"name": name, "s": round(seconds, 1), "peak_mib": round(peak)})
            log(f"{name}: {seconds:.1f} s, peak {peak:.0f} MiB")
    return {"cpu": cpu_record(), "commit": git_commit(), "versions": versions(), "dtype": dtype, "rows": rows}


def markdown(record):
    cpu = record["cpu"]
    lines = [
        f"# Cold start: process start to the first detection, one 640x480 image ({cpu['model']}, measured)",
        "",
        f"{cpu['described']}, {cpu['threads']} threads, load average {cpu['load_average']}. Commit "
        f"{record['commit']}. MM Grounding DINO tiny (random weights) from a local folder; each row a fresh process.",
        "",
        "| run | s | peak MiB |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['name']} | {r['s']} | {r['peak_mib']} |" for r in record["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmgdino.bench.cold_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"])
    parser.add_argument("--out", default="cold-start", help="JSON and markdown at this path (suffixes replaced)")
    args = parser.parse_args(argv)
    record = run(args.dtype, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(write_record(record, args.out, markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())

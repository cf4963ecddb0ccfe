"""Several processes: torchrun (PyTorch's own launcher, `torch.distributed.run`) starts the same `mmgdino train`
in each, and transformers' Trainer turns them into one data-parallel run (DDP: each process takes its share of
every batch, gradients are averaged; NCCL on GPUs, gloo on CPUs). `mmgdino train --nproc-per-node N` does this
on one machine, bound to the loopback interface; across machines run torchrun yourself (README), with the same
arguments on each node. torchrun and not Ray Train: the Trainer speaks torchrun's environment natively, and a
data-parallel run needs an all-reduce between fixed processes, not Ray's task and actor scheduling (which
`mmgdino detect/eval --ray` use for streaming images to model replicas).

Each process gets cpu_count / N intra-op threads unless OMP_NUM_THREADS is set (torchrun would give each one
thread). A child's exit code becomes the command's: 2 for a usage error, 130 when interrupted.
"""

import os
import shutil
import socket
import sys
from pathlib import Path

from ..errors import UsageError


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def console_script():
    """The installed `mmgdino` script: run by path, so the children never put the working folder on sys.path."""
    beside = Path(sys.executable).parent / "mmgdino"
    found = str(beside) if beside.is_file() else shutil.which("mmgdino")
    if not found:
        raise UsageError("--nproc-per-node needs the `mmgdino` command installed (pip install mmgdino)")
    return found


def torchrun_arguments(nproc, argv, port=None):
    return ["--nproc-per-node", str(nproc), "--nnodes", "1", "--master-addr", "127.0.0.1",
            "--master-port", str(port or free_port()), "--no-python", console_script(), *argv]  # fmt: skip


def check_processes(nproc):
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise UsageError(f"--nproc-per-node must be a whole number >= 1, got {nproc!r}")


def launch(nproc, argv, threads=None):
    """Runs `mmgdino <argv>` in nproc processes here; returns the exit code (rank 0's when one failed)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    check_processes(nproc)
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        run(parse_args(torchrun_arguments(nproc, argv)))
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        code = codes.get(0, next(iter(codes.values())))
        if code < 0:  # killed by a signal: Ctrl-C reaches the workers as SIGINT
            return 130 if code == -2 else 1
        return code if code in (1, 2, 130) else 1
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0

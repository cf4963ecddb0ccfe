"""The kernel resource budget (mmgdino_tools.cuda_resources, from kernel_resources' compiler reports): ptxas
parsing, occupancy arithmetic and the check that fails CI on hand-made inputs, and the checked-in budget against the
kernels the sources define (CI runs the real compile in .ci/run)."""

import json
import re

import pytest

from mmgdino_tools import cuda_resources, kernel_resources
from mmgdino_tools.checkout import CSRC, ROOT

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelILi1EEvv' for 'sm_80'
ptxas info    : Function properties for _Z6kernelILi1EEvv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 80 registers, used 1 barriers, 8448 bytes smem, 448 bytes cmem[0]
ptxas info    : Compiling entry function '_Z6kernelILi1EEvv' for 'sm_90a'
ptxas info    : Function properties for _Z6kernelILi1EEvv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 448 bytes cmem[0]
"""


def test_ptxas_report_is_read_per_kernel_and_architecture():
    found = kernel_resources.parse_ptxas_log(PTXAS_LOG)
    assert found[("_Z6kernelILi1EEvv", 80)] == {
        "registers": 80,
        "stack": 8,
        "spill_stores": 4,
        "spill_loads": 4,
        "shared": 8448,
    }
    assert found[("_Z6kernelILi1EEvv", 90)]["registers"] == 40
    assert found[("_Z6kernelILi1EEvv", 90)]["shared"] == 0


@pytest.mark.parametrize(
    "registers, shared, threads, arch, blocks, fraction",
    [
        (32, 0, 256, 80, 8, 1.0),  # 32 registers x 2048 threads = the whole register file
        (64, 0, 256, 80, 4, 0.5),
        (80, 0, 256, 80, 3, 0.375),  # 80 x 32 = 2560 registers a warp; 65536 / 2560 = 25 warps = 3 blocks of 8
        (255, 0, 128, 90, 2, 0.125),
        (32, 48 * 1024, 256, 80, 3, 0.375),  # 164 KB / (48 KB + 1 KB reserved) = 3 blocks
        (16, 0, 32, 80, 32, 0.5),  # the 32-blocks-per-SM limit
        (32, 0, 256, 86, 6, 1.0),  # sm_86: 48 warps per SM
    ],
)
def test_occupancy_follows_the_published_limits(registers, shared, threads, arch, blocks, fraction):
    assert kernel_resources.occupancy(registers, shared, threads, arch) == (blocks, pytest.approx(fraction))


def _row(kernel="msda_forward_kernel<float, 4, 8>", hot=True, **changes):
    row = {
        "backend": "cuda",
        "kernel": kernel,
        "arch": 90,
        "hot": hot,
        "registers": 52,
        "shared": 0,
        "spill_stores": 0,
        "spill_loads": 0,
        "occupancy": 0.5,
    }
    return {**row, **changes}


def test_budget_passes_when_nothing_got_worse():
    assert cuda_resources.check([_row(registers=40, occupancy=0.62)], [_row()]) == []


def test_budget_names_a_hot_kernel_that_spills_or_loses_occupancy():
    spilled = cuda_resources.check([_row(spill_stores=8, spill_loads=8)], [_row()])
    assert len(spilled) == 1 and "msda_forward_kernel<float, 4, 8>" in spilled[0] and "spills" in spilled[0]
    slower = cuda_resources.check([_row(registers=90, occupancy=0.375)], [_row()])
    assert len(slower) == 1 and "occupancy 38% < budget 50%" in slower[0] and "sm_90" in slower[0]


def test_budget_ignores_check_only_kernels_but_not_new_or_missing_ones():
    double = "msda_forward_kernel<double, 1, 8>"
    assert cuda_resources.check([_row(double, hot=False, spill_stores=4)], [_row(double, hot=False)]) == []
    added = cuda_resources.check([_row(), _row("new_kernel<float>")], [_row()])
    assert added == ["cuda:new_kernel<float>:sm_90: not in the budget (regenerate with --write and review the table)"]
    removed = cuda_resources.check([], [_row()])
    assert len(removed) == 1 and "no longer compiled" in removed[0]


def test_binary_check_names_a_missing_cuobjdump_in_one_line(tmp_path):
    problems = cuda_resources.check_binary(tmp_path / "_C.so", [], str(tmp_path / "no-cuobjdump"))
    assert problems == [f"no cuobjdump at {str(tmp_path / 'no-cuobjdump')!r} (give one with --cuobjdump)"]


def _budget():
    return json.loads(cuda_resources.BUDGET.read_text())["kernels"]


def test_checked_in_budget_covers_every_hot_configuration_without_spills():
    budget = _budget()
    for backend in ("cuda", "triton"):
        for arch in (80, 90):
            rows = [r for r in budget if r["backend"] == backend and r["arch"] == arch and r["hot"]]
            assert rows, (backend, arch)
            assert all(r["spill_stores"] == r["spill_loads"] == 0 for r in rows), [r["kernel"] for r in rows]


def test_budget_names_exactly_the_cuda_kernels_the_sources_define():
    """Every __global__ kernel of csrc/cuda has a block size and rows on every budgeted architecture, each row's
    kernel is defined in the source it names, and a row is hot exactly when its element type is a fast path: a
    kernel added, renamed or moved without regenerating the budget fails here, before CI's compile."""
    defined = {}
    for source in sorted((CSRC / "cuda").glob("*.cu")):
        for name in re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", source.read_text()):
            defined[name] = str(source.relative_to(ROOT))
    assert defined and set(defined) == set(kernel_resources.CUDA_BLOCK_THREADS)
    rows = [r for r in _budget() if r["backend"] == "cuda"]
    for name in defined:
        for arch in kernel_resources.ARCHS:
            assert any(r["kernel"].split("<")[0] == name and r["arch"] == arch for r in rows), (name, arch)
    for r in rows:
        base, _, params = r["kernel"].partition("<")
        assert defined.get(base) == r["source"], r["kernel"]
        assert r["threads"] == kernel_resources.CUDA_BLOCK_THREADS[base], r["kernel"]
        assert r["hot"] == (params.split(",")[0].rstrip(">").strip() in kernel_resources.HOT_CUDA_TYPES), r["kernel"]


def test_budget_names_exactly_the_triton_configurations_the_dispatcher_launches():
    pytest.importorskip("triton")
    from mmgdino_tools import triton_aot_compile

    launched = {f"{name}[{dtype}]" for name, dtype, *_ in triton_aot_compile.instantiations()}
    for arch in kernel_resources.ARCHS:
        budgeted = {r["kernel"] for r in _budget() if r["backend"] == "triton" and r["arch"] == arch}
        assert budgeted == launched, arch

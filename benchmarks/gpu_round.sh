#!/usr/bin/env bash
# The whole GPU round in one call: build the CUDA extension, run the GPU tests, a compute-sanitizer memcheck,
# and the benchmarks; results land in benchmarks/results/ (and in $OUT when the device tool provides one).
#
#   bash benchmarks/gpu_round.sh                  # on a machine with CUDA torch, nvcc and a GPU
#   MMGDINO_PEER=module:function bash benchmarks/gpu_round.sh   # also time an importable peer MSDA op
#
# Needs: torch with CUDA, nvcc, transformers, triton, pytest (no internet).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT" benchmarks/results
status=0
step() { echo; echo "== $*"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"

step "build (CUDA)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
MMGDINO_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} python setup.py build_ext --inplace 2>&1 | tail -n 25 | tee "$OUT/build.log"
python -c "import mmgdino; from mmgdino import _extension as e; assert e.has_cuda_kernels, e.load_error" || exit 1
python -m mmgdino.cli info | tee "$OUT/info.txt"

step "tests (every backend on CPU and CUDA)"
PYTHONPATH=$PWD pytest -q tests -p no:cacheprovider 2>&1 | tail -n 40 | tee "$OUT/tests.log" || status=1

step "compute-sanitizer memcheck (small case)"
if command -v compute-sanitizer >/dev/null; then
  PYTHONPATH=$PWD compute-sanitizer --tool memcheck --error-exitcode 9 python - <<'PY' 2>&1 | tail -n 15 | tee "$OUT/memcheck.log"
import sys, torch
sys.path.insert(0, "tests")
from helpers import msda_inputs, contrastive_inputs
from mmgdino import ops
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    v, s, st, l, a = msda_inputs(device="cuda", dtype=dtype, head_dim=32, queries=50, spread=3.0)
    leaves = [t.requires_grad_(True) for t in (v, l, a)]
    out = ops.ms_deform_attn(leaves[0], s, st, leaves[1], leaves[2], backend="cuda")
    torch.autograd.grad(out.float().sum(), leaves)
    vis, txt, m = contrastive_inputs(device="cuda", dtype=dtype, dim=64)
    ops.contrastive_logits(vis, txt, m, backend="cuda"); ops.contrastive_max(vis, txt, m, backend="cuda")
torch.cuda.synchronize()
print("memcheck run finished")
PY
else
  echo "compute-sanitizer not found" | tee "$OUT/memcheck.log"
fi

step "benchmarks"
peer_args=()
[ -n "${MMGDINO_PEER:-}" ] && peer_args=(--peer "$MMGDINO_PEER")
name=$(python -c "import torch; print(torch.cuda.get_device_name(0).lower().replace(' ', '-'))")
PYTHONPATH=$PWD python -m mmgdino.cli bench --device cuda --out "benchmarks/results/ops-$name" "${peer_args[@]}" \
  | tee "$OUT/bench.log" || status=1
cp "benchmarks/results/ops-$name".* "$OUT/" 2>/dev/null || true
exit $status

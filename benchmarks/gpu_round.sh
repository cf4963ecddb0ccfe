#!/usr/bin/env bash
# The whole GPU round in one call: build the CUDA extension, run the GPU tests, a compute-sanitizer memcheck,
# and the benchmarks; results land in benchmarks/results/ (and in $OUT when the device tool provides one).
#
#   bash benchmarks/gpu_round.sh                  # on a machine with CUDA torch, nvcc and a GPU
#   MMGDINO_PEER=module:function bash benchmarks/gpu_round.sh   # also time an importable peer MSDA op
#   MMGDINO_STEPS="build tests" bash benchmarks/gpu_round.sh    # a subset of: build tests memcheck bench
#
# Needs: torch with CUDA, nvcc, transformers, triton, pytest (no internet). An extension already built for this
# torch is reused (MMGDINO_REUSE_BUILD=1), so a short lease can split the round over several calls.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-benchmarks/results}
STEPS=${MMGDINO_STEPS:-build tests memcheck bench}
mkdir -p "$OUT" benchmarks/results
# The extension is built in place and not installed: the checkout's mmgdino/ is importable through a folder that
# holds only a link to it, and the developer tools through tools/. The checkout's root never goes on sys.path
# (its kernels/ folder is not a package to import); `py` runs Python from that folder, because -m and - put the
# working directory on sys.path, so every path handed to it is absolute.
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
ln -s "$ROOT/mmgdino" "$SITE/mmgdino"
export PYTHONUNBUFFERED=1 PYTHONPATH=$SITE:$ROOT/tools${PYTHONPATH:+:$PYTHONPATH}
py() { (cd "$SITE" && python "$@"); }
status=0
step() { echo; echo "== $* ($(date +%T))"; }
wants() { [[ " $STEPS " == *" $1 "* ]]; }
has_cuda_build() { py -c "from mmgdino import _extension as e; raise SystemExit(0 if e.has_cuda_kernels else 1)" 2>/dev/null; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"

if wants build; then
  step "build (CUDA)"
  if [ "${MMGDINO_REUSE_BUILD:-0}" = 1 ] && has_cuda_build; then
    echo "reusing the CUDA extension already here"
  else
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
    start=$SECONDS
    MMGDINO_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} timeout 480 python setup.py build_ext --inplace > "$OUT/build.log" 2>&1
    echo "build exit $? after $((SECONDS - start)) s"; tail -n 15 "$OUT/build.log"
    grep -iE "spill|stack frame" "$OUT/build.log" | sort | uniq -c | head -n 20
    cp mmgdino/_C*.so "$OUT/" 2>/dev/null || true
  fi
  has_cuda_build || { py -c "from mmgdino import _extension as e; print(e.load_error)"; exit 1; }
  py -m mmgdino.cli info | tee "$OUT/info.txt"
fi

if wants tests; then
  step "tests (marker gpu: every backend on CUDA; the CPU suite runs in CI)"
  # Not -x: a device call is scarce, so one run should show every failure (the first few in full).
  timeout "${MMGDINO_TEST_TIMEOUT:-300}" pytest -q tests -p no:cacheprovider ${MMGDINO_PYTEST_ARGS:--m gpu} \
    --maxfail=30 --tb=short -rfE > "$OUT/tests.log" 2>&1 || status=1
  grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 3
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -n 30
  [ $status = 0 ] || grep -A 30 -E "^_{5,} .* _{5,}$" "$OUT/tests.log" | head -n 120
fi

if wants memcheck; then
  step "compute-sanitizer memcheck (small case)"
  if command -v compute-sanitizer >/dev/null; then
    # Run from tests/, where `python -` finds the tests' input builders (helpers.py).
    (cd tests && timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 python - <<'PY') > "$OUT/memcheck.log" 2>&1
import torch
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
    echo "memcheck exit $?"; tail -n 6 "$OUT/memcheck.log"
  else
    echo "compute-sanitizer not found" | tee "$OUT/memcheck.log"
  fi
fi

if wants bench; then
  step "benchmarks"
  peer_args=()
  [ -n "${MMGDINO_PEER:-}" ] && peer_args=(--peer "$MMGDINO_PEER")
  name=$(py -c "import torch; print(torch.cuda.get_device_name(0).lower().replace(' ', '-'))")
  timeout "${MMGDINO_BENCH_TIMEOUT:-400}" py -m mmgdino.cli bench --device cuda \
    --out "$ROOT/benchmarks/results/ops-$name" "${peer_args[@]}" ${MMGDINO_BENCH_ARGS:-} > "$OUT/bench.log" 2>&1 || status=1
  cat "$OUT/bench.log" | grep -v "^ms_deform_attn \|^contrastive " | tail -n 70
  cp "benchmarks/results/ops-$name".* "$OUT/" 2>/dev/null || true
  step "the memory model against what was measured (issue 14: a miss over 30% gets fixed or said)"
  py -m mmgdino_tools.gpu_model --compare "$ROOT/benchmarks/results/ops-$name.json" \
    --out "$ROOT/benchmarks/results/gpu-model-vs-measured-$name" > "$OUT/model-vs-measured.log" 2>&1 || status=1
  tail -n 30 "$OUT/model-vs-measured.log"
  cp "benchmarks/results/gpu-model-vs-measured-$name".* "$OUT/" 2>/dev/null || true
fi
exit $status

"""GPU memory traffic of the CUDA MSDA kernels, counted exactly by running them unchanged in the emulator's trace
build (cuda_emulator/trace.cpp), and a memory-bound time model for H100 and A100 built on those counts.

    PYTHONPATH=tools python -P -m mmgdino_tools.gpu_model --out benchmarks/results/gpu-model-msda [--quick] \
        [--forward-only] [--dtype D]

Cases: the seed's encoder (batch 1, 22,223 queries, 8 heads x 32 channels, 4 levels x 4 points, MM Grounding
DINO tiny at 800x1333) and decoder (900 queries), float32 and bfloat16, forward and backward. --quick: the
decoder only. Writes <out>.json and <out>.md. The same command with:

    --calibrate [CASE ...] --peer original=DIR --peer dcnv4-flash=DIR --peer msda-triton=DIR \
        --triton-python PYTHON --out benchmarks/results/gpu-model-calibration
    --peer original=DIR --out benchmarks/results/gpu-model-vs-original
    --render A.json [B.json ...] --out OUT     (rows merged, model and tables redone)
    --compare BENCH.json --out OUT             (an `mmgdino bench --device cuda` report beside the model)

--triton (or --triton-only) adds our Triton kernels, counted in Triton's interpreter (triton_trace: exact
addresses per program; the split into warp instructions follows Triton's default blocked layout, approximated).
--peer NAME=DIR traces another implementation beside ours: DIR holds its kernels and an adapter, CUDA ones to our
launcher contract (emulator_build.build_trace) or Triton ones behind DIR/adapter.py (triton_trace, run by
--triton-python). Peers live in the ignored .peers/ and are never committed. --calibrate runs only the
published cases (calibration.CALIBRATION) on their GPUs: ours in float32 and each published peer in its
published dtype.

The counts are exact for the emulated kernels (what Nsight Compute's l1tex/lts sector and request metrics
would report, up to the approximations listed in trace.cpp). The times are MODELED, NOT MEASURED. Calibration
(benchmarks/results/gpu-model-calibration.md): on msda-triton's published pair, the one whose two times are both
kernel times, the modeled ratio is within the 30% rule (29%) but ranks the two the wrong way round, and absolute
times are 0.36-0.46 of the published ones; on DCNv4's, whose second figure times its Python wrapper, it is not
within. The model is a memory roofline and only that: instruction issue, latency and occupancy are not modeled,
so for a kernel that is not bound by memory it is a lower bound, and it cannot rank kernels that differ by less
than about 30%.

One job a module: targets (the GPUs), calibration (the published cases and their rule), tracing (a launch's
counters and a report's row), roofline (the time model), report (the writers), compare (measured beside
modeled), __main__ (the command line).
"""

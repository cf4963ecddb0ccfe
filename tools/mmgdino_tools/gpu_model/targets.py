"""The GPUs the model times kernels on: their published figures (vendor datasheets and whitepapers) where they
exist, and the assumptions where they do not, marked; and which device name is which target."""

# Published figures (vendor datasheets and whitepapers) where they exist; the L2 and atomic rates are
# assumptions from public microbenchmarks, to be replaced by calibration.
TARGETS = {
    "h100": dict(
        name="H100 SXM5",
        arch=900,
        sms=132,
        clock_ghz=1.98,
        dram_tbs=3.35,  # HBM3, datasheet
        l2_mb=50,
        l2_tbs=5.5,  # not published by NVIDIA; public microbenchmarks measure 5.5-7 TB/s
        l1_bytes_per_clock=128,  # one 128-byte wavefront per SM per clock
        atomic_sectors_per_clock=2 * 48,  # assumed: one 32-byte atomic per L2 slice (2 x 48 slices) per clock
        launch_us=3.0,
    ),
    "a100": dict(
        name="A100 SXM4 40GB",
        arch=800,
        sms=108,
        clock_ghz=1.41,
        dram_tbs=1.555,  # HBM2, datasheet
        l2_mb=40,
        l2_tbs=5120 * 1.41e9 / 1e12,  # 5120 bytes/clock, A100 whitepaper
        l1_bytes_per_clock=128,
        atomic_sectors_per_clock=2 * 40,  # assumed, as above (80 L2 slices)
        launch_us=3.0,
    ),
    # The calibration targets: GPUs with published times of two implementations on one stated case.
    "rtx3090": dict(
        name="RTX 3090",
        arch=860,
        sms=82,
        clock_ghz=1.695,  # boost clock, datasheet
        dram_tbs=0.936,  # GDDR6X, datasheet
        l2_mb=6,
        l2_tbs=2.0,  # not published; assumed from public microbenchmarks of GA102
        l1_bytes_per_clock=128,
        atomic_sectors_per_clock=48,  # assumed
        launch_us=3.0,
    ),
    "rtx2060": dict(
        name="RTX 2060",
        arch=750,
        sms=30,
        clock_ghz=1.68,  # boost clock, datasheet
        dram_tbs=0.336,  # GDDR6 at 14 Gbps on 192 bits, datasheet
        l2_mb=3,  # TU106 with three of its four memory partitions
        l2_tbs=1.2,  # assumed: 12 L2 slices x 64 bytes per clock, derated as Turing (T4) microbenchmarks measure
        l1_bytes_per_clock=64,  # Turing halves Volta's L1 throughput (T4 microbenchmarks: 64 bytes/clock/SM)
        atomic_sectors_per_clock=12,  # assumed, as above (12 L2 slices)
        launch_us=3.0,
    ),
}
# The GPU this project's device tool lends: H100's die and caches with HBM3e.
TARGETS["h200"] = dict(TARGETS["h100"], name="H200 SXM", dram_tbs=4.8)  # HBM3e, datasheet
# The modeled tables cover the data-centre targets; the others serve the calibration only.
REPORTED = ("h100", "a100")

# Device names (torch.cuda.get_device_name, lower case) -> target, for --compare.
DEVICE_TARGETS = {"h200": "h200", "h100": "h100", "a100": "a100", "rtx 3090": "rtx3090", "rtx 2060": "rtx2060"}

"""The time model: a memory roofline over a launch's traced counters (DRAM, L2, L1 wavefronts, L2 atomics) on a
target GPU. Times are MODELED, NOT MEASURED; instruction issue, latency and occupancy are not modeled."""

from .targets import TARGETS

SECTOR = 32
LINE = 128


def l2_misses(counters, target):
    """Misses of an LRU cache of the target's L2 size over the traced sector stream: first touches plus the touches
    whose reuse distance reaches the capacity (exact: every L2 size here is a multiple of the histogram's bucket).
    Reports recorded before the histogram carry the misses of each L2 size they simulated (the first Triton
    counter: its compulsory misses, the same for every size)."""
    size = int(TARGETS[target]["l2_mb"] * 2**20)
    if "reuse" not in counters:
        old = counters["l2"]
        simulated = {v.get("bytes", size): v["misses"] for v in old.values()}
        if target in old or size in simulated:
            return old[target]["misses"] if target in old else simulated[size]
        raise ValueError(f"{target}: this trace predates reuse distances and simulated no {size}-byte L2")
    reuse = counters["reuse"]
    capacity, rest = divmod(size // SECTOR, reuse["bucket_sectors"])
    assert rest == 0, f"{target}: L2 size not a multiple of the reuse histogram's bucket"
    return reuse["cold"] + reuse["beyond"] + sum(reuse["counts"][capacity:])


def model(counters, target):
    """Modeled time (µs) of one launch from its counters on `target`, with the bound that limits it and every
    term. DRAM: the L2 misses (read) plus every written sector once (write-back). L2: the sectors that miss L1
    (a block's repeated reads of a sector hit its SM's L1) plus stores and atomics (write-through). L1: one
    wavefront per 128-byte line per request. Atomics: one L2 atomic-unit operation per sector of each request."""
    t = TARGETS[target]
    g = counters["global"]
    dram_bytes = (l2_misses(counters, target) + counters["written_sectors"]) * SECTOR
    l2_bytes = (counters["l1_miss_load_sectors"] + g["store"]["sectors"] + g["atomic"]["sectors"]) * SECTOR
    wavefronts = g["load"]["lines"] + g["store"]["lines"] + g["atomic"]["lines"] + counters["shared"]["wavefronts"]
    terms = {
        "dram": dram_bytes / (t["dram_tbs"] * 1e6),
        "l2": l2_bytes / (t["l2_tbs"] * 1e6),
        "l1": wavefronts * LINE / (t["l1_bytes_per_clock"] * t["sms"] * t["clock_ghz"] * 1e3),
        "atomics": g["atomic"]["sectors"] / (t["atomic_sectors_per_clock"] * t["clock_ghz"] * 1e3),
    }
    bound = max(terms, key=terms.get)
    floor_bytes = counters["distinct_sectors"] * SECTOR
    return {
        "modeled_us": terms[bound] + t["launch_us"],
        "bound": bound,
        "terms_us": terms,
        "dram_bytes": dram_bytes,
        "floor_bytes": floor_bytes,
        "floor_us": floor_bytes / (t["dram_tbs"] * 1e6) + t["launch_us"],
    }


def modeled(row, targets):
    """{target: model(...)} of a traced row, each target modeled on the counters of its architecture's build where
    the row has them (counters_by_arch), else on the row's counters."""
    by_arch = row.get("counters_by_arch", {})
    return {t: model(by_arch.get(str(TARGETS[t]["arch"]), row["counters"]), t) for t in targets}

"""CI: a built mmgdino wheel runs with every torch from the target release on and every CPython from 3.10 on.

    python .ci/check_abi.py WHEEL [WHEEL ...]

For each wheel: its tag is cp3X-abi3 for mmgdino._cuda_build.PYTHON_TARGET; abi3audit finds no symbol outside the
limited API of that Python; torch-abi-audit finds no libtorch symbol outside LibTorch's stable C shims, and the
shims used imply exactly mmgdino._cuda_build.TORCH_TARGET as the oldest torch (a newer shim would raise the floor
silently, an older target would be a claim nobody checked); the build record in the wheel says the same. Needs
the `audit` extra (torch-abi-audit, abi3audit).
"""

import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cuda_build():
    # The checkout's targets, without importing mmgdino (whose extension is not built in the checkout).
    spec = importlib.util.spec_from_file_location("_mmgdino_cuda_build", ROOT / "mmgdino" / "_cuda_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool(module, *args):
    """Runs a tool's command-line entry point with this interpreter (its script may not be on PATH)."""
    code = f"import sys; from {module} import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def check_wheel(wheel, torch_target, python_target):
    failures = []
    python_tag = "cp{}{}".format(*python_target)
    tags = wheel.name[: -len(".whl")].split("-")[-3:]
    if tags[:2] != [python_tag, "abi3"]:
        failures.append(f"tagged {'-'.join(tags)}, expected {python_tag}-abi3-<platform>")

    abi3 = _tool("abi3audit._cli", "--strict", "--summary", str(wheel))
    print(abi3.stdout.strip() or abi3.stderr.strip())
    if abi3.returncode != 0:
        failures.append(f"abi3audit failed:\n{abi3.stdout}{abi3.stderr}")

    expected_floor = "{}.{}.0".format(*torch_target)
    with tempfile.TemporaryDirectory() as unpacked:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
        libraries = sorted(Path(unpacked, "mmgdino").glob("_C*.so"))
        if len(libraries) != 1:
            failures.append(f"expected one mmgdino/_C*.so, found {[p.name for p in libraries]}")
        record = json.loads(Path(unpacked, "mmgdino", "_C.build.json").read_text())
        if record.get("torch_min") != "{}.{}".format(*torch_target):
            failures.append(f"the build record says torch_min {record.get('torch_min')!r}, not {torch_target}")
        for library in libraries:
            audit = _tool("torch_abi_audit.cli", "--json", str(library))
            if audit.returncode not in (0, 1):
                failures.append(f"torch-abi-audit could not inspect {library.name}:\n{audit.stderr}")
                continue
            for extension in json.loads(audit.stdout)["extensions"]:
                torch_abi = extension["torch"]
                unstable = torch_abi["unstable_symbols"]
                floor = torch_abi["min_torch_version"]
                by = ", ".join(torch_abi["version_defining_symbols"])
                print(
                    f"{library.name}: {torch_abi['stable_shim_count']} stable shim symbols, {len(unstable)} outside "
                    f"the stable ABI; implies torch >= {floor} (by {by}); "
                    f"CPython limited API: {'ok' if extension['cpython']['compliant'] else 'VIOLATED'}"
                )
                if not torch_abi["stable"] or unstable:
                    failures.append(f"{library.name} uses libtorch outside the stable ABI: {unstable}")
                if floor != expected_floor:
                    failures.append(f"{library.name} implies torch >= {floor}, the target is {expected_floor}")
                if not extension["cpython"]["compliant"]:
                    failures.append(f"{library.name} breaks the limited API: {extension['cpython']['violations']}")
    return failures


def main():
    wheels = [Path(arg) for arg in sys.argv[1:]]
    if not wheels:
        sys.exit(__doc__)
    build = _cuda_build()
    failed = False
    for wheel in wheels:
        print(f"== {wheel.name}")
        for failure in check_wheel(wheel, build.TORCH_TARGET, build.PYTHON_TARGET):
            print(f"FAIL {failure}")
            failed = True
    if failed:
        return 1
    print(
        f"OK: {len(wheels)} wheel(s) on LibTorch's stable ABI of torch {'.'.join(map(str, build.TORCH_TARGET))} "
        f"and CPython's limited API of {'.'.join(map(str, build.PYTHON_TARGET))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

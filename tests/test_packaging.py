import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mmgdino

REPO = Path(__file__).resolve().parents[1]


def _python(code, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_no_top_level_kernels_package_is_installed(tmp_path):
    """transformers probes for Hugging Face's `kernels`; ours must only exist as mmgdino.kernels."""
    result = _python(
        """
        import importlib.util
        spec = importlib.util.find_spec("kernels")
        print("none" if spec is None else spec.origin or "namespace")
        import mmgdino.kernels
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    origin = result.stdout.strip()
    assert origin == "none" or "mmgdino" not in origin, origin


def test_repo_kernels_folder_is_not_a_regular_package():
    assert (REPO / "kernels").is_dir()
    assert not (REPO / "kernels" / "__init__.py").exists()


def test_transformers_does_not_mistake_our_kernels_for_the_hub_library():
    result = _python(
        """
        from transformers.utils.import_utils import is_kernels_available
        print(is_kernels_available())
        """,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    spec = importlib.util.find_spec("kernels")
    expected = "True" if spec is not None and spec.origin and "mmgdino" not in spec.origin else "False"
    assert result.stdout.strip().splitlines()[-1] == expected


def test_unbuilt_checkout_runs_every_op_on_the_torch_backend(tmp_path):
    result = _python(
        f"""
        import sys
        sys.modules["mmgdino._C"] = None  # as if the extension was never built
        sys.path.insert(0, {str(REPO / "tests")!r})
        import torch, mmgdino
        from helpers import msda_inputs, msda_reference, contrastive_inputs, rel_err
        assert mmgdino._extension.load_error, "expected the extension to be missing"
        for op in ("ms_deform_attn", "contrastive_logits", "contrastive_max"):
            compiled = [b for b in mmgdino.ops.available_backends(op, "cpu") if b not in ("triton", "portable")]
            assert compiled == ["torch"], compiled
        inputs = msda_inputs()
        assert rel_err(mmgdino.ms_deform_attn(*inputs), msda_reference(*inputs)) < 1e-5
        # The raw operator falls back to its pure-PyTorch default kernel.
        assert rel_err(torch.ops.mmgdino.ms_deform_attn(*inputs), msda_reference(*inputs)) < 1e-5
        v, t, m = contrastive_inputs()
        assert mmgdino.contrastive_logits(v, t, m).shape == (2, 7, 256)
        try:
            mmgdino.ms_deform_attn(*inputs, backend="cpu")
        except ValueError as exc:
            assert "not built" in str(exc), exc
        else:
            raise AssertionError("backend='cpu' should be unavailable")
        print("ok")
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_version_and_public_api():
    assert mmgdino.__version__
    for name in ("ms_deform_attn", "contrastive_logits", "contrastive_max", "available_backends"):
        assert callable(getattr(mmgdino.ops, name))
    assert torch.ops.mmgdino.ms_deform_attn.default is not None


@pytest.mark.parametrize(
    "arch_list,capability,runs",
    [
        ("8.0;8.6;8.9;9.0+PTX", (8, 0), True),
        ("8.0;8.6;8.9;9.0+PTX", (8, 7), True),  # an sm_80 cubin runs on any 8.x at or above 8.0
        ("8.0;8.6;8.9;9.0+PTX", (12, 0), True),  # PTX is compiled for newer GPUs when loaded
        ("8.0;8.6;8.9;9.0+PTX", (7, 5), False),  # a T4: "no kernel image is available"
        ("8.6 9.0", (8, 0), False),
        ("9.0a", (9, 0), True),
        ("8.0", (9, 0), False),  # no PTX: a cubin never runs on another major version
        ("Ampere", (8, 0), None),  # named lists are not second-guessed
    ],
)
def test_cuda_arch_list_runs_on(arch_list, capability, runs):
    from mmgdino import _cuda_build

    assert _cuda_build.runs_on(arch_list, capability) is runs


def test_default_build_adds_the_local_gpus_it_would_not_run_on():
    from mmgdino import _cuda_build

    default = _cuda_build.DEFAULT_ARCH_LIST
    assert _cuda_build.with_local_gpus(default, []) == default
    assert _cuda_build.with_local_gpus(default, [(9, 0), (8, 6)]) == default
    assert _cuda_build.with_local_gpus(default, [(7, 5), (7, 5), (9, 0)]) == "7.5;" + default


def test_extension_records_its_cuda_arch_list():
    from mmgdino import _extension

    if not _extension.has_cpu_kernels:
        pytest.skip("extension not built")
    assert isinstance(_extension._C.cuda_arch_list, str)
    if _extension.has_cuda_kernels:
        from mmgdino import _cuda_build

        assert _cuda_build.parse(_extension.cuda_arch_list)
    else:
        assert _extension.cuda_arch_list == ""


def _fake_toolkit(root):
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (root / "include" / "cuda_runtime.h").write_text("")
    return root


@pytest.fixture
def no_toolkit_anywhere(monkeypatch, tmp_path):
    from mmgdino import _cuda_build

    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(_cuda_build, "STANDARD_LOCATIONS", (str(tmp_path / "no-cuda"),))
    monkeypatch.setattr(_cuda_build.sysconfig, "get_paths", lambda: {"purelib": str(tmp_path / "site")})
    return _cuda_build


def test_toolkit_from_cuda_home(no_toolkit_anywhere, tmp_path, monkeypatch):
    root = _fake_toolkit(tmp_path / "cuda-12.8")
    monkeypatch.setenv("CUDA_HOME", str(root))
    assert no_toolkit_anywhere.find_cuda_toolkit()[0] == str(root)


def test_toolkit_from_what_a_wrapper_nvcc_reports(no_toolkit_anywhere, tmp_path, monkeypatch):
    # The machine's case: nvcc on PATH is a script in /usr/local/bin, so torch would guess /usr/local.
    root = _fake_toolkit(tmp_path / "cuda-13.0")
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    nvcc = wrappers / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho '#$ TOP={root}/bin/..' >&2\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("PATH", str(wrappers))
    assert no_toolkit_anywhere.find_cuda_toolkit()[0] == str(root.resolve())


def test_toolkit_from_pip_packages(no_toolkit_anywhere, tmp_path):
    root = _fake_toolkit(tmp_path / "site" / "nvidia" / "cu13")
    assert no_toolkit_anywhere.find_cuda_toolkit()[0] == str(root)


def test_no_toolkit_says_everything_it_tried(no_toolkit_anywhere, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "not-a-toolkit"))
    root, tried = no_toolkit_anywhere.find_cuda_toolkit()
    assert root is None
    text = "; ".join(tried)
    for candidate in ("$CUDA_HOME", "$CUDA_PATH: not set", "nvcc on PATH: none", str(tmp_path / "no-cuda")):
        assert candidate in text


def test_forced_cuda_build_on_cpu_torch_fails_in_one_line(tmp_path):
    if torch.version.cuda is not None:
        pytest.skip("needs the CPU build of torch")
    env = {**os.environ, "MMGDINO_FORCE_CUDA": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "setup.py"), "--name"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"mmgdino: MMGDINO_FORCE_CUDA=1 but torch {torch.__version__} is a CPU build"
    ]


STABLE_CPU = {"torch": "2.13.0+cpu", "torch_min": "2.10", "torch_cuda": None, "cuda_kernels": False}
STABLE_CUDA = {"torch": "2.14.1+cu130", "torch_min": "2.10", "torch_cuda": "13.0", "cuda_kernels": True}


@pytest.mark.parametrize(
    "record, installed_torch, installed_cuda, refused_because",
    [
        (STABLE_CPU, "2.13.0+cpu", None, None),
        (STABLE_CPU, "2.10.0+cu128", "12.8", None),  # the oldest the stable ABI target allows
        (STABLE_CPU, "2.14.1+cu130", "13.0", None),  # newer releases: the stable ABI holds
        (STABLE_CPU, "3.1.0", None, None),
        (STABLE_CPU, "2.9.1+cpu", None, "need torch >= 2.10"),
        (STABLE_CUDA, "2.11.0+cu130", "13.0", None),
        (STABLE_CUDA, "2.13.0+cpu", None, "is a CPU build"),  # needs libcudart and torch's CUDA shims
        (STABLE_CUDA, "2.10.0+cu128", "12.8", "another CUDA runtime"),  # libcudart.so.13 is not there
        (STABLE_CUDA, "2.9.1+cu130", "13.0", "need torch >= 2.10"),
        # Built before the stable ABI (no torch_min): that build's own release only.
        ({"torch": "2.13.0+cpu", "cuda_kernels": False}, "2.13.0+cu130", "13.0", None),
        ({"torch": "2.13.0+cpu", "cuda_kernels": False}, "2.14.1+cu130", "13.0", "install torch==2.13.0"),
        ({}, "2.14.1", None, None),  # no record (never built, or built without one): nothing to compare
    ],
)
def test_extension_guard_refuses_only_what_cannot_load(
    record, installed_torch, installed_cuda, refused_because, monkeypatch
):
    from mmgdino import _extension

    monkeypatch.setattr(_extension.torch, "__version__", installed_torch)
    monkeypatch.setattr(_extension.torch.version, "cuda", installed_cuda)
    message = _extension._torch_mismatch(record)
    if refused_because is None:
        assert message is None
    else:
        assert refused_because in message and installed_torch in message and "\n" not in message


def test_build_records_the_stable_abi_target():
    """The record the import guard reads names the oldest torch the build targets (TORCH_TARGET_VERSION)."""
    from mmgdino import _cuda_build, _extension

    if not _extension.has_cpu_kernels:
        pytest.skip("extension not built")
    assert _extension.build_record["torch_min"] == "{}.{}".format(*_cuda_build.TORCH_TARGET)
    assert _cuda_build.torch_target_macro() == ("TORCH_TARGET_VERSION", "0x020a000000000000")
    # One module for every CPython from the target on: the limited API's file name, not cpython-3XX.
    assert Path(_extension.library_path).name == "_C.abi3.so"


def test_extension_uses_only_the_stable_abi():
    """No symbol outside LibTorch's stable C shims, and none newer than the target release (CI audits the wheels
    the same way in .ci/check_abi.py)."""
    from mmgdino import _cuda_build, _extension

    if not _extension.has_cpu_kernels:
        pytest.skip("extension not built")
    pytest.importorskip("torch_abi_audit", reason="the audit extra is not installed")
    result = _python(
        f"""
        import sys
        from torch_abi_audit.cli import main
        sys.exit(main(["--json", {_extension.library_path!r}]))
        """,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    (extension,) = json.loads(result.stdout)["extensions"]
    assert extension["torch"]["stable"] and not extension["torch"]["unstable_symbols"], extension["torch"]
    assert extension["torch"]["min_torch_version"] == "{}.{}.0".format(*_cuda_build.TORCH_TARGET)
    assert extension["cpython"]["compliant"], extension["cpython"]


def test_every_subpackage_of_the_checkout_is_installed():
    """The wheel holds every package under mmgdino/ (CI runs this against the installed wheel)."""
    packages = sorted(p.parent.name for p in (REPO / "mmgdino").glob("*/__init__.py"))
    assert {"evaluation", "modeling", "ops", "training"} <= set(packages)
    missing = [name for name in packages if importlib.util.find_spec(f"mmgdino.{name}") is None]
    assert not missing, f"not installed: {missing}"

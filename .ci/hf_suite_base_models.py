"""pytest plugin, beside the transformers suite's own (run C of its run.sh): mmgdino's base models too.

The suite's plugin substitutes the detection classes in the MM Grounding DINO and Grounding DINO test modules;
this one substitutes `MMGroundingDinoModel` / `GroundingDinoModel` with mmgdino's, in the same way: while such a
test module is imported, `transformers.<Name>` is mmgdino's class (so `from transformers import <Name>` binds it),
then transformers' attribute is restored and any reference the module's test classes kept (all_model_classes,
pipeline_model_mapping, module globals) is swapped as well. Active only when HF_SUITE_MODE is C; loaded with
`-p hf_suite_base_models` with this folder on PYTHONPATH (.ci/transformers_suite.sh does both). It writes
substituted-base-models.json into HF_SUITE_OUT.
"""

import importlib
import json
import os
import sys

import pytest

BASE_MODELS = {
    "test_modeling_mm_grounding_dino.py": "MMGroundingDinoModel",
    "test_modeling_grounding_dino.py": "GroundingDinoModel",
}
ACTIVE = os.environ.get("HF_SUITE_MODE", "A").upper() == "C"
substituted = []


def swap(module, original, replacement):
    """Where the test module kept `original`: its globals and its test classes' model lists."""
    places = []
    for key, value in list(vars(module).items()):
        if value is original:
            setattr(module, key, replacement)
            places.append(key)
        elif isinstance(value, type):
            classes = value.__dict__.get("all_model_classes")
            if isinstance(classes, tuple) and original in classes:
                value.all_model_classes = tuple(replacement if c is original else c for c in classes)
                places.append(f"{key}.all_model_classes")
            mapping = value.__dict__.get("pipeline_model_mapping")
            if isinstance(mapping, dict) and original in mapping.values():
                value.pipeline_model_mapping = {k: replacement if v is original else v for k, v in mapping.items()}
                places.append(f"{key}.pipeline_model_mapping")
    return places


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    name = BASE_MODELS.get(os.path.basename(str(collector.path))) if isinstance(collector, pytest.Module) else None
    if not ACTIVE or name is None:
        yield
        return
    import mmgdino

    try:  # the suite's pipeline mixin imports transformers anew: the test module reads that module object
        importlib.import_module("tests.test_pipeline_mixin")
    except ImportError:
        pass
    transformers = sys.modules["transformers"]
    original, replacement = getattr(transformers, name), getattr(mmgdino, name)
    setattr(transformers, name, replacement)
    try:
        yield
    finally:
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", None) == "transformers" and module.__dict__.get(name) is replacement:
                setattr(module, name, original)
    module = getattr(collector, "_obj", None)
    places = swap(module, original, replacement) if module is not None else []
    substituted.append({"module": str(collector.path), "name": name, "bound_to": f"mmgdino.{name}",
                        "swapped_after_import": places})  # fmt: skip


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("HF_SUITE_OUT")
    if ACTIVE and out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "substituted-base-models.json"), "w") as f:
            json.dump(substituted, f, indent=1)

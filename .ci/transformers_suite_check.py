"""CI's verdict on transformers' suite (.ci/transformers_suite.sh): exit 1 on any test that passes in the baseline
(A.xml) and fails, errors or does not run in B or C, unless the exceptions file lists it and its failure shows the
listed text. Prints each such test with its first error line.

    python .ci/transformers_suite_check.py RESULTS_DIR EXCEPTIONS_FILE [RUNS]
"""

import os
import sys
import xml.etree.ElementTree as ET


def outcomes(path):
    """test id (file::class::name, as the suite's compare.py names them) -> (status, failure text)."""
    found = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        file = os.path.basename(case.get("file") or case.get("classname", "").replace(".", "/"))
        name = f"{file}::{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        status, text = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                status, text = tag, f"{node.get('message') or ''}\n{node.text or ''}"
                break
        found[name] = (status, text)
    return found


def exceptions(path):
    listed = {}
    for line in open(path):
        if line.strip() and not line.startswith("#"):
            run, test, text, reason = (field.strip() for field in line.split("|", 3))
            listed[(run, test)] = (text, reason)
    return listed


def regressions(baseline, tests, run):
    """Tests passing in the baseline that fail here or are missing (C runs only the Grounding DINO files)."""
    for name, (status, _) in baseline.items():
        if status != "passed" or (run == "C" and ("DeformableDetr" in name or "deformable_detr" in name)):
            continue
        got, text = tests.get(name, ("did not run", ""))
        if got in ("failure", "error", "did not run"):
            yield name, got, text


def main(results, exceptions_file, runs="BC"):
    baseline = outcomes(os.path.join(results, "A.xml"))
    allowed = exceptions(exceptions_file)
    unexpected = 0
    for run in runs:
        path = os.path.join(results, f"{run}.xml")
        if not os.path.exists(path):
            print(f"run {run}: no {path} (the run did not complete)")
            unexpected += 1
            continue
        tests = outcomes(path)
        counts = {s: sum(1 for status, _ in tests.values() if status == s) for s in ("passed", "failure", "error")}
        print(f"run {run}: {len(tests)} tests, {counts['passed']} passed, {counts['failure']} failed, "
              f"{counts['error']} errors")  # fmt: skip
        for name, status, text in regressions(baseline, tests, run):
            text_needed, reason = allowed.get((run, name), (None, None))
            first = next((line for line in text.splitlines() if line.startswith("E ")), text.strip()[:200])
            if text_needed is not None and text_needed in text:
                print(f"  allowed ({reason}): {name}")
            else:
                unexpected += 1
                print(f"  REGRESSION {name} ({status}): {first}")
    print(f"{unexpected} test(s) pass in transformers' baseline and fail with mmgdino beyond the listed exceptions")
    return 1 if unexpected else 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    sys.exit(main(*sys.argv[1:]))

#!/usr/bin/env bash
# transformers' own model tests against the installed mmgdino (the suite in ../shared/transformers-suite): run B
# (every transformers model the tests build, patched with mmgdino.patch) and run C (the MM Grounding DINO and
# Grounding DINO test modules' detection classes, and with .ci/hf_suite_base_models.py their base models, replaced
# by mmgdino's). Fails on any test that passes in transformers' baseline and fails or does not run with ours,
# beyond the exceptions .ci/transformers_suite_exceptions.txt lists with their reasons.
#
#   bash .ci/transformers_suite.sh [RUNS]          RUNS: B, C or BC (default)
#
# The suite's files are transformers 5.25.0's and its runner refuses another release, so it runs in a venv of its
# own (.ci-suite-venv) with that release pinned, layered over the venv that holds the mmgdino under test (torch,
# the built extension, pytest come from there, unchanged): a new transformers release cannot break this step, and
# the project's own tests keep running against the newest transformers in that venv.
#   MMGDINO_CI_VENV             the venv with mmgdino installed (default .ci-venv, the one .ci/run builds)
#   MMGDINO_TRANSFORMERS_SUITE  the suite's folder (default ../shared/transformers-suite)
#   HF_SUITE_RESULTS            where the results go (default transformers-suite-results; git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-BC}
BASE=${MMGDINO_CI_VENV:-.ci-venv}
SUITE=${MMGDINO_TRANSFORMERS_SUITE:-../shared/transformers-suite}
VENV=${MMGDINO_SUITE_VENV:-.ci-suite-venv}
SUITE_TRANSFORMERS=5.25.0
export HF_SUITE_RESULTS=${HF_SUITE_RESULTS:-transformers-suite-results}

[ -f "$SUITE/run.sh" ] || { echo "no transformers suite at $SUITE (set MMGDINO_TRANSFORMERS_SUITE)" >&2; exit 2; }
"$BASE/bin/python" -c "import mmgdino, torch" 2>/dev/null \
  || { echo "$BASE has no mmgdino to test (build it first: .ci/run, or set MMGDINO_CI_VENV)" >&2; exit 2; }
start=$(date +%s)

echo "== transformers suite: a venv with transformers $SUITE_TRANSFORMERS over $BASE"
rm -rf "$VENV"
"$BASE/bin/python" -m venv "$VENV"
site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
base_site=$(cd "$(site_of "$BASE/bin/python")" && pwd)
# The base venv's packages come after this venv's own: a .pth line that imports runs site.addsitedir, which also
# reads the base venv's .pth files (the editable mmgdino's among them).
echo "import site; site.addsitedir('$base_site')" > "$(site_of "$VENV/bin/python")/zz-mmgdino-ci-base.pth"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q "transformers==$SUITE_TRANSFORMERS" parameterized datasets \
  scipy pytest-timeout 2>&1 | grep -v "outside environment" || true
PY="$PWD/$VENV/bin/python"
"$PY" -c "import transformers; assert transformers.__version__ == '$SUITE_TRANSFORMERS', transformers.__version__"

# run.sh's exit status counts every regression; the check below allows the listed exceptions (2: it cannot run).
status=0
PYTHONPATH="$PWD/.ci${PYTHONPATH:+:$PYTHONPATH}" PYTEST_ADDOPTS="-p hf_suite_base_models ${PYTEST_ADDOPTS:-}" PY="$PY" \
  bash "$SUITE/run.sh" "$RUNS" > "$HF_SUITE_RESULTS.log" 2>&1 || status=$?
grep -E "^== run|^   exit" "$HF_SUITE_RESULTS.log" || true
if [ "$status" -gt 1 ]; then
  tail -n 20 "$HF_SUITE_RESULTS.log"
  exit "$status"
fi
"$PY" .ci/transformers_suite_check.py "$HF_SUITE_RESULTS" .ci/transformers_suite_exceptions.txt "$RUNS"
echo "transformers suite: $(( $(date +%s) - start )) s (summary: $HF_SUITE_RESULTS/summary.md)"

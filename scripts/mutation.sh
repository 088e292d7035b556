#!/usr/bin/env bash
# Mutation testing (mutmut 3) of one numeric-core module against the tests that cover it; not run in CI (minutes
# per module). The work lives in .mutation/<module>/ (a copy of the tree), so a rerun continues where the last one
# stopped and re-tests only what changed. Usage:
#   scripts/mutation.sh gnr650/summary/significance.py            # the module's tests from the table below
#   scripts/mutation.sh gnr650/data/splits.py tests/data/test_data.py  # or name the tests
# MUTATION_TIME_LIMIT (seconds, default 3600) bounds the run; the results so far are printed either way.
# MUTATION_ONLY (space-separated globs of mutant names, e.g. '*x_fingerprint*') runs and scores only those mutants.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
module="${1:?usage: scripts/mutation.sh gnr650/<module>.py [tests...]}"
shift
[ -f "$repo/$module" ] || { echo "scripts/mutation.sh: error: no such module: $module" >&2; exit 2; }

if [ $# -gt 0 ]; then
  tests=("$@")
else
  case "$module" in
    gnr650/finetune/*) tests=(tests/finetune) ;;
    gnr650/interpret/*) tests=(tests/interpret/test_analysis.py tests/interpret/test_change.py tests/interpret/test_interpret.py) ;;
    gnr650/summary/*) tests=(tests/summary/test_significance.py tests/summary/test_changes.py tests/summary/test_summary.py) ;;
    gnr650/data/*) tests=(tests/data) ;;
    gnr650/inference/*) tests=(tests/inference) ;;
    gnr650/training/*) tests=(tests/training) ;;
    *) echo "scripts/mutation.sh: error: no test table entry for $module; name the tests after it" >&2; exit 2 ;;
  esac
fi

work="$repo/.mutation/$(echo "${module%.py}" | tr / _)"
mkdir -p "$work"
# A fresh copy of the tracked and new files (mutmut mutates its own copy under $work/mutants/).
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work")
toml_list() { printf '"%s", ' "$@" | sed 's/, $//'; }
cat >> "$work/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["gnr650"]
only_mutate = ["$module"]
also_copy = ["configs", "docs", "scripts", "README.md", "train.py", "eval.py"]  # what tests read besides tests/
pytest_add_cli_args_test_selection = [$(toml_list "${tests[@]}")]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
TOML

cd "$work"
# mutmut forks one child per mutant; a forked child whose parent had started torch's OpenMP pool hangs in its first
# parallel op and is recorded as a timeout (counted as killed), hiding survivors: one thread per process.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
status=0
run() { timeout "${MUTATION_TIME_LIMIT:-3600}" mutmut run --max-children "${MUTATION_CHILDREN:-2}" "$@" >>mutmut-run.log 2>&1; }
: >mutmut-run.log
read -ra only <<<"${MUTATION_ONLY:-}"
run "${only[@]}" || status=$?
# mutmut keeps a verdict until the mutated function changes: retest the survivors and the uncovered, the tests may be new.
survivors=$(mutmut results 2>/dev/null | awk -F: '/: (survived|no tests)$/ {gsub(/ /, "", $1); print $1}' |
  python -c 'import fnmatch, os, sys; pats = os.environ.get("MUTATION_ONLY", "").split()
print(" ".join(n for n in sys.stdin.read().split() if not pats or any(fnmatch.fnmatch(n, p) for p in pats)))')
[ "$status" -eq 0 ] && [ -n "$survivors" ] && { run $survivors || status=$?; }
[ "$status" -eq 124 ] && echo "stopped at MUTATION_TIME_LIMIT; rerun to continue"
[ "$status" -ne 0 ] && [ "$status" -ne 124 ] && { tail -20 mutmut-run.log; exit "$status"; }
python - "$module" <<'PY'
"""Score from mutmut's own result list: killed / (killed + survived); timeouts count as killed, as mutmut does."""
import fnmatch, os, subprocess, sys
out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True).stdout
pats = os.environ.get("MUTATION_ONLY", "").split()
lines = [line for line in out.splitlines() if ":" in line]
lines = [line for line in lines if not pats or any(fnmatch.fnmatch(line.rsplit(":", 1)[0].strip(), p) for p in pats)]
out = "\n".join(lines)
states = [line.rsplit(":", 1)[1].strip() for line in lines]
killed = sum(s in ("killed", "timeout") for s in states)
timeouts = states.count("timeout")
survived = [line.strip() for line in out.splitlines() if line.rstrip().endswith("survived")]
print("\n".join(survived))
total = killed + len(survived)
print(f"{sys.argv[1]}: {killed}/{total} mutants killed ({killed / max(total, 1):.0%}, {timeouts} of them by timeout); "
      f"{len(states) - total} not checked (no test covers them, or not run yet). Inspect one: cd {__import__('os').getcwd()} && mutmut show NAME")
PY

#!/usr/bin/env bash
# Run clawden's checks on this machine (Debian/Ubuntu, as root): tooling and
# host provisioning first (the integration tests need real libvirtd), then
# ruff, mypy, the import rules and pytest over all of tests/ (unit and
# integration).
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -k provision    # extra arguments go to pytest
#
# Exit status: pytest's own when it fails (5 = no tests collected counts as a
# failure); otherwise 1 if ruff, mypy or the import rules failed; 0 when all
# passed. Those failures do not stop pytest, so one CI run reports everything.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit

step() { printf '\n== %s\n' "$*"; }

step "bootstrap (Debian packages, .venv)"
bash scripts/bootstrap.sh --with-test-tools || exit
step "host provisioning"
.venv/bin/clawden host provision || exit

lint_failed=0
step "ruff"
# Only the directories that exist: git does not keep empty ones, and a
# missing bench/ must not read as a lint failure.
lint_dirs=()
for dir in appliance provisioning web tests bench; do
    [[ -d $dir ]] && lint_dirs+=("$dir")
done
.venv/bin/ruff check "${lint_dirs[@]}" || lint_failed=1
step "mypy"
.venv/bin/mypy || lint_failed=1  # files and strictness come from pyproject.toml
step "import rules"
.venv/bin/lint-imports --no-cache || lint_failed=1  # contracts: pyproject.toml [tool.importlinter]

step "pytest"
# No path argument: pytest's testpaths (pyproject.toml) is all of tests/.
.venv/bin/pytest -ra "$@"
rc=$?
if ((rc != 0)); then
    exit "$rc"
fi
if ((lint_failed)); then
    printf '\ntests passed, but ruff, mypy or the import rules reported problems (see above)\n' >&2
    exit 1
fi

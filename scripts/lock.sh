#!/usr/bin/env bash
# Regenerate the host's Python lock files from pyproject.toml, on purpose.
#
#   bash scripts/lock.sh                             # keep every pin that still fits
#   bash scripts/lock.sh --upgrade-package fastapi   # move one package (repeatable)
#   bash scripts/lock.sh --upgrade                   # move everything to the newest
#
# Writes, each an exact `name==version` pin with the sha256 of every file PyPI
# has for that version (x86_64 and aarch64 hosts install from the same lock):
#   requirements/build.lock  pip, setuptools, wheel: the installer, and what
#                            builds libvirt-python (an sdist) and clawden itself
#                            (bootstrap builds with --no-build-isolation, so
#                            nothing unpinned is fetched for a build)
#   requirements/host.lock   the runtime dependencies, less build.lock: all that
#                            an appliance (scripts/up.sh) installs besides it
#   requirements/test.lock   the `test` extra's closure, less the two above
# All three come from one resolution, so a package shared by two layers has
# one version.
#
# The guest image's Python packages (images/guest-requirements.txt) are
# constraints: openai must be the very release the host's tests run the
# adapter against, so it is never upgraded here. To move openai, regenerate
# the guest list first (the procedure is at its top), then run this script.
# The other packages both sides use (pydantic, anyio, ...) are kept at the
# guest's versions too; if that cannot be resolved, only openai is held and
# the packages that then differ are listed.
#
# Runs uv (pinned below) from a throwaway venv against PyPI: what is installed
# on this machine, and uv or pip settings, play no part. uv reads the metadata
# of libvirt-python's sdist without building it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

UV_VERSION=0.13.9
OUT=requirements
GUEST=images/guest-requirements.txt
# Debian 12's Python; uv resolves for it and every newer Python, on any Linux
# machine, recording markers where a dependency differs.
PYTHON_VERSION=3.11

usage() { sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
say() { printf 'lock: %s\n' "$*"; }
die() { printf 'lock: %s\n' "$*" >&2; exit 1; }

upgrade=()
while (($#)); do
    case $1 in
        --upgrade) upgrade+=(--upgrade) ;;
        --upgrade-package | --upgrade-package=*)
            if [[ $1 == *=* ]]; then
                package=${1#*=}
            else
                (($# >= 2)) || die "--upgrade-package needs a package name"
                package=$2
                shift
            fi
            upgrade+=(--upgrade-package "$package")
            if [[ ${package,,} == openai ]]; then
                say "note: openai follows $GUEST; change it there first (see its header)"
            fi ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

# No uv setting from the environment (another index, constraints, a cutoff
# date) may leak into the lock.
for var in $(compgen -e); do
    if [[ $var == UV_* ]]; then unset "$var"; fi
done

WORK=$(mktemp -d -t clawden-lock.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/log"

say "installing uv $UV_VERSION into a throwaway venv"
/usr/bin/python3 -m venv "$WORK/venv" >"$LOG" 2>&1 || { cat "$LOG" >&2; die "venv failed"; }
"$WORK/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "uv==$UV_VERSION" >"$LOG" 2>&1 || { cat "$LOG" >&2; die "installing uv failed"; }
UV="$WORK/venv/bin/uv"

# uv runs inside $WORK on copies, so the lock files' "via" notes name
# pyproject.toml and build.in, not this machine's paths.
cp pyproject.toml "$WORK/pyproject.toml"
cd "$WORK"

# build.in: [build-system] requires from pyproject.toml, plus pip.
/usr/bin/python3 - >build.in <<'PY'
import tomllib

with open("pyproject.toml", "rb") as f:
    requires = tomllib.load(f)["build-system"]["requires"]
print("# [build-system] requires of pyproject.toml (setuptools also builds libvirt-python)")
print("\n".join(requires))
print("# the installer (sqlite-utils depends on it too)")
print("pip")
PY

# The guest's pins as plain constraints (its hashes are for one wheel each),
# at the same relative path, so the locks say "via -c $GUEST".
mkdir -p "$(dirname "$GUEST")"
sed -n 's/^\([a-z0-9][a-z0-9-]*==[^ ]*\) .*/\1/p' "$REPO/$GUEST" >"$GUEST"
guest_openai=$(sed -n 's/^openai==//p' "$GUEST")
[[ -n $guest_openai ]] || die "no openai==VERSION pin found in $GUEST"
printf 'openai==%s\n' "$guest_openai" >guest-openai.txt

# Today's pins are uv's preferences: a pin moves only when pyproject.toml no
# longer admits it or an --upgrade option frees it.
for layer in build host test; do
    if [[ -f "$REPO/$OUT/$layer.lock" ]]; then cat "$REPO/$OUT/$layer.lock"; fi
done >resolution.txt

compile() {
    "$UV" pip compile --quiet --no-config --universal --python-version "$PYTHON_VERSION" \
        --custom-compile-command "bash scripts/lock.sh" "$@"
}

# 1. One resolution of everything, which the layers below are held to.
say "resolving pyproject.toml (runtime, test extra, build) with openai==$guest_openai"
held=$GUEST
if ! compile pyproject.toml --extra test build.in -c "$held" "${upgrade[@]}" \
        -o resolution.txt >"$LOG" 2>&1; then
    say "cannot keep every package shared with $GUEST at the guest's version:"
    sed 's/^/    /' "$LOG" >&2
    say "retrying with only openai held to the guest's version"
    held=guest-openai.txt
    compile pyproject.toml --extra test build.in -c "$held" "${upgrade[@]}" \
        -o resolution.txt >"$LOG" 2>&1 || {
        cat "$LOG" >&2
        die "pyproject.toml cannot be resolved with openai==$guest_openai ($GUEST)"
    }
fi

# 2. The layers, with hashes, each held to that resolution and without the
# packages of the layers before it.
written=()
layer() {
    local name=$1 skip=()
    shift
    if ((${#written[@]})); then
        mapfile -t skip < <(sed -n 's/^\([a-z0-9][a-z0-9-]*\)==.*/--no-emit-package=\1/p' \
                                "${written[@]}")
    fi
    compile --generate-hashes "$@" -c resolution.txt -c "$held" "${skip[@]}" \
        -o "$name.lock" >"$LOG" 2>&1 || { cat "$LOG" >&2; die "$name.lock failed"; }
    written+=("$name.lock")
}
say "writing $OUT/build.lock, $OUT/host.lock, $OUT/test.lock"
layer build build.in
layer host pyproject.toml
layer test pyproject.toml --extra test

# Shared packages that ended up at another version than the guest's (only
# after the retry above); openai cannot be among them.
while IFS='=' read -r name _ version; do
    host=$(sed -n "s/^$name==\([^ ]*\).*/\1/p" build.lock host.lock test.lock | head -n1)
    if [[ -n $host && $host != "$version" ]]; then
        say "WARNING: $name is $host on the host but $version in $GUEST"
    fi
done <"$GUEST"

mkdir -p "$REPO/$OUT"
for layer in build host test; do
    cp "$layer.lock" "$REPO/$OUT/$layer.lock"
done
cd "$REPO"
say "done; review with: git diff -- $OUT/"
say "then install with: bash scripts/bootstrap.sh --with-test-tools"

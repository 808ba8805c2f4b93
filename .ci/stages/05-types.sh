#!/usr/bin/env bash
# Stage 05: static types. mypy --strict over src/rolewire, with the settings
# of pyproject.toml's [tool.mypy] (python_version 3.10; overrides only for
# the modules that have no type information). Any error fails the stage.
# About 10-30 s (a cold cache, in a temp dir).
#
# Runs with the CI venv active (.ci/run): the project and its test extra
# (nats-py, httpx, starlette, PyJWT... whose types mypy reads) are there
# already; this adds mypy and the cffi stubs at the versions pinned in the
# dev extra, so a local `pip install -e '.[dev]'` checks the same way.
set -euo pipefail
cd "$(dirname "$0")/../.."
t0=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rolewire-types.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

mapfile -t tools < <(python - <<'PY'
try:
    import tomllib
except ImportError:  # Python 3.10: tomli is a dependency there
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
names = ("mypy", "types-")
for req in dev:
    if req.split(";")[0].strip().lower().startswith(names):
        print(req)
PY
)
[ "${#tools[@]}" -ge 2 ] || { echo "no mypy/stub pins in the dev extra of pyproject.toml"; exit 1; }
python -m pip install -q "${tools[@]}"
echo "-- [05-types] $(python -m mypy --version) (${tools[*]})"
python -m mypy --cache-dir "$WORK/cache"
echo "-- [05-types] mypy --strict: no errors ($((SECONDS - t0))s)"

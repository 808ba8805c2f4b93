#!/usr/bin/env bash
# Stage 40: the documentation site builds (MkDocs + mkdocstrings, strict: a
# broken link, a missing page or an unresolvable ::: reference fails). The
# API pages come from static analysis of src/ (griffe), so this needs no
# build of the extension; it takes a few seconds. Output goes to a temp dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
t0=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rolewire-docs.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
python -m pip install -q "mkdocs>=1.6" "mkdocstrings[python]>=0.26"
python -m mkdocs build --strict --quiet --site-dir "$WORK/site"
pages=$(find "$WORK/site" -name index.html | wc -l)
grep -q 'rolewire.record.RecordLayer' "$WORK/site/api/index.html" \
    || { echo "API reference lacks RecordLayer"; exit 1; }
echo "-- [40-docs] site built: $pages pages, API reference included ($((SECONDS - t0))s)"

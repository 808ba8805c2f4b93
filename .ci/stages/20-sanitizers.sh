#!/usr/bin/env bash
# Stage 20: the C core under AddressSanitizer + UndefinedBehaviorSanitizer,
# then under valgrind memcheck.
#
# The extension is rebuilt twice from a clean export of the tree into
# separate temp directories (never over the editable install's in-place .so):
#   asan/   -fsanitize=address,undefined -fno-sanitize-recover=undefined
#   plain/  the normal flags plus -g (for valgrind: it needs an uninstrumented
#           build, and debug info for readable reports)
# Each build is a complete package (build_py + build_ext) put first on
# PYTHONPATH; the stage prints rolewire._native.__file__ to prove which .so
# was imported.
#
# ASan: the interpreter is not instrumented, so libasan must be loaded first
# (LD_PRELOAD); libubsan comes in as a dependency of the extension.
# detect_leaks=0 because CPython does not free everything at exit by design
# (interned strings, static types, module state of C extensions such as
# cffi's and PyNaCl's): LeakSanitizer would report those, not our bugs. The
# C core's own frees are still checked (use-after-free, double free) and its
# key material lives in objects freed by ffi.gc, exercised by the tests.
# PYTHONMALLOC=malloc sends every Python allocation through malloc, so ASan
# also sees overflows into Python-owned buffers (cffi output buffers,
# bytearrays handed to the C core).
#
# Env: SANITIZER_TESTS / VALGRIND_TESTS override the test selections.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib.sh
. .ci/lib.sh
ROOT=$PWD
t0=$SECONDS
step() { echo "-- [20-sanitizers +$((SECONDS - t0))s] $*"; }

if [ "$(uname -s)" != Linux ] || ! command -v gcc >/dev/null; then
    echo "sanitizer stage needs Linux and gcc; skipped"; exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rolewire-san.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

step "tools"
# setup.py is run directly (no build isolation): it needs these in the venv.
python -m pip install -q "setuptools>=68" wheel "cffi>=1.17"

step "clean export of the source tree"
export_tree "$WORK/src"

build() {  # build <dest> <cflags> <ldflags>
    (cd "$WORK/src" && ROLEWIRE_CFLAGS="$2" ROLEWIRE_LDFLAGS="$3" \
        python setup.py -q build --build-lib "$1" --build-temp "$1.tmp" --force \
        > "$1.log" 2>&1) || { cat "$1.log"; exit 1; }
}

SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1 -g"
step "build with $SAN_FLAGS"
build "$WORK/asan" "$SAN_FLAGS" "-fsanitize=address,undefined"
step "build for valgrind (-g)"
build "$WORK/plain" "-g" ""

readelf -d "$WORK/asan/rolewire/_native.abi3.so" | grep -q 'libasan' \
    || { echo "sanitized build does not link libasan"; exit 1; }
readelf -d "$WORK/asan/rolewire/_native.abi3.so" | grep -q 'libubsan' \
    || { echo "sanitized build does not link libubsan"; exit 1; }

LIBASAN=$(gcc -print-file-name=libasan.so)
[ -e "$LIBASAN" ] || { echo "libasan.so not found (gcc -print-file-name)"; exit 1; }
SAN_TESTS=${SANITIZER_TESTS:-"tests/test_record.py tests/test_replay_window.py tests/test_differential.py tests/test_vectors.py tests/test_limits.py tests/regressions"}

san_env() {
    env PYTHONPATH="$WORK/asan" PYTHONMALLOC=malloc LD_PRELOAD="$LIBASAN" \
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$WORK/reports/asan" \
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$WORK/reports/ubsan" \
        "$@"
}
mkdir -p "$WORK/reports"


# valgrind runs in the background (it takes longest; this machine has two
# cores) while the ASan+UBSan tests run in the foreground. tests/test_record.py,
# all of it, takes ~2.5 min under memcheck here with --track-origins (needed
# to attribute uninitialised values, see vg_check.py below).
VG_TESTS=${VALGRIND_TESTS:-"tests/test_record.py"}
vg_pid=""
if command -v valgrind >/dev/null; then
    mkdir -p "$WORK/vg-tests" "$WORK/vg-canary"
    step "valgrind memcheck started in the background: $VG_TESTS"
    vg0=$SECONDS
    # shellcheck disable=SC2086
    PYTHONPATH="$WORK/plain" PYTHONMALLOC=malloc HYPOTHESIS_PROFILE=dev \
        valgrind --tool=memcheck --errors-for-leak-kinds=none --leak-check=no \
            --track-origins=yes --num-callers=40 --log-file="$WORK/vg-tests/%p.log" \
            python -m pytest -q -p no:cacheprovider $VG_TESTS > "$WORK/vg-tests/pytest.out" 2>&1 &
    vg_pid=$!
    trap 'kill "$vg_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
else
    echo "valgrind not installed; memcheck run skipped"
fi

step "which extension is imported"
san_env python -c 'import rolewire, rolewire._native as n; print("rolewire:", rolewire.__file__); print("rolewire._native:", n.__file__)' \
    | tee "$WORK/which.txt"
grep -q "rolewire._native: $WORK/asan/rolewire/_native.abi3.so" "$WORK/which.txt" \
    || { echo "the sanitized extension was not the one imported"; exit 1; }

# A deliberate 4-byte heap overflow through rw_seal (its capacity lied
# about): proves each checker is live in this build and environment.
cat > "$WORK/canary.py" <<'PY'
from rolewire._native_loader import ffi, lib
limits = ffi.new("rw_limits *", {"soft_messages": 10, "soft_bytes": 1 << 20,
                                 "hard_messages": 10, "hard_bytes": 1 << 20,
                                 "max_plaintext": 1024})
s = lib.rw_sender_new(1, bytes(32), bytes(12), 0, limits)
buf = ffi.new("char[]", 10)                  # a record needs 14 + 0 + 16 bytes
lib.rw_seal(s, b"", 0, buf, 30, ffi.NULL)    # lie about the capacity
print("NOT DETECTED")
PY

step "self-check: ASan catches a deliberate heap overflow"
set +e
san_env ASAN_OPTIONS="detect_leaks=0" python "$WORK/canary.py" > "$WORK/canary.txt" 2>&1
canary=$?
set -e
if [ $canary -eq 0 ] || ! grep -q "heap-buffer-overflow" "$WORK/canary.txt"; then
    cat "$WORK/canary.txt"; echo "ASan did not catch the deliberate overflow"; exit 1
fi
echo "caught: $(grep -m1 -o 'heap-buffer-overflow on address [0-9a-fx]*' "$WORK/canary.txt")"

step "tests under ASan+UBSan: $SAN_TESTS"
# shellcheck disable=SC2086
san_env python -m pytest -q -p no:cacheprovider $SAN_TESTS
if ls "$WORK"/reports/* >/dev/null 2>&1; then
    cat "$WORK"/reports/*; echo "sanitizer reports found"; exit 1
fi
echo "ASan/UBSan: no reports ($((SECONDS - t0))s into the stage)"

if [ -z "$vg_pid" ]; then
    step "done in $((SECONDS - t0))s"
    exit 0
fi

# CPython 3.11 itself is not clean under memcheck (maybe_small_long() reads
# the digit of a zero-size int, glibc's AVX2 wmemcmp over-reads, ...), so
# valgrind's exit status cannot be the verdict. vg_check.py attributes each
# error: it is rolewire's when its stack, or the origin of the uninitialised
# value, runs through the extension (record.c, replay.c), PyNaCl's libsodium
# or cffi's backend (whose buffers the C core fills).
cat > "$WORK/vg_check.py" <<'PY'
import re
import sys
from pathlib import Path

OURS = re.compile(r"_native\.abi3\.so|record\.c:|replay\.c:|\brw_\w+ \(|_sodium\.abi3\.so"
                  r"|_cffi_backend")
KIND = re.compile(r"^==\d+== (Invalid (read|write|free)|Conditional jump|Use of uninitialised"
                  r"|Syscall param|Mismatched free|Source and destination overlap|Argument "
                  r"|Jump to the invalid address|Process terminating)")
ours, others = [], {}
for log in sorted(Path(sys.argv[1]).glob("*.log")):
    block = None
    for line in [*log.read_text(errors="replace").splitlines(), "==0== "]:
        if block is None:
            if KIND.match(line):
                block = [line]
            continue
        if re.fullmatch(r"==\d+== ?", line):
            text = "\n".join(block)
            if OURS.search(text):
                ours.append(text)
            else:
                kind = re.sub(r"^==\d+== ", "", block[0])
                others[kind] = others.get(kind, 0) + 1
            block = None
        else:
            block.append(line)
for kind, n in sorted(others.items()):
    print(f"  not rolewire's (CPython/glibc internals): {n} x {kind}")
for text in ours:
    print(text)
print(f"valgrind: {len(ours)} error(s) attributed to rolewire's C core, libsodium or cffi")
sys.exit(1 if ours else 0)
PY

step "self-check: valgrind reports a deliberate heap overflow in the C core"
PYTHONPATH="$WORK/plain" PYTHONMALLOC=malloc valgrind --tool=memcheck --leak-check=no \
    --errors-for-leak-kinds=none --log-file="$WORK/vg-canary/%p.log" \
    python "$WORK/canary.py" > /dev/null 2>&1 || true
if python "$WORK/vg_check.py" "$WORK/vg-canary" > "$WORK/vg-canary.txt"; then
    cat "$WORK/vg-canary.txt"; echo "valgrind did not report the deliberate overflow"; exit 1
fi
echo "caught: $(grep -m1 -o 'Invalid write of size [0-9]*' "$WORK/vg-canary.txt")" \
    "in $(grep -m1 -o '[a-z_0-9]* (record\.c:[0-9]*)' "$WORK/vg-canary.txt")"

step "waiting for valgrind memcheck ($VG_TESTS)"
vg_rc=0
wait "$vg_pid" || vg_rc=$?
tail -n 1 "$WORK/vg-tests/pytest.out"
if [ $vg_rc -ne 0 ]; then
    cat "$WORK/vg-tests/pytest.out"; echo "tests failed under valgrind"; exit 1
fi
python "$WORK/vg_check.py" "$WORK/vg-tests"
echo "valgrind memcheck: $((SECONDS - vg0))s"
step "done in $((SECONDS - t0))s"

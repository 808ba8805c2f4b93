#!/usr/bin/env bash
# Stage 30: bounded fuzzing of the record open path, the replay window and
# every handshake message parser (fuzz/README.md: targets, oracles, long runs).
#
# atheris (coverage-guided libFuzzer for Python) is installed into the CI
# venv; where it cannot be installed the same targets run under the built-in
# mutational driver (fuzz/_driver.py). Two targets run at a time (this
# machine has two cores): record+window for 60 s, then the 15 parser targets
# in pairs for 20 s each, the handshake machines for 30 s - about 4.5 minutes. FUZZ_SCALE multiplies
# every duration (FUZZ_SCALE=0.1 for a smoke run, 10 for a longer one);
# FUZZ_JOBS sets how many run at once.
#
# A finding fails the stage; its input is printed (hex) and kept under
# $FUZZ_ARTIFACTS (default: a temp dir, removed on success). Turn it into a
# regression: save it as tests/regressions/inputs/<target>/<name>.bin.
set -euo pipefail
cd "$(dirname "$0")/../.."
t0=$SECONDS
step() { echo "-- [30-fuzz +$((SECONDS - t0))s] $*"; }

SCALE=${FUZZ_SCALE:-1}
JOBS=${FUZZ_JOBS:-2}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rolewire-fuzz.XXXXXX")
ART=${FUZZ_ARTIFACTS:-$WORK/artifacts}
mkdir -p "$ART"
keep=0
cleanup() { [ $keep -eq 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

step "atheris"
if python -m pip install -q atheris 2>"$WORK/pip.err"; then
    python -c 'import atheris' && echo "atheris $(python -m pip show atheris 2>/dev/null | sed -n 's/^Version: //p') installed"
else
    tail -n 3 "$WORK/pip.err"
    echo "atheris could not be installed here: using the built-in mutational driver"
    export ROLEWIRE_FUZZ_DRIVER=builtin
fi

seconds() { python -c "import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))" "$1" "$SCALE"; }

# name|command (relative to fuzz/)|seconds at FUZZ_SCALE=1
TARGETS=(
    "record|fuzz_record.py|60"
    "window|fuzz_window.py|60"
    "handshake_machine|fuzz_handshake.py|30"
)
for parser in hello responder_hello hello_retry reject initiator_auth responder_auth \
        initiator_finish cookie_reply message_any role_entries role_data padding proofs chain \
        frame; do
    TARGETS+=("$parser|fuzz_parsers.py $parser|20")
done

run_target() {  # run_target <name> <command> <seconds>
    local name=$1 cmd=$2 secs
    secs=$(seconds "$3")
    mkdir -p "$WORK/corpus/$name"
    # shellcheck disable=SC2086
    python fuzz/$cmd -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 \
        -artifact_prefix="$ART/$name-" "$WORK/corpus/$name" > "$WORK/$name.log" 2>&1
}

declare -A PIDS=()
failed=()
reap() {  # waits for one finished job (or all with "all")
    local name
    for name in "${!PIDS[@]}"; do
        if [ "$1" = all ] || ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
            if ! wait "${PIDS[$name]}"; then failed+=("$name"); fi
            unset "PIDS[$name]"
            [ "$1" = all ] || return 0
        fi
    done
}

step "running ${#TARGETS[@]} targets, $JOBS at a time (FUZZ_SCALE=$SCALE)"
for entry in "${TARGETS[@]}"; do
    IFS='|' read -r name cmd secs <<< "$entry"
    while [ "${#PIDS[@]}" -ge "$JOBS" ]; do sleep 0.5; reap one; done
    run_target "$name" "$cmd" "$secs" &
    PIDS[$name]=$!
done
while [ "${#PIDS[@]}" -gt 0 ]; do sleep 0.5; reap one; done

step "executions per target"
printf '%-16s %12s %8s %10s %6s  %s\n' target executions seconds exec/s cov driver
for entry in "${TARGETS[@]}"; do
    IFS='|' read -r name cmd secs <<< "$entry"
    log="$WORK/$name.log"
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    took=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    driver=$(sed -n 's/^fuzz [a-z_]*: driver \([a-z]*\).*/\1/p' "$log" | head -n 1)
    rate=-
    [ -n "$runs" ] && [ -n "$took" ] && [ "$took" -gt 0 ] && rate=$((runs / took))
    printf '%-16s %12s %8s %10s %6s  %s\n' "$name" "${runs:-?}" "${took:-?}" "$rate" "${cov:--}" "${driver:-?}"
done

if [ "${#failed[@]}" -gt 0 ]; then
    keep=1
    for name in "${failed[@]}"; do
        echo "================ $name: FAILED (log tail) ================"
        grep -v -E '^#[0-9]+|^INFO:|Uses: |dictionary' "$WORK/$name.log" | tail -n 40
        for f in "$ART/$name"-*; do
            [ -e "$f" ] || continue
            echo "input $f ($(wc -c < "$f") bytes, hex):"
            head -c 4096 "$f" | od -An -tx1 -v | tr -d ' \n' | fold -w 128; echo
            echo "reproduce: python fuzz/<target script> $f"
            echo "regression: cp $f tests/regressions/inputs/$name/<short-name>.bin"
        done
    done
    echo "fuzz findings in: ${failed[*]} (artifacts kept in $ART)"
    exit 1
fi
step "done in $((SECONDS - t0))s: no findings"

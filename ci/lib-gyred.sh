# Shared by the benchmark scripts (sourced, not run): one gyred on a pinned core in `poll`
# idle mode, stopped on exit. Needs GYRED, OUT and SOCK set and a die() function.

GYRED_PID=

# Stops gyred (SIGTERM, then SIGKILL after 10 s) and removes its socket.
stop_gyred() {
    if [[ -n "$GYRED_PID" ]] && kill -0 "$GYRED_PID" 2>/dev/null; then
        kill -TERM "$GYRED_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$GYRED_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$GYRED_PID" 2>/dev/null || true
    fi
    rm -f "$SOCK"
}

# start_gyred CORE: gyred on $OUT/gyred.json, logging to $OUT/gyred.log; returns once it says
# it is running, stops it when the script exits.
start_gyred() {
    local core="$1"
    trap stop_gyred EXIT
    taskset -c "$core" "$GYRED" --config "$OUT/gyred.json" --cores "$core" --idle poll \
        --rpc-socket "$SOCK" --log-level warn >"$OUT/gyred.log" 2>&1 &
    GYRED_PID=$!
    for _ in $(seq 300); do
        grep -q "is running" "$OUT/gyred.log" 2>/dev/null && return 0
        kill -0 "$GYRED_PID" 2>/dev/null || { cat "$OUT/gyred.log" >&2; die "gyred exited"; }
        sleep 0.1
    done
    die "gyred did not come up (see $OUT/gyred.log)"
}

#!/usr/bin/env bash
# Overhead of a logical volume over its base bdev, end to end: gyre-perf 4K randread and
# randwrite at QD 32 over NVMe/TCP on an allocated thick volume, and on the bdev under its
# pool directly, one after the other, same cores, same memory.
#
# Run by people (not by the tests): it busy-polls two cores for about 4 × $ROUNDS × ($T + 2) s.
#   - gyred (release), one reactor on $TARGET_CORE in `poll` idle mode, a 1 GiB RAM bdev
#     `base` with 4096-byte blocks, a pool on it and a thick volume `pool0/vol` filling it;
#   - gyre-perf (release) pinned to $CLIENT_CORE, one I/O queue, on namespace 1 of $NQN on
#     127.0.0.1:$PORT.
# Namespace 1 is the volume in one half of a round and the base itself in the other: the
# pool is closed (its data stays), `base` exported, then unexported and the pool imported
# again. On the base, gyre-perf keeps to the pool's data area (from its data offset, as long
# as the volume): the same memory the volume's clusters map to, and the superblock and
# metadata stay intact for the next import. The order flips every round (volume first, then base first), so that drift on this
# shared machine hits both alike. For each run the target reactor's busy time is sampled over
# the middle of the measurement (JSON-RPC `reactor_stats`), which gives the target's CPU time
# per I/O: a figure far less noisy than IOPS, which also carries the client and the kernel.
# Prints every run, then medians and volume/base ratios; every JSON result stays in $OUT.
#
# Environment: T (seconds per run, default 8), ROUNDS (default 4),
# TARGET_CORE (1), CLIENT_CORE (0), PORT (4431), OUT (default perf-results/bench-lvol-DATE),
# CARGO_TARGET_DIR, SKIP_BUILD=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="${T:-8}"
ROUNDS="${ROUNDS:-4}"
TARGET_CORE="${TARGET_CORE:-1}"
CLIENT_CORE="${CLIENT_CORE:-0}"
PORT="${PORT:-4431}"
OUT="${OUT:-$ROOT/perf-results/bench-lvol-$(date +%Y%m%d-%H%M%S)}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GYRED="$TARGET_DIR/release/gyred"
GYRE_PERF="$TARGET_DIR/release/gyre-perf"
GYRECTL="$TARGET_DIR/release/gyrectl"
NQN="nqn.2016-06.io.gyre:bench-lvol"
SOCK="/tmp/gyre-bench-lvol-$$.sock"

die() {
    echo "bench-lvol: $*" >&2
    exit 1
}

[[ "$T" =~ ^[0-9]+$ && "$T" -ge 4 ]] || die "T must be at least 4 seconds (got '$T')"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 ]] || die "ROUNDS must be at least 1 (got '$ROUNDS')"
[[ "$PORT" =~ ^[0-9]+$ && "$PORT" -gt 0 && "$PORT" -lt 65536 ]] || die "bad PORT '$PORT'"
for c in "$TARGET_CORE" "$CLIENT_CORE"; do
    [[ "$c" =~ ^[0-9]+$ ]] || die "cores are numbers (got '$c')"
    taskset -c "$c" true 2>/dev/null || die "core $c is not available to this process"
done
[[ "$TARGET_CORE" != "$CLIENT_CORE" ]] || die "the target and the client need different cores"
command -v python3 >/dev/null || die "python3 is needed to read the results"

mkdir -p "$OUT"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "== building gyred, gyrectl and gyre-perf (release)"
    (cd "$ROOT" && cargo build --release -p gyred -p gyrectl -p gyre-perf)
fi
for b in "$GYRED" "$GYRE_PERF" "$GYRECTL"; do
    [[ -x "$b" ]] || die "no binary at $b"
done

cat >"$OUT/gyred.json" <<EOF
{
  "version": 1,
  "modules": [
    { "module": "bdev", "config": [
      { "method": "bdev_malloc_create", "params": { "name": "base", "size": "1G", "block_size": 4096 } }
    ] },
    { "module": "nvmf", "config": [
      { "method": "nvmf_create_subsystem", "params": { "nqn": "$NQN", "allow_any_host": true } },
      { "method": "nvmf_subsystem_add_listener", "params": { "nqn": "$NQN", "address": "127.0.0.1:$PORT" } }
    ] }
  ]
}
EOF

# shellcheck source=ci/lib-gyred.sh
source "$ROOT/ci/lib-gyred.sh"
echo "== starting gyred: core $TARGET_CORE, poll mode, 127.0.0.1:$PORT"
start_gyred "$TARGET_CORE"

ctl() {
    "$GYRECTL" --socket "$SOCK" "$@" >>"$OUT/gyrectl.log" 2>&1 ||
        { tail -5 "$OUT/gyrectl.log" >&2; die "gyrectl $* failed"; }
}

# The pool takes the whole base; the volume all of the pool's free space, every cluster
# allocated now.
ctl pool create --name pool0 --base base
read -r FREE DATA_OFFSET < <("$GYRECTL" --socket "$SOCK" --json pool list |
    python3 -c 'import json,sys; p=json.load(sys.stdin)[0]; print(p["free_bytes"], p["data_offset"])')
[[ "$DATA_OFFSET" -gt 0 ]] || die "the pool list gave no data offset"
ctl volume create --pool pool0 --name vol --size "$FREE" --thick
echo "== pool0 on base, data from byte $DATA_OFFSET; thick volume pool0/vol of $FREE bytes"

URL="nvmf://127.0.0.1:$PORT/$NQN?ns=1"
SAMPLE_MS=$(((T - 2) * 1000))

# One run: run NAME ARGS... (with --offset/--size) → $OUT/NAME.json (gyre-perf) and $OUT/NAME.busy.json (target).
run() {
    local name="$1"
    shift
    taskset -c "$CLIENT_CORE" "$GYRE_PERF" run "$URL" --cores "$CLIENT_CORE" --idle poll \
        --time "${T}s" --ramp 1s --bs 4k --qd 32 --json -q "$@" \
        >"$OUT/$name.json" 2>"$OUT/$name.log" &
    local perf=$!
    sleep 2
    rpc_ok=1
    "$GYRECTL" --socket "$SOCK" --json rpc reactor_stats "{\"sample_ms\": $SAMPLE_MS}" \
        >"$OUT/$name.busy.json" 2>>"$OUT/gyrectl.log" || rpc_ok=0
    [[ "$rpc_ok" == 1 ]] || { rm -f "$OUT/$name.busy.json"; echo "   (no load sample for $name)"; }
    wait "$perf" || { cat "$OUT/$name.log" >&2; die "gyre-perf $name failed"; }
    python3 - "$OUT" "$name" <<'PY'
import json, os, sys
out, name = sys.argv[1], sys.argv[2]
r = json.load(open(os.path.join(out, name + ".json")))
line = f"   {name:<24} {r['iops']:>12,.0f} IOPS"
busy = os.path.join(out, name + ".busy.json")
if os.path.exists(busy):
    b = json.load(open(busy))["reactors"]
    frac = sum(x["busy_ns"] for x in b) / max(1, sum(x["busy_ns"] + x["idle_ns"] for x in b))
    line += f"   target busy {frac * 100:5.1f}%   {frac * 1e6 / r['iops']:.3f} µs/IO"
print(line)
PY
}

# Both workloads on whatever namespace 1 is now.
measure() {
    local what="$1" round="$2"
    local area=(--size "$FREE")
    [[ "$what" == volume ]] || area+=(--offset "$DATA_OFFSET")
    run "r$round-$what-randread" --rw randread "${area[@]}"
    run "r$round-$what-randwrite" --rw randwrite "${area[@]}"
}

on_volume() {
    ctl nvmf ns add --bdev pool0/vol --nsid 1 "$NQN"
    measure volume "$1"
    ctl nvmf ns remove --nsid 1 "$NQN"
    ctl pool close pool0
}

on_base() {
    ctl nvmf ns add --bdev base --nsid 1 "$NQN"
    measure base "$1"
    ctl nvmf ns remove --nsid 1 "$NQN"
    ctl pool import base
}

# Warm both paths once (connection set-up, page tables), not counted.
ctl nvmf ns add --bdev pool0/vol --nsid 1 "$NQN"
taskset -c "$CLIENT_CORE" "$GYRE_PERF" run "$URL" --cores "$CLIENT_CORE" --time 2s --size "$FREE" --bs 4k --qd 32 \
    --rw randwrite -q >/dev/null 2>&1 || die "warm-up run failed"
ctl nvmf ns remove --nsid 1 "$NQN"

for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    # The pool is open at the start of every round.
    if ((round % 2)); then
        on_volume "$round"
        on_base "$round"
    else
        ctl pool close pool0
        on_base "$round"
        # on_base imported the pool again.
        on_volume "$round"
        ctl pool import base
    fi
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])

def figures(what, rw):
    iops, cost = [], []
    for r in range(1, rounds + 1):
        name = f"r{r}-{what}-{rw}"
        res = json.load(open(os.path.join(out, name + ".json")))
        iops.append(res["iops"])
        busy = os.path.join(out, name + ".busy.json")
        if os.path.exists(busy):
            b = json.load(open(busy))["reactors"]
            frac = sum(x["busy_ns"] for x in b) / max(1, sum(x["busy_ns"] + x["idle_ns"] for x in b))
            cost.append(frac * 1e6 / res["iops"])
    return statistics.median(iops), (statistics.median(cost) if cost else None)

def per_round(rw):
    # Each round's two runs are minutes apart at most: their ratio cancels slow drift.
    ratios = []
    for r in range(1, rounds + 1):
        v = json.load(open(os.path.join(out, f"r{r}-volume-{rw}.json")))["iops"]
        b = json.load(open(os.path.join(out, f"r{r}-base-{rw}.json")))["iops"]
        ratios.append(v / b)
    return statistics.median(ratios), min(ratios), max(ratios)

print()
print(f"4K QD32 over NVMe/TCP, medians of {rounds} rounds")
print(f"{'workload':<10} {'base IOPS':>12} {'volume IOPS':>12} {'vol/base':>9}"
      f" {'base µs/IO':>11} {'vol µs/IO':>10} {'base/vol':>9}")
for rw in ("randread", "randwrite"):
    bi, bc = figures("base", rw)
    vi, vc = figures("volume", rw)
    cost = (f" {bc:>11.3f} {vc:>10.3f} {bc / vc:>9.3f}" if bc and vc else "")
    print(f"{rw:<10} {bi:>12,.0f} {vi:>12,.0f} {vi / bi:>9.3f}{cost}")
for rw in ("randread", "randwrite"):
    med, lo, hi = per_round(rw)
    print(f"{rw}: volume/base IOPS within a round: median {med:.3f} (from {lo:.3f} to {hi:.3f})")
print("µs/IO: the target reactor's busy time per I/O; base/vol is the volume's share of the "
      "base's cost per I/O, as IOPS would be if the target were the only limit.")
PY

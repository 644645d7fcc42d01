#!/usr/bin/env bash
# Benchmarks iSCSI: gyre-perf against libiscsi's iscsi-perf (the client side), each against
# Debian's tgt and against gyred (the target side), all with RAM-backed LUNs.
#
# Run by people (not by the tests), as root. The targets run on core $TARGET_CORE (default 1),
# the clients on core $CLIENT_CORE (default 0), one client at a time:
#   - tgtd, its LUN a file in /dev/shm (bstype rdwr), started under taskset;
#   - gyred on its embedded default (iSCSI on 127.0.0.1:3260, iqn.2016-06.io.gyre:malloc0
#     LUN 0, a RAM bdev), with one polling reactor on $TARGET_CORE.
# Workloads, as iscsi-perf names them and as gyre-perf does the same:
#   seq 4K QD32   iscsi-perf -m 32 -b 8       gyre-perf --rw read --bs 4k --qd 32
#   rand 4K QD32  iscsi-perf -m 32 -b 8 -r    gyre-perf --rw randread --bs 4k --qd 32
#   seq 4K QD1    iscsi-perf -m 1 -b 8        gyre-perf --rw read --bs 4k --qd 1
#   seq 128K QD32 iscsi-perf -m 32 -b 256     gyre-perf --rw read --bs 128k --qd 32
# (-b counts blocks: 8 and 256 are for 512-byte blocks and are scaled to the LUN's block size.)
# Prints a table of IOPS with the ratios gyre-perf/iscsi-perf (is the client the bottleneck?)
# and gyred/tgt (which target is faster), and keeps every raw output in $OUT.
#
# Environment: T (seconds per run, default 15), RAMP (gyre-perf warm-up seconds, default 1),
# IDLE (gyre-perf's and gyred's idle policy: poll, the default, or hybrid on a busy machine),
# REPEAT (runs of each workload per client, alternating; the table shows medians; default 1),
# TARGET_CORE (1), CLIENT_CORE (0), TGT_PORT (3261), LUN_MB (1024), OUT (default
# perf-results/bench-iscsi-DATE), CARGO_TARGET_DIR, SKIP_BUILD=1, SKIP_GYRED=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="${T:-15}"
RAMP="${RAMP:-1}"
IDLE="${IDLE:-poll}"
REPEAT="${REPEAT:-1}"
TARGET_CORE="${TARGET_CORE:-1}"
CLIENT_CORE="${CLIENT_CORE:-0}"
TGT_PORT="${TGT_PORT:-3261}"
LUN_MB="${LUN_MB:-1024}"
OUT="${OUT:-$ROOT/perf-results/bench-iscsi-$(date +%Y%m%d-%H%M%S)}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GYRE_PERF="$TARGET_DIR/release/gyre-perf"
GYRED="$TARGET_DIR/release/gyred"
TGT_IQN="iqn.2024-01.io.gyre.bench:ram"
TGT_IMG="/dev/shm/gyre-bench-iscsi-$$.img"
TGT_CONTROL=$((($$ % 20000) + 10000))
GYRED_PORTAL="127.0.0.1:3260"
GYRED_IQN="iqn.2016-06.io.gyre:malloc0"
GYRED_SOCK="/tmp/gyre-bench-iscsi-$$.sock"

die() {
    echo "bench-iscsi: $*" >&2
    exit 1
}

[[ "$T" =~ ^[0-9]+$ && "$T" -gt 0 ]] || die "T must be a positive number of seconds (got '$T')"
[[ "$RAMP" =~ ^[0-9]+$ ]] || die "RAMP must be a whole number of seconds (got '$RAMP')"
[[ "$REPEAT" =~ ^[0-9]+$ && "$REPEAT" -gt 0 ]] || die "REPEAT must be a positive number (got '$REPEAT')"
[[ "$IDLE" == poll || "$IDLE" =~ ^hybrid ]] || die "IDLE is poll or hybrid[:SPIN] (got '$IDLE')"
for c in "$TARGET_CORE" "$CLIENT_CORE"; do
    [[ "$c" =~ ^[0-9]+$ ]] || die "cores are numbers (got '$c')"
    taskset -c "$c" true 2>/dev/null || die "core $c is not available to this process"
done
command -v python3 >/dev/null || die "python3 is needed to read the results"
[[ "$(id -u)" == 0 ]] || die "run as root (tgtd needs it)"

install() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null || [[ -x "/usr/sbin/$cmd" ]] && return 0
    echo "== installing $pkg"
    apt-get install -y "$pkg" >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y "$pkg" >/dev/null; } ||
        die "$cmd is missing and could not be installed (apt-get install -y $pkg)"
}
install tgtd tgt
install iscsi-perf libiscsi-bin
TGTD="$(command -v tgtd || echo /usr/sbin/tgtd)"
TGTADM="$(command -v tgtadm || echo /usr/sbin/tgtadm)"

mkdir -p "$OUT"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "== building gyre-perf and gyred (release)"
    (cd "$ROOT" && cargo build --release -p gyre-perf)
    if [[ "${SKIP_GYRED:-0}" != 1 ]]; then
        (cd "$ROOT" && cargo build --release -p gyred) || echo "bench-iscsi: gyred did not build; its rows are skipped" >&2
    fi
fi
[[ -x "$GYRE_PERF" ]] || die "no gyre-perf binary at $GYRE_PERF"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -f "$TGT_IMG" "$GYRED_SOCK"
}
trap cleanup EXIT

wait_port() { # HOST PORT SECONDS
    local i
    for ((i = 0; i <= $3 * 10; i++)); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# One gyre-perf run: gyre NAME URL ARGS... → $OUT/NAME.json
gyre() {
    local name="$1" url="$2"
    shift 2
    echo "== gyre-perf $name"
    if ! "$GYRE_PERF" run "$url" --cores "$CLIENT_CORE" --idle "$IDLE" --time "${T}s" \
        --ramp "${RAMP}s" --json -q "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"; then
        cat "$OUT/$name.log" >&2
        echo "bench-iscsi: gyre-perf $name failed" >&2
        rm -f "$OUT/$name.json"
    fi
}

# One iscsi-perf run: iperf NAME URL ARGS... → $OUT/NAME.txt
iperf() {
    local name="$1" url="$2"
    shift 2
    echo "== iscsi-perf $name"
    if ! timeout $((T + 30)) taskset -c "$CLIENT_CORE" iscsi-perf -t "$T" "$@" "$url" \
        >"$OUT/$name.txt" 2>&1; then
        tail -5 "$OUT/$name.txt" >&2
        echo "bench-iscsi: iscsi-perf $name failed" >&2
    fi
}

# The four workloads against one target: both clients. suite PREFIX URL
suite() {
    local p="$1" url="$2"
    # The LUN's block size, from a short gyre-perf run, scales iscsi-perf's -b.
    "$GYRE_PERF" run "$url" --cores "$CLIENT_CORE" --idle hybrid --rw read --ios 1 --qd 1 --json -q \
        >"$OUT/$p-probe.json" 2>"$OUT/$p-probe.log" || { cat "$OUT/$p-probe.log" >&2; return 1; }
    local bs
    bs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["target"]["block_size"])' "$OUT/$p-probe.json")
    local b4=$((4096 / bs)) b128=$((131072 / bs)) r
    for ((r = 1; r <= REPEAT; r++)); do
        # Alternate which client goes first, so that drift in the machine's load evens out.
        pair "$r" "$p" seq4k-qd32 "$url" "-m 32 -b $b4" "--rw read --bs 4k --qd 32"
        pair "$r" "$p" rand4k-qd32 "$url" "-m 32 -b $b4 -r" "--rw randread --bs 4k --qd 32"
        pair "$r" "$p" seq4k-qd1 "$url" "-m 1 -b $b4" "--rw read --bs 4k --qd 1"
        pair "$r" "$p" seq128k-qd32 "$url" "-m 32 -b $b128" "--rw read --bs 128k --qd 32"
    done
}

# Both clients on one workload: pair REPEAT PREFIX KEY URL ISCSI-PERF-ARGS GYRE-PERF-ARGS
pair() {
    local r="$1" p="$2" key="$3" url="$4" iargs="$5" gargs="$6"
    # shellcheck disable=SC2086 # the argument strings are word lists
    if ((r % 2)); then
        iperf "$p-iscsiperf-$key-r$r" "$url" $iargs
        gyre "$p-gyre-$key-r$r" "$url" $gargs
    else
        gyre "$p-gyre-$key-r$r" "$url" $gargs
        iperf "$p-iscsiperf-$key-r$r" "$url" $iargs
    fi
}

echo "== results in $OUT ($T s per run; targets on core $TARGET_CORE, clients on core $CLIENT_CORE; idle $IDLE)"

# ---- tgt
echo "== starting tgtd on 127.0.0.1:$TGT_PORT (core $TARGET_CORE), LUN 1: $LUN_MB MiB in $TGT_IMG"
truncate -s "${LUN_MB}M" "$TGT_IMG"
taskset -c "$TARGET_CORE" "$TGTD" -f -C "$TGT_CONTROL" --iscsi "portal=127.0.0.1:$TGT_PORT" \
    >"$OUT/tgtd.log" 2>&1 &
TGT_PID=$!
PIDS+=("$TGT_PID")
for _ in $(seq 100); do
    "$TGTADM" -C "$TGT_CONTROL" --lld iscsi --op show --mode target >/dev/null 2>&1 && break
    sleep 0.1
done
adm() { "$TGTADM" -C "$TGT_CONTROL" --lld iscsi "$@"; }
adm --op new --mode target --tid 1 -T "$TGT_IQN"
adm --op new --mode logicalunit --tid 1 --lun 1 -b "$TGT_IMG" --bstype rdwr
adm --op bind --mode target --tid 1 -I ALL
wait_port 127.0.0.1 "$TGT_PORT" 10 || die "tgtd does not listen on $TGT_PORT"
# Write the LUN once so reads hit allocated pages.
dd if=/dev/zero of="$TGT_IMG" bs=1M count="$LUN_MB" conv=notrunc status=none
suite tgt "iscsi://127.0.0.1:$TGT_PORT/$TGT_IQN/1"
# tgtd ignores SIGTERM while it has targets.
kill -KILL "$TGT_PID" 2>/dev/null || true
wait "$TGT_PID" 2>/dev/null || true

# ---- gyred
GYRED_OK=0
if [[ "${SKIP_GYRED:-0}" != 1 && -x "$GYRED" ]]; then
    if wait_port 127.0.0.1 3260 0; then
        echo "bench-iscsi: something already listens on $GYRED_PORTAL; gyred rows skipped" >&2
    else
        echo "== starting gyred (core $TARGET_CORE, idle $IDLE)"
        taskset -c "$TARGET_CORE" "$GYRED" --cores "$TARGET_CORE" --idle "$IDLE" \
            --rpc-socket "$GYRED_SOCK" >"$OUT/gyred.log" 2>&1 &
        GYRED_PID=$!
        PIDS+=("$GYRED_PID")
        if wait_port 127.0.0.1 3260 15; then
            GYRED_OK=1
            suite gyred "iscsi://$GYRED_PORTAL/$GYRED_IQN/0" || GYRED_OK=0
        else
            echo "bench-iscsi: gyred does not serve iSCSI on $GYRED_PORTAL (no iSCSI target in this build?)" >&2
        fi
        kill -TERM "$GYRED_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$GYRED_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$GYRED_PID" 2>/dev/null || true
        wait "$GYRED_PID" 2>/dev/null || true
    fi
fi
[[ "$GYRED_OK" == 1 ]] || echo "bench-iscsi: the gyred rows are unavailable" >&2

python3 - "$OUT" <<'PY'
import glob, json, os, re, statistics, sys

out = sys.argv[1]

def runs(name, ext):
    return sorted(glob.glob(os.path.join(out, f"{name}-r*.{ext}")))

def median_of(results):
    results = [r for r in results if r is not None]
    if not results:
        return None
    mid = statistics.median_low([r["iops"] for r in results])
    pick = next(r for r in results if r["iops"] == mid)
    return dict(pick, n=len(results), all=[round(r["iops"]) for r in results])

def gyre(name):
    def one(path):
        with open(path) as f:
            r = json.load(f)
        return {"iops": r["iops"], "p99": r["latency_us"]["p99"], "errors": r["errors"]}
    return median_of([one(p) for p in runs(name, "json")])

def iperf(name):
    def one(path):
        with open(path, errors="replace") as f:
            m = re.findall(r"iops average (\d+)", f.read())
        return {"iops": float(m[-1])} if m else None
    return median_of([one(p) for p in runs(name, "txt")])

def num(v, width, prec):
    text = f"{v:.{prec}f}" if v is not None else "-"
    return f"{text:>{width}}"

def ratio(a, b):
    return a / b if a and b else None

loads = [("seq 4K QD32", "seq4k-qd32"), ("rand 4K QD32", "rand4k-qd32"),
         ("seq 4K QD1", "seq4k-qd1"), ("seq 128K QD32", "seq128k-qd32")]
hdr = (f"{'workload':<15} {'target':<6} {'iscsi-perf':>11} {'gyre-perf':>11} {'gyre/iscsi':>11} "
       f"{'gyre p99 µs':>12}")
print()
print(hdr)
print("-" * len(hdr))
by = {}
failed = False
for label, key in loads:
    for tgt in ("tgt", "gyred"):
        i = iperf(f"{tgt}-iscsiperf-{key}")
        g = gyre(f"{tgt}-gyre-{key}")
        by[(tgt, key)] = (i, g)
        if g is not None and g["errors"]:
            failed = True
        if i is None and g is None:
            print(f"{label:<15} {tgt:<6} {'unavailable':>11}")
            continue
        print(f"{label:<15} {tgt:<6} {num(i and i['iops'], 11, 0)} {num(g and g['iops'], 11, 0)} "
              f"{num(ratio(g and g['iops'], i and i['iops']), 11, 2)} {num(g and g['p99'], 12, 1)}"
              f"   runs: iscsi-perf {i and i['all']} gyre-perf {g and g['all']}")
print()
hdr2 = f"{'workload':<15} {'client':<11} {'gyred/tgt':>10}"
print(hdr2)
print("-" * len(hdr2))
for label, key in loads:
    (ti, tg), (gi, gg) = by[("tgt", key)], by[("gyred", key)]
    for client, t, g in (("iscsi-perf", ti, gi), ("gyre-perf", tg, gg)):
        print(f"{label:<15} {client:<11} {num(ratio(g and g['iops'], t and t['iops']), 10, 2)}")
print("\n(IOPS are medians of the runs listed; gyre/iscsi: gyre-perf IOPS over iscsi-perf IOPS"
      " against the same target, both on the client core; within 15% means the client is not"
      " the bottleneck)")
sys.exit(1 if failed else 0)
PY

#!/usr/bin/env bash
# Benchmarks NVMe/TCP end to end: gyre-perf (Gyre's NVMe/TCP host) against gyred (Gyre's
# target) over loopback, next to SPDK 26.05 reference figures measured elsewhere.
#
# Run by people (not by the tests): it busy-polls two cores for about 8 × ($T + $RAMP + 1) s.
#   - gyred (release) with one reactor on $TARGET_CORE in `poll` idle mode, serving a 1 GiB
#     RAM bdev with 4096-byte blocks as namespace 1 of $NQN on 127.0.0.1:$PORT (a temporary
#     JSON configuration);
#   - gyre-perf (release) pinned to $CLIENT_CORE (taskset and --cores), polling, one I/O queue:
#     4K randread and randwrite at QD 1, 32, 128; 128K sequential read and write at QD 32.
# For each run the target reactor's busy fraction is sampled over the middle of the
# measurement with the daemon's JSON-RPC `reactor_stats` (busy-tick delta over sample_ms).
# Prints a table (IOPS, MiB/s, p50/p99/p99.9, target busy, SPDK reference, ratio) and keeps
# every JSON result in $OUT.
#
# Environment: T (seconds per run, default 10), RAMP (warm-up seconds, default 1),
# TARGET_CORE (1), CLIENT_CORE (0), PORT (4430), OUT (default perf-results/bench-nvmf-DATE),
# CARGO_TARGET_DIR, SKIP_BUILD=1, HDGST=1 / DDGST=1 (digests on every run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="${T:-10}"
RAMP="${RAMP:-1}"
TARGET_CORE="${TARGET_CORE:-1}"
CLIENT_CORE="${CLIENT_CORE:-0}"
PORT="${PORT:-4430}"
HDGST="${HDGST:-0}"
DDGST="${DDGST:-0}"
OUT="${OUT:-$ROOT/perf-results/bench-nvmf-$(date +%Y%m%d-%H%M%S)}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GYRED="$TARGET_DIR/release/gyred"
GYRE_PERF="$TARGET_DIR/release/gyre-perf"
NQN="nqn.2016-06.io.gyre:bench"
SOCK="/tmp/gyre-bench-nvmf-$$.sock"

die() {
    echo "bench-nvmf: $*" >&2
    exit 1
}

[[ "$T" =~ ^[0-9]+$ && "$T" -ge 3 ]] || die "T must be at least 3 seconds (got '$T')"
[[ "$RAMP" =~ ^[0-9]+$ ]] || die "RAMP must be a whole number of seconds (got '$RAMP')"
[[ "$PORT" =~ ^[0-9]+$ && "$PORT" -gt 0 && "$PORT" -lt 65536 ]] || die "bad PORT '$PORT'"
for c in "$TARGET_CORE" "$CLIENT_CORE"; do
    [[ "$c" =~ ^[0-9]+$ ]] || die "cores are numbers (got '$c')"
    taskset -c "$c" true 2>/dev/null || die "core $c is not available to this process"
done
[[ "$TARGET_CORE" != "$CLIENT_CORE" ]] || die "the target and the client need different cores"
command -v python3 >/dev/null || die "python3 is needed to read the results"

mkdir -p "$OUT"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "== building gyred and gyre-perf (release)"
    (cd "$ROOT" && cargo build --release -p gyred -p gyre-perf)
fi
[[ -x "$GYRED" ]] || die "no gyred binary at $GYRED"
[[ -x "$GYRE_PERF" ]] || die "no gyre-perf binary at $GYRE_PERF"

cat >"$OUT/gyred.json" <<EOF
{
  "version": 1,
  "modules": [
    { "module": "bdev", "config": [
      { "method": "bdev_malloc_create", "params": { "name": "bench0", "size": "1G", "block_size": 4096 } }
    ] },
    { "module": "nvmf", "config": [
      { "method": "nvmf_create_subsystem", "params": { "nqn": "$NQN", "allow_any_host": true } },
      { "method": "nvmf_subsystem_add_ns", "params": { "nqn": "$NQN", "bdev_name": "bench0" } },
      { "method": "nvmf_subsystem_add_listener", "params": { "nqn": "$NQN", "address": "127.0.0.1:$PORT" } }
    ] }
  ]
}
EOF

# shellcheck source=ci/lib-gyred.sh
source "$ROOT/ci/lib-gyred.sh"
echo "== starting gyred: core $TARGET_CORE, poll mode, 127.0.0.1:$PORT"
start_gyred "$TARGET_CORE"

# One JSON-RPC call to gyred: rpc METHOD PARAMS-JSON → the result, as JSON, on stdout.
rpc() {
    python3 - "$SOCK" "$1" "$2" <<'PY'
import json, socket, sys
sock, method, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(120)
s.connect(sock)
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())
buf, dec = b"", json.JSONDecoder()
while True:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("gyred closed the RPC connection")
    buf += chunk
    try:
        resp, _ = dec.raw_decode(buf.decode())
        break
    except ValueError:
        continue
if "error" in resp:
    sys.exit(f"{method}: {resp['error']}")
print(json.dumps(resp["result"]))
PY
}

URL="nvmf://127.0.0.1:$PORT/$NQN?ns=1&hdgst=$HDGST&ddgst=$DDGST"
SAMPLE_MS=$(((T - 2) * 1000))

# One run: run NAME ARGS... → $OUT/NAME.json (gyre-perf) and $OUT/NAME.busy.json (target).
run() {
    local name="$1"
    shift
    echo "== $name"
    taskset -c "$CLIENT_CORE" "$GYRE_PERF" run "$URL" --cores "$CLIENT_CORE" --idle poll \
        --time "${T}s" --ramp "${RAMP}s" --json -q "$@" >"$OUT/$name.json" 2>"$OUT/$name.log" &
    local perf=$!
    # Sample the target over the middle of the measurement (after connect and ramp).
    sleep $((RAMP + 1))
    if ! rpc reactor_stats "{\"sample_ms\": $SAMPLE_MS}" >"$OUT/$name.busy.json"; then
        echo "bench-nvmf: could not sample the target's load for $name" >&2
        rm -f "$OUT/$name.busy.json"
    fi
    local rc=0
    wait "$perf" || rc=$?
    # 1: the run finished but some I/O failed (reported in the table); anything else is fatal.
    if [[ "$rc" -ne 0 && ( "$rc" -ne 1 || ! -s "$OUT/$name.json" ) ]]; then
        cat "$OUT/$name.log" >&2
        die "gyre-perf $name failed"
    fi
    [[ "$rc" -eq 0 ]] || echo "   (gyre-perf $name: some I/O failed, see $OUT/$name.log)"
}

for rw in randread randwrite; do
    for qd in 1 32 128; do
        run "4k-$rw-qd$qd" --rw "$rw" --bs 4k --qd "$qd"
    done
done
run "128k-read-qd32" --rw read --bs 128k --qd 32
run "128k-write-qd32" --rw write --bs 128k --qd 32

python3 - "$OUT" "$HDGST" "$DDGST" <<'PY'
import json, os, sys

out, hdgst, ddgst = sys.argv[1], sys.argv[2], sys.argv[3]

def load(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)

# SPDK 26.05 NVMe/TCP reference figures from the issue (measured elsewhere, other hardware):
# IOPS for 4K, bytes per second for 128K.
REF = {
    "4k-randread-qd1": ("iops", 76_000), "4k-randread-qd32": ("iops", 535_000),
    "4k-randread-qd128": ("iops", 589_000), "4k-randwrite-qd1": ("iops", 76_000),
    "4k-randwrite-qd32": ("iops", 359_000), "4k-randwrite-qd128": ("iops", 475_000),
    "128k-read-qd32": ("bps", 3.34e9), "128k-write-qd32": ("bps", 3.34e9),
}
rows = [
    ("4K randread QD1", "4k-randread-qd1"), ("4K randread QD32", "4k-randread-qd32"),
    ("4K randread QD128", "4k-randread-qd128"), ("4K randwrite QD1", "4k-randwrite-qd1"),
    ("4K randwrite QD32", "4k-randwrite-qd32"), ("4K randwrite QD128", "4k-randwrite-qd128"),
    ("128K read QD32", "128k-read-qd32"), ("128K write QD32", "128k-write-qd32"),
]

def num(v, width, prec, suffix=""):
    text = f"{v:,.{prec}f}{suffix}" if v is not None else "-"
    return f"{text:>{width}}"

hdr = (f"{'workload':<19} {'IOPS':>9} {'MiB/s':>8} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} "
       f"{'tgt busy':>9} {'cli busy':>9} {'SPDK ref':>11} {'ratio':>6} {'errors':>6}")
print()
print(hdr)
print("-" * len(hdr))
failed = False
for label, name in rows:
    r = load(name + ".json")
    if r is None:
        continue
    failed |= bool(r["errors"])
    busy = load(name + ".busy.json")
    tgt = None
    if busy and busy.get("reactors"):
        b = sum(x["busy_ns"] for x in busy["reactors"])
        i = sum(x["idle_ns"] for x in busy["reactors"])
        tgt = b / (b + i) if b + i else None
    kind, ref = REF[name]
    if kind == "iops":
        ours, ref_text = r["iops"], f"{ref / 1000:.0f}K IOPS"
    else:
        ours, ref_text = r["bytes"] / r["elapsed_s"] if r["elapsed_s"] else 0, f"{ref / 1e9:.2f} GB/s"
    lat = r["latency_us"]
    print(f"{label:<19} {num(r['iops'], 9, 0)} {num(r['mib_s'], 8, 1)} {num(lat['p50'], 8, 1)} "
          f"{num(lat['p99'], 8, 1)} {num(lat['p99_9'], 9, 1)} "
          f"{num(tgt and tgt * 100, 9, 1, '%')} {num(r['busy'] * 100, 9, 1, '%')} "
          f"{ref_text:>11} {num(ours / ref, 6, 2)} {r['errors']:>6}")
print()
print(f"Gyre: gyre-perf (NVMe/TCP host) on one polling core -> gyred (NVMe/TCP target) on one "
      f"polling core, loopback, 1 GiB RAM namespace, digests hdgst={hdgst} ddgst={ddgst}.")
print("SPDK ref: SPDK 26.05 reference figures from the issue, measured elsewhere on other "
      "hardware; the ratio (Gyre / SPDK, by IOPS or by bandwidth) is indicative only.")
print("tgt busy: gyred reactor busy fraction over the middle of the run (reactor_stats); "
      "cli busy: gyre-perf reactor.")
sys.exit(1 if failed else 0)
PY

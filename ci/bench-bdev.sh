#!/usr/bin/env bash
# Benchmarks the bdev layer with gyre-perf, and the io_uring driver side by side with fio.
#
# Run by people (not by the tests): it busy-polls core $CORE for about 14 × ($T + $RAMP) s.
#   1. null and malloc bdevs: 4K randread and randwrite at QD1 and QD32, 128K read at QD32;
#   2. a file on the real disk ($IMG, written fully once so that it is allocated): 4K
#      randread and randwrite at QD32 through gyre's io_uring driver, then the same through
#      fio's io_uring engine (O_DIRECT, same file, same core), one after the other.
# Prints a table (workload, gyre IOPS, fio IOPS, gyre/fio, p99s) and keeps every JSON
# result in $OUT.
#
# Environment: T (seconds per run, default 5), RAMP (warm-up seconds, not counted, default 1),
# CORE (default 1), IMG (default /var/tmp/gyre-bench.img), IMG_SIZE (MiB, default 1024),
# OUT (default perf-results/bench-bdev-DATE), CARGO_TARGET_DIR, SKIP_BUILD=1, SKIP_FIO=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T="${T:-5}"
RAMP="${RAMP:-1}"
CORE="${CORE:-1}"
IMG="${IMG:-/var/tmp/gyre-bench.img}"
IMG_SIZE="${IMG_SIZE:-1024}"
OUT="${OUT:-$ROOT/perf-results/bench-bdev-$(date +%Y%m%d-%H%M%S)}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GYRE="$TARGET_DIR/release/gyre-perf"

die() {
    echo "bench-bdev: $*" >&2
    exit 1
}

[[ "$T" =~ ^[0-9]+$ && "$T" -gt 0 ]] || die "T must be a positive number of seconds (got '$T')"
[[ "$RAMP" =~ ^[0-9]+$ ]] || die "RAMP must be a whole number of seconds (got '$RAMP')"
[[ "$CORE" =~ ^[0-9]+$ ]] || die "CORE must be a core number (got '$CORE')"
[[ "$IMG_SIZE" =~ ^[0-9]+$ && "$IMG_SIZE" -gt 0 ]] || die "IMG_SIZE is in MiB (got '$IMG_SIZE')"
command -v python3 >/dev/null || die "python3 is needed to read the JSON results"
taskset -c "$CORE" true 2>/dev/null || die "core $CORE is not available to this process"

mkdir -p "$OUT"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "== building gyre-perf (release)"
    (cd "$ROOT" && cargo build --release -p gyre-perf)
fi
[[ -x "$GYRE" ]] || die "no gyre-perf binary at $GYRE"

# One gyre-perf run: gyre NAME ARGS... → $OUT/NAME.json
gyre() {
    local name="$1"
    shift
    echo "== gyre-perf $name"
    if ! "$GYRE" bdev --cores "$CORE" --idle poll --time "${T}s" --ramp "${RAMP}s" --json -q "$@" \
        >"$OUT/$name.json" 2>"$OUT/$name.log"; then
        cat "$OUT/$name.log" >&2
        die "gyre-perf $name failed"
    fi
}

# One fio run: fio_run NAME RW → $OUT/NAME.json
fio_run() {
    local name="$1" rw="$2"
    echo "== fio $name"
    local ramp=()
    [[ "$RAMP" -gt 0 ]] && ramp=(--ramp_time="$RAMP")
    if ! fio --name="$name" --ioengine=io_uring --direct=1 --rw="$rw" --bs=4k --iodepth=32 \
        --cpus_allowed="$CORE" --time_based --runtime="$T" "${ramp[@]}" --filename="$IMG" \
        --size="${IMG_SIZE}M" --lat_percentiles=1 --output-format=json \
        >"$OUT/$name.json" 2>"$OUT/$name.log"; then
        cat "$OUT/$name.log" >&2
        die "fio $name failed"
    fi
}

echo "== results in $OUT ($T s per run after a $RAMP s ramp, core $CORE)"

for bdev in null malloc; do
    for rw in randread randwrite; do
        for qd in 1 32; do
            gyre "$bdev-4k-$rw-qd$qd" --bdev "$bdev:1G" --rw "$rw" --bs 4k --qd "$qd"
        done
    done
    gyre "$bdev-128k-read-qd32" --bdev "$bdev:1G" --rw read --bs 128k --qd 32
done

# The file on the real disk, allocated by writing it once.
want=$((IMG_SIZE * 1024 * 1024))
have_size=$(stat -c %s "$IMG" 2>/dev/null || echo 0)
have_alloc=$(($(stat -c %b "$IMG" 2>/dev/null || echo 0) * 512))
if [[ "$have_size" -ne "$want" || "$have_alloc" -lt "$want" ]]; then
    echo "== writing $IMG ($IMG_SIZE MiB)"
    mkdir -p "$(dirname "$IMG")"
    dd if=/dev/urandom of="$IMG" bs=1M count="$IMG_SIZE" oflag=direct conv=fsync status=none
fi

if [[ "${SKIP_FIO:-0}" != 1 ]] && ! command -v fio >/dev/null; then
    echo "== installing fio"
    apt-get install -y fio >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y fio >/dev/null; } ||
        die "fio is missing and could not be installed (apt-get install -y fio)"
fi

for rw in randread randwrite; do
    gyre "uring-4k-$rw-qd32" --bdev "uring:$IMG" --rw "$rw" --bs 4k --qd 32
    if [[ "${SKIP_FIO:-0}" != 1 ]]; then
        fio_run "fio-4k-$rw-qd32" "$rw"
    fi
done

python3 - "$OUT" <<'PY'
import json, os, sys

out = sys.argv[1]

def load(name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)

def gyre(name):
    r = load(name)
    if r is None:
        return None
    return {"iops": r["iops"], "p99": r["latency_us"]["p99"], "mean": r["latency_us"]["mean"],
            "busy": r["busy"], "errors": r["errors"], "direct": r["target"].get("direct")}

def fio(name, rw):
    r = load(name)
    if r is None:
        return None
    j = r["jobs"][0]
    d = j["read" if "read" in rw else "write"]
    lat = d.get("lat_ns") or d.get("clat_ns") or {}
    p99 = (lat.get("percentile") or {}).get("99.000000")
    return {"iops": d["iops"], "p99": p99 / 1000.0 if p99 else None,
            "mean": lat.get("mean", 0) / 1000.0, "errors": j.get("error", 0),
            "cpu": (j.get("usr_cpu", 0) + j.get("sys_cpu", 0)) / 100.0}

rows = []
for bdev in ("null", "malloc"):
    for rw in ("randread", "randwrite"):
        for qd in (1, 32):
            rows.append((f"{bdev} 4k {rw} qd{qd}", f"{bdev}-4k-{rw}-qd{qd}", None, rw))
    rows.append((f"{bdev} 128k read qd32", f"{bdev}-128k-read-qd32", None, "read"))
for rw in ("randread", "randwrite"):
    rows.append((f"uring 4k {rw} qd32", f"uring-4k-{rw}-qd32", f"fio-4k-{rw}-qd32", rw))

def num(v, width, prec, suffix=""):
    text = f"{v:.{prec}f}{suffix}" if v is not None else "-"
    return f"{text:>{width}}"

hdr = f"{'workload':<26} {'gyre IOPS':>11} {'fio IOPS':>11} {'gyre/fio':>9} {'gyre p99 µs':>12} {'fio p99 µs':>11} {'gyre busy':>10} {'fio cpu':>8}"
print()
print(hdr)
print("-" * len(hdr))
failed = False
for label, gname, fname, rw in rows:
    g = gyre(gname)
    f = fio(fname, rw) if fname else None
    if g is None:
        continue
    failed |= bool(g["errors"]) or bool(f and f["errors"])
    ratio = g["iops"] / f["iops"] if f and f["iops"] else None
    print(f"{label:<26} {num(g['iops'], 11, 0)} {num(f and f['iops'], 11, 0)} "
          f"{num(ratio, 9, 2)} {num(g['p99'], 12, 2)} {num(f and f['p99'], 11, 2)} "
          f"{num(g['busy'] * 100, 10, 1, '%')} {num(f and f['cpu'] * 100, 8, 1, '%')}")
u = gyre("uring-4k-randread-qd32")
if u and u["direct"] is False:
    print("\nwarning: the filesystem refused O_DIRECT for gyre's uring bdev; the comparison is unfair")
print("\n(gyre busy: reactor busy fraction, polling; fio cpu: usr+sys of its job; p99: submission to completion)")
sys.exit(1 if failed else 0)
PY

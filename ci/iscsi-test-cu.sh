#!/usr/bin/env bash
# libiscsi's conformance suite (iscsi-test-cu, Debian package libiscsi-bin) against a gyred
# iSCSI LUN: a 256 MiB RAM disk with 512-byte blocks behind two portals (for the multipath
# tests). Runs the Rust integration test that starts gyred, runs every test family with a
# time bound, prints each family's Run Summary and the totals, and fails on any failed test.
#
#   bash ci/iscsi-test-cu.sh            # from the top of the checkout
#
# ci/test.sh runs the same test as part of the daemon's tests; this script runs it alone.
set -euo pipefail
cd "$(dirname "$0")/.."

# libiscsi-bin is installed by ci/test.sh (APT_PACKAGES); without it the test says so and
# passes without running.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo test -p gyred --test iscsi_conformance -- --nocapture

#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (FUZZ_SECONDS, default 30) from
# its seed corpus. cargo-fuzz needs nightly features; the stable toolchain
# provides them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
for target in rpc_packets domain_xml storage_xml network_xml; do
    # Work on a copy, so the committed seeds stay as they are.
    work=$(mktemp -d)
    cp -r "fuzz/corpus/$target/." "$work/"
    echo "fuzz: $target for ${secs}s"
    log="$work.log"
    status=0
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$work" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1 \
        || status=$?
    grep -E '^(Done|SUMMARY|==.*ERROR)|panicked' "$log" || true
    rm -rf "$work"
    if [ "$status" -ne 0 ]; then
        tail -40 "$log"
        echo "fuzz: $target failed"
        exit 1
    fi
    rm -f "$log"
done

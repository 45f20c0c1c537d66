#!/usr/bin/env bash
# The main job on a fresh machine: build mover, generate a sample tree with every kind of entry
# (files, sparse files, hard links, symlinks, FIFOs, xattrs, ACLs, odd names), copy it with
# `mover copy` through the real agent path (an in-process agent on a loopback mTLS tunnel),
# and check that the copy is identical.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/mover-demo}

cargo build --release --locked -p mover-cli -p mover-testdata
rm -rf "$work"
mkdir -p "$work/src"
target/release/mover-testdata generate "$work/src" --entries 5000
target/release/mover copy "$work/src" "$work/dst"
target/release/mover-testdata compare "$work/src" "$work/dst"
echo "copy of $work/src in $work/dst is identical"

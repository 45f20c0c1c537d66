#!/usr/bin/env bash
# Local copy of a >= 1 GiB mixed tree: `mover copy ./a ./b` (through its loopback mTLS agent
# path) next to `cp -a` and `rsync -aHAX`, in one run on one machine. Prints wall, user+sys CPU
# and peak RSS per run and the median wall time per tool.
#
#   RUNS=3 WORK=/var/tmp/mover-bench ./benches/compare-local.sh
#
# The tree is generated once (20k entries of every kind: mostly small files, ~100 medium ones up
# to 24 MiB, big random/text/sparse/database files, hard links, symlinks, FIFOs, xattrs, ACLs)
# and reused; delete $WORK/src to regenerate. Each copy is checked with `mover-testdata compare`.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
work=${WORK:-/var/tmp/mover-bench}
command -v rsync >/dev/null && [ -x /usr/bin/time ] || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync time
}
cargo build --release --locked -p mover-cli -p mover-testdata
mkdir -p "$work"
if [ ! -d "$work/src" ]; then
  mkdir -p "$work/src"
  target/release/mover-testdata generate "$work/src" --entries 20000 --max-file-size 24M \
    --big random:256M --big text:256M --big database:256M --big sparse:512M
fi
echo "tree: $(du -s --apparent-size -B1 "$work/src" | cut -f1) bytes apparent, $(du -s -B1 "$work/src" | cut -f1) allocated, $(find "$work/src" | wc -l) entries"

declare -A walls
# Round robin (mover, cp, rsync, mover, ...): on ext4 every copy-and-delete round makes the next
# inode allocations slower ("recently deleted" inodes), so running one tool's runs first would
# favour it.
for i in $(seq "$runs"); do
  for tool in mover cp rsync; do
    rm -rf "$work/dst"
    sync
    case $tool in
      mover) cmd=(target/release/mover copy "$work/src" "$work/dst") ;;
      cp) cmd=(cp -a "$work/src" "$work/dst") ;;
      rsync) cmd=(rsync -aHAX "$work/src/" "$work/dst/") ;;
    esac
    out=$(/usr/bin/time -f '%e %U %S %M' "${cmd[@]}" 2>&1 >/dev/null | tail -1)
    read -r wall user sys rss <<<"$out"
    verdict=$(target/release/mover-testdata compare "$work/src" "$work/dst" --no-allocation | tail -1)
    printf '%-6s run %d: wall %6.2f s  cpu %6.2f s  peak RSS %6d KiB  %s\n' "$tool" "$i" "$wall" "$(echo "$user + $sys" | bc)" "$rss" "$verdict"
    walls[$tool]+="$wall "
  done
done
rm -rf "$work/dst"
echo
for tool in mover cp rsync; do
  median=$(tr ' ' '\n' <<<"${walls[$tool]}" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf 'median wall %-6s %6.2f s\n' "$tool" "$median"
done

#!/usr/bin/env bash
# mover against rsync through stunnel, set up the way OpenShift MTC's direct volume migration
# (DVM) does it, side by side in one run on one generated tree.
#
#   ./benches/compare-rsync.sh                         # full tree (>= 2 GiB), 3 runs, all cases
#   SCALE=small RUNS=1 LINK=0 ./benches/compare-rsync.sh   # quick check (~2k entries, ~150 MiB)
#
# Environment:
#   SCALE   full (default: 20k entries, 24M medium files, big database 384M, random 320M,
#           sparse 1G, text 256M) or small (2k entries, 2M, 32M/32M/64M/16M)
#   GEN_ARGS  replaces the generator arguments of SCALE (e.g. SCALE=mine GEN_ARGS="--entries 500")
#   RUNS    repetitions per tool and case (default 3); the tables show medians
#   WORK    work directory (default /var/tmp/mover-compare); trees are kept there and reused
#   LINK    1 (default) runs case (d) over a 100 Mbit/s veth link between two network
#           namespaces; 0 skips it (it is slow)
#   RATE    rate of the link's tbf qdisc (default 100mbit)
#   TOOLS   subset of "mover mover-base rsync rsync-z" (default "mover rsync rsync-z")
#   BASE_BIN  directory of another build's mover, mover-agent (tool mover-base): old and new
#           binaries then take turns in one invocation, e.g. to show a change keeps the speed
#   CASES   subset of "a b c d w s" (default "a b c d"; b needs a, c, d and w need a's result as
#           their basis)
#   DELAY_MS  one-way delay of case (w)'s relay (default 25: a 50 ms round trip)
#   SMALL_FILES  files of case (s) (default 100000, in directories of 100)
#   VERIFY  1 (default) compares the target with the source after every run
#   BUILD   1 (default) runs cargo build first; 0 uses the binaries in target/release as they are
#   TARGETS loop (default when root): the targets live on a fresh journaled ext4 on a loop device
#           ($WORK/targets.img, sparse), like the fresh PV a migration writes to; xfs: the same
#           with XFS (reflinks on: mover clones a changed file's old version, rsync rewrites
#           it); work: in WORK.
#           (This machine's root filesystem has no journal, and without one ext4's inode
#           allocator skips inodes deleted in the last 5 minutes one by one: creating the 20k
#           entries of case (a) right after the last run's target was deleted then costs seconds
#           of CPU, more or less from run to run, whichever tool runs.)
#
# Cases, each for mover, rsync (MTC options) and rsync -z:
#   (a) initial copy into an empty target
#   (b) re-sync with nothing changed
#   (c) re-sync after ~1 % of the bytes changed: SRC2 = SRC + a deterministic mutation; the target
#       is reset (untimed, cp -a) to that tool's own case (a) result, then SRC2 is synced into it
#   (d) (c) and (a) again over a tbf-shaped (RATE) veth pair between two namespaces: the target
#       side (rsync daemon + stunnel server, or mover-agent) in one listening on 10.213.0.2, the
#       source side in the other
#   (w) a long link: (c), then (a) and (b), with `mover-testdata delay-relay` holding every byte
#       DELAY_MS in each direction between the two ends (mover -> relay -> agent; rsync ->
#       stunnel client -> relay -> stunnel server -> rsync daemon); bandwidth is loopback's, so
#       this shows the round trips each tool waits for (tc netem does not work here)
#   (s) many small files: SMALL_FILES files of 1-8 KiB (seeded sizes and content) in
#       directories of 100, initial copy and no-change re-sync, with
#       `tar --format=posix -cf - | tar xf -` into an empty directory beside them as the floor
#       of the initial copy (tool "tar"), and two `find -printf` at once, of the source and of
#       tar's copy, as the floor of the no-change re-sync (tool "walk": each end must at least
#       look at every file's metadata, and the two ends share this machine's cores)
#
# The rsync side, as MTC's DVM runs it: on the target an rsync daemon (module `path = TARGET`,
# `read only = false`, `use chroot = no`, `munge symlinks = no`, `uid/gid = root`) on
# 127.0.0.1:A behind an stunnel server (accept B, connect A, TLSv1.2, verify = 2 against a CA
# made here); on the source an stunnel client (accept 127.0.0.1:C, connect B, its own client
# certificate) and `rsync --recursive --links --perms --times --devices --specials --owner
# --group --hard-links --delete --partial --stats [-z] SRC/ rsync://127.0.0.1:C/module/`.
# Servers are started afresh for every run; only the client command is timed.
#
# Measured per run: wall time of the client; CPU (user+sys) of both ends: the client by
# time(1), the servers by /proc/PID/stat utime+stime+cutime+cstime deltas around the client
# (the rsync daemon reaps its per-connection children, so their CPU lands in its cutime/cstime);
# application bytes before TLS per direction; bytes and packets on the veth (case d); peak RSS
# of both ends (time(1) %M; for the rsync daemon's children, the sum of their VmHWM sampled every
# 0.1 s). Caches are warm for every tool alike (no drop_caches; `sync` before each run). The
# target is compared with the source after every run (mover-testdata compare; --no-allocation
# for rsync, which fills holes). Results: tables on stdout, $WORK/results-$SCALE-*.tsv.
set -euo pipefail
export LC_ALL=C

cd "$(dirname "$0")/.."
REPO=$PWD
SCALE=${SCALE:-full}
RUNS=${RUNS:-3}
WORK=${WORK:-/var/tmp/mover-compare}
LINK=${LINK:-1}
RATE=${RATE:-100mbit}
TOOLS=${TOOLS:-"mover rsync rsync-z"}
CASES=${CASES:-"a b c d"}
DELAY_MS=${DELAY_MS:-25}
SMALL_FILES=${SMALL_FILES:-100000}
VERIFY=${VERIFY:-1}
BUILD=${BUILD:-1}
BIN=$REPO/target/release
BASE_BIN=${BASE_BIN:-}
if [[ " $TOOLS " == *" mover-base "* ]]; then
  [ -x "$BASE_BIN/mover" ] && [ -x "$BASE_BIN/mover-agent" ] ||
    { printf 'error: TOOLS has mover-base: set BASE_BIN to a directory with mover and mover-agent\n' >&2; exit 1; }
fi
MUTATION_VERSION=mutation-v2

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
has_case() { [[ " $CASES " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Packages and binaries

need=()
command -v rsync >/dev/null || need+=(rsync)
command -v stunnel4 >/dev/null || need+=(stunnel4)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/bin/time ] || need+=(time)
command -v bc >/dev/null || need+=(bc)
{ command -v ip && command -v tc && command -v ss; } >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync stunnel4 openssl time bc iproute2
fi
if [ "$BUILD" = 1 ]; then
  cargo build --release --locked -p mover-cli -p mover-agent -p mover-testdata
fi
for b in mover mover-agent mover-testdata; do [ -x "$BIN/$b" ] || die "$BIN/$b missing"; done
MOVER_ENV=$(env | grep -E '^MOVER_' | sort | tr '\n' ' ' || true)
[ -z "$MOVER_ENV" ] || say "note: set in the environment, mover will honour: $MOVER_ENV"

case $SCALE in
  full) GEN=(--entries 20000 --max-file-size 24M --big database:384M --big random:320M --big sparse:1G --big text:256M) ;;
  small) GEN=(--entries 2000 --max-file-size 2M --big database:32M --big random:32M --big sparse:64M --big text:16M) ;;
  *) [ -n "${GEN_ARGS:-}" ] || die "SCALE must be full or small (or set GEN_ARGS)" ;;
esac
if [ -n "${GEN_ARGS:-}" ]; then read -r -a GEN <<<"$GEN_ARGS"; fi
GEN+=(--plain)

TREE=$WORK/$SCALE
SRC=$TREE/src
SRC2=$TREE/src2
LOGS=$WORK/logs
RAW=$LOGS/raw.tsv
mkdir -p "$TREE"
rm -rf "$LOGS"
mkdir -p "$LOGS"

# ---------------------------------------------------------------------------------------------
# Clean-up: servers we started (by pid), our namespaces, the target trees.

LIVE=()      # pids of servers still running
CLIENT_PID=  # time(1) running the measured client
NETNS=()     # namespaces we created
TDIR=$TREE   # where the targets live (see TARGETS)
TMOUNTED=0
LOOPDEV=
cleanup() {
  local rc=$? p
  set +e
  if [ -n "$CLIENT_PID" ]; then
    for p in $(pgrep -P "$CLIENT_PID"); do kill -TERM "$p" 2>/dev/null; done
    LIVE+=("$CLIENT_PID")
  fi
  for p in "${LIVE[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${LIVE[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  wait 2>/dev/null
  for p in "${NETNS[@]}"; do ip netns del "$p" 2>/dev/null; done
  rm -rf "$TDIR"/dst-* "$TDIR"/base-* "$LOGS"/probe-*
  if [ "$TMOUNTED" = 1 ]; then
    umount "$TDIR" 2>/dev/null
    losetup -d "$LOOPDEV"
    rm -f "$WORK/targets.img"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# The test trees: SRC (generated once, reused) and SRC2 = SRC + a deterministic ~1 % mutation.

spec="${GEN[*]}"
if [ ! -d "$SRC" ] || [ "$(cat "$TREE/src.spec" 2>/dev/null)" != "$spec" ]; then
  say "generating $SRC ($spec)"
  rm -rf "$SRC" "$SRC2" "$TREE/src.spec" "$TREE/src2.spec"
  mkdir -p "$SRC"
  "$BIN/mover-testdata" generate "$SRC" "${GEN[@]}" >&2
  echo "$spec" >"$TREE/src.spec"
fi

# Deterministic numbers: `rand SEED COUNT MAX` prints COUNT integers in [0, MAX) (MINSTD LCG,
# exact in awk's doubles).
rand() {
  awk -v seed="$1" -v n="$2" -v m="$3" 'BEGIN {
    x = seed % 2147483647; if (x <= 0) x = 1
    for (i = 0; i < 5; i++) x = (x * 48271) % 2147483647
    for (i = 0; i < n; i++) { x = (x * 48271) % 2147483647; printf "%.0f\n", int(x / 2147483647 * m) }
  }'
}

# Random bytes from a fixed AES-CTR key stream (deterministic): `pool FILE BYTES`.
pool() {
  head -c "$2" /dev/zero | openssl enc -aes-128-ctr -nosalt -K 6d6f7665722d636f6d706172652d3031 \
    -iv 00000000000000000000000000000000 >"$1"
}

# Lines of text from a fixed vocabulary: `text_lines SEED BYTES`.
text_lines() {
  awk -v seed="$1" -v want="$2" 'BEGIN {
    split("the of and to in is was for on that with as by at from this be are or an it not " \
      "which have has had were but all their been one more can other also into than would " \
      "request response volume migration source target cluster node pod storage error warning " \
      "info debug started finished bytes files checksum retry timeout connection tls agent", w, " ")
    nw = 0; for (k in w) nw++
    x = seed; out = 0; line = 0
    while (out < want) {
      line++; s = sprintf("%08d ", line)
      len = 6 + (x % 14)
      for (j = 0; j < len; j++) { x = (x * 48271) % 2147483647; s = s w[1 + (x % nw)] " " }
      x = (x * 48271) % 2147483647
      s = s sprintf("id=%d", x)
      if (out + length(s) + 1 > want) s = substr(s, 1, want - out - 1)
      print s; out += length(s) + 1
    }
  }'
}

# Writes BYTES bytes of the pool, from position POS, into FILE at OFFSET (in place).
POOL=
POOL_SIZE=0
POOL_POS=0
put() { # FILE OFFSET BYTES
  if ((POOL_POS + $3 > POOL_SIZE)); then POOL_POS=0; fi
  dd if="$POOL" of="$1" bs="$3" count=1 iflag=skip_bytes oflag=seek_bytes skip="$POOL_POS" \
    seek="$2" conv=notrunc status=none
  POOL_POS=$((POOL_POS + $3))
}

# The mutation. Budget: 1 % of the regular files' bytes (each inode once). Spent as 45 % 8 KiB
# database pages (copied from another page of the file, header rewritten), 20 % 4 KiB pages in
# the sparse file (half inside its data islands, half anywhere, mostly filling holes), 15 %
# appended to the text file, 2 x 5 % appended to the two largest medium files; 4 KiB inserted
# in the middle of the incompressible file (shifting the rest, as an edited file does); on top, small
# files edited in place, added and deleted (each ~0.5 % of the small files), and one directory
# holding a few files renamed.
mutate() {
  local dir=$1 total budget n i p q size f log=$TREE/src2.mutation.log
  total=$(find "$dir" -type f -printf '%i %s\n' | sort -u | awk '{s += $2} END {printf "%.0f", s}')
  budget=$((total / 100))
  POOL=$TREE/pool.bin
  POOL_SIZE=$((budget * 2 + (8 << 20)))
  POOL_POS=0
  pool "$POOL" "$POOL_SIZE"
  : >"$log"
  local changed=0

  # Database pages.
  local db
  db=$(find "$dir/big" -name 'database-*.db' | sort | head -1)
  if [ -n "$db" ]; then
    size=$(stat -c %s "$db")
    local pages=$((size / 8192)) count=$((budget * 45 / 100 / 8192))
    ((count >= 4)) || count=4
    while read -r p q; do
      dd if="$db" of="$db" bs=8192 count=1 skip="$q" seek="$p" conv=notrunc status=none
      put "$db" $((p * 8192)) 24
    done < <(paste <(rand 11 "$count" "$pages") <(rand 12 "$count" "$pages"))
    changed=$((changed + count * 8192))
    echo "database: $count 8 KiB pages rewritten in ${db#"$dir"/}" >>"$log"
  fi

  # Sparse file pages: data islands every 16 MiB, 256 KiB long (as mover-testdata makes them).
  local sp
  sp=$(find "$dir/big" -name 'sparse-*.img' | sort | head -1)
  if [ -n "$sp" ]; then
    size=$(stat -c %s "$sp")
    local count=$((budget * 20 / 100 / 4096)) islands=$((size / (16 << 20)))
    ((count >= 4)) || count=4
    ((islands >= 1)) || islands=1
    local half=$((count / 2))
    while read -r p q; do
      put "$sp" $((p * (16 << 20) + q * 4096)) 4096
    done < <(paste <(rand 21 "$half" "$islands") <(rand 22 "$half" 64))
    while read -r p; do put "$sp" $((p * 4096)) 4096; done < <(rand 23 $((count - half)) $((size / 4096)))
    changed=$((changed + count * 4096))
    echo "sparse: $count 4 KiB pages written in ${sp#"$dir"/} ($half in data islands)" >>"$log"
  fi

  # Text append.
  local tx
  tx=$(find "$dir/big" -name 'text-*.log' | sort | head -1)
  if [ -n "$tx" ]; then
    local add=$((budget * 15 / 100))
    text_lines 31 "$add" >>"$tx"
    changed=$((changed + add))
    echo "text: $add bytes appended to ${tx#"$dir"/}" >>"$log"
  fi

  # Appends to the two largest files outside big/.
  local add=$((budget * 5 / 100))
  while read -r size f; do
    head -c "$add" "$POOL" >>"$f"
    changed=$((changed + add))
    echo "medium: $add bytes appended to ${f#"$dir"/} ($size bytes before)" >>"$log"
  done < <(find "$dir" -path "$dir/big" -prune -o -type f -printf '%s %p\n' | sort -k1,1nr -k2 | head -2)

  # An insert: 4 KiB put in at a third of the incompressible file; everything after it shifts.
  local rf
  rf=$(find "$dir/big" -name 'random-*.bin' | sort | head -1)
  if [ -n "$rf" ]; then
    size=$(stat -c %s "$rf")
    local at=$((size / 3))
    { head -c "$at" "$rf"; head -c 4096 "$POOL"; tail -c +$((at + 1)) "$rf"; } >"$rf.shifted"
    cat "$rf.shifted" >"$rf" # same inode, mode and links
    rm -f "$rf.shifted"
    changed=$((changed + 4096))
    echo "insert: 4096 bytes inserted at offset $at of ${rf#"$dir"/} ($size bytes before; the rest shifts)" >>"$log"
  fi

  # Small files (<= 16 KiB, one link): edit, delete; and add new ones.
  local smalls=$LOGS/smalls.txt dirs=$LOGS/dirs.txt
  find "$dir" -path "$dir/big" -prune -o -type f -links 1 -size -16385c -printf '%p\n' | sort >"$smalls"
  find "$dir" -path "$dir/big" -prune -o -type d -printf '%p\n' | sort >"$dirs"
  local ns nd k
  ns=$(wc -l <"$smalls")
  nd=$(wc -l <"$dirs")
  k=$((ns / 200))
  ((k >= 5)) || k=5
  local edited=0 deleted=0 added=0
  while read -r i; do
    f=$(sed -n "$((i + 1))p" "$smalls")
    size=$(stat -c %s "$f")
    local len=$((64 + i % 960)) off=0
    ((size > len)) && off=$(((i * 7919) % (size - len)))
    put "$f" "$off" "$len"
    changed=$((changed + len))
    edited=$((edited + 1))
  done < <(rand 41 "$k" "$ns" | sort -u)
  while read -r i; do
    f=$(sed -n "$((i + 1))p" "$smalls")
    [ -e "$f" ] || continue
    rm -f "$f"
    deleted=$((deleted + 1))
  done < <(rand 42 "$k" "$ns" | sort -u | comm -23 - <(rand 41 "$k" "$ns" | sort -u))
  n=0
  while read -r i; do
    n=$((n + 1))
    local d
    d=$(sed -n "$((i + 1))p" "$dirs")
    [ -d "$d" ] || continue
    local len=$((200 + (i * 104729) % 8000))
    f=$(printf '%s/added-%04d.dat' "$d" "$n")
    : >"$f"
    put "$f" 0 "$len"
    changed=$((changed + len))
    added=$((added + 1))
  done < <(rand 43 "$k" "$nd")
  echo "small files: $edited edited in place, $deleted deleted, $added added" >>"$log"

  # Rename one directory (depth >= 2, no big/) holding between 3 and max(20, entries/200) entries.
  local entries limit cand
  entries=$(find "$dir" -mindepth 1 | wc -l)
  limit=$((entries / 200))
  ((limit >= 20)) || limit=20
  cand=$(find "$dir" -mindepth 1 -path "$dir/big" -prune -o -printf '%P\n' | awk -F/ -v lim="$limit" '
    { for (i = 1; i < NF; i++) { p = $1; for (j = 2; j <= i; j++) p = p "/" $j; c[p]++ } }
    END { for (p in c) if (c[p] >= 3 && c[p] <= lim && index(p, "/") > 0) print p }' | sort)
  if [ -n "$cand" ]; then
    local nc pick
    nc=$(wc -l <<<"$cand")
    pick=$(sed -n "$(($(rand 51 1 "$nc") + 1))p" <<<"$cand")
    local bytes
    bytes=$(find "$dir/$pick" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f", s}')
    mv "$dir/$pick" "$dir/$pick-renamed"
    changed=$((changed + bytes))
    echo "renamed directory $pick -> $pick-renamed ($(find "$dir/$pick-renamed" | wc -l) entries, $bytes bytes)" >>"$log"
  fi
  rm -f "$POOL" "$smalls" "$dirs"
  echo "total: about $changed bytes changed of $total ($(awk -v a="$changed" -v b="$total" 'BEGIN {printf "%.2f", 100 * a / b}') %)" >>"$log"
}

if [ ! -d "$SRC2" ] || [ "$(cat "$TREE/src2.spec" 2>/dev/null)" != "$spec $MUTATION_VERSION" ]; then
  say "making $SRC2 = $SRC + mutation"
  rm -rf "$SRC2" "$TREE/src2.spec"
  cp -a "$SRC" "$SRC2"
  out=$("$BIN/mover-testdata" compare "$SRC" "$SRC2" 2>&1) || die "cp -a did not reproduce the tree: $out"
  mutate "$SRC2"
  echo "$spec $MUTATION_VERSION" >"$TREE/src2.spec"
fi

# ---------------------------------------------------------------------------------------------
# Certificates: mover's own, and a CA + server + client for stunnel (reused).

MCERTS=$WORK/mover-certs
[ -s "$MCERTS/ca.crt" ] || "$BIN/mover" certs init "$MCERTS" >/dev/null
SCERTS=$WORK/stunnel-certs
if [ ! -s "$SCERTS/client.crt" ]; then
  mkdir -p "$SCERTS"
  (
    cd "$SCERTS"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=mover-compare stunnel CA" 2>/dev/null
    for who in server client; do
      eku=serverAuth
      [ "$who" = client ] && eku=clientAuth
      openssl req -newkey rsa:2048 -nodes -keyout "$who.key" -out "$who.csr" \
        -subj "/CN=mover-compare stunnel $who" 2>/dev/null
      openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -out "$who.crt" -extfile <(printf 'subjectAltName=IP:127.0.0.1,IP:10.213.0.2,DNS:localhost\nextendedKeyUsage=%s\n' "$eku") 2>/dev/null
      rm -f "$who.csr"
    done
    chmod 600 ./*.key
  )
fi

# ---------------------------------------------------------------------------------------------
# The 100 Mbit/s link: namespaces a and b joined by a veth pair, tbf on both ends.

NS_A=mvcmp-a-$$
NS_B=mvcmp-b-$$
VETH_A=mvca$$
VETH_B=mvcb$$
LINK_OK=0
setup_link() {
  if [ "$(id -u)" != 0 ]; then say "case (d) skipped: needs root"; return 0; fi
  if ! ip netns add "$NS_A" 2>"$LOGS/netns.err"; then
    say "case (d) skipped: ip netns failed: $(cat "$LOGS/netns.err")"
    return 0
  fi
  NETNS+=("$NS_A")
  ip netns add "$NS_B" || { say "case (d) skipped: ip netns add failed"; return 0; }
  NETNS+=("$NS_B")
  if ! {
    ip link add "$VETH_A" type veth peer name "$VETH_B" &&
      ip link set "$VETH_A" netns "$NS_A" && ip link set "$VETH_B" netns "$NS_B" &&
      ip -n "$NS_A" addr add 10.213.0.1/24 dev "$VETH_A" &&
      ip -n "$NS_B" addr add 10.213.0.2/24 dev "$VETH_B" &&
      ip -n "$NS_A" link set lo up && ip -n "$NS_B" link set lo up &&
      ip -n "$NS_A" link set "$VETH_A" up && ip -n "$NS_B" link set "$VETH_B" up &&
      ip netns exec "$NS_A" tc qdisc add dev "$VETH_A" root tbf rate "$RATE" burst 64kb latency 50ms &&
      ip netns exec "$NS_B" tc qdisc add dev "$VETH_B" root tbf rate "$RATE" burst 64kb latency 50ms
  } 2>"$LOGS/netns.err"; then
    say "case (d) skipped: setting up the link failed: $(cat "$LOGS/netns.err")"
    return 0
  fi
  LINK_OK=1
}
if has_case d; then
  if [ "$LINK" = 1 ]; then setup_link; else say "case (d) skipped (LINK=0)"; fi
fi

# ---------------------------------------------------------------------------------------------
# Servers and one measured run.

# Loopback ports (the namespaces use the same numbers inside them).
pick_port() {
  local p
  for ((p = $1; p < $1 + 1000; p++)); do
    [ -z "$(ss -Hltn "sport = :$p")" ] && [[ " ${PORTS_TAKEN:-} " != *" $p "* ]] && { echo "$p"; return; }
  done
  die "no free port near $1"
}
base=$((20000 + RANDOM % 30000))
PORT_RSYNC=$(pick_port "$base")
PORTS_TAKEN="$PORT_RSYNC"
PORT_STUNNEL_SRV=$(pick_port $((base + 1)))
PORTS_TAKEN+=" $PORT_STUNNEL_SRV"
PORT_STUNNEL_CLI=$(pick_port $((base + 2)))
PORTS_TAKEN+=" $PORT_STUNNEL_CLI"
PORT_AGENT=$(pick_port $((base + 3)))
PORTS_TAKEN+=" $PORT_AGENT"
PORT_RELAY=$(pick_port $((base + 4)))

# CPU ticks (user + sys, plus those of reaped children) of a process.
ticks() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13} + ${14} + ${15}))
}
HZ=$(getconf CLK_TCK)

# spawn NAME CMD...: runs CMD (which starts with an optional `ip netns exec NS`, then
# /usr/bin/time) in the background; sets SPAWN_PID to the server process (the child of time).
SPAWN_PID=
SAMPLER_PID=
spawn() {
  local name=$1 tp p=
  shift
  "$@" >"$D/$name.out" 2>"$D/$name.err" &
  tp=$!
  for _ in $(seq 500); do
    p=$(pgrep -P "$tp" | head -1 || true)
    [ -n "$p" ] && break
    kill -0 "$tp" 2>/dev/null || break
    sleep 0.01
  done
  [ -n "$p" ] || { cat "$D/$name.err" >&2; die "$name did not start"; }
  LIVE+=("$p")
  SPAWN_PID=$p
  SRV_NAMES+=("$name")
  SRV_PIDS+=("$p")
  SRV_TPIDS+=("$tp")
}

# The rsync daemon forks a process per connection, which forks again (generator + receiver);
# time(1) only reports the largest of them. This samples, every 0.1 s while they live, the sum
# of VmHWM (peak RSS) over the daemon's descendants and keeps the largest sum in OUT.
hwm_sampler() { # ROOT_PID OUT
  set +e
  local root=$1 out=$2 best=0 sum p k v queue kids
  while [ ! -e "$out.stop" ] && [ -e "/proc/$root" ]; do
    sum=0
    queue=("$root")
    while ((${#queue[@]})); do
      p=${queue[0]}
      queue=("${queue[@]:1}")
      kids=()
      for k in /proc/"$p"/task/*/children; do
        v=()
        [ -r "$k" ] && read -r -a v <"$k" 2>/dev/null # no trailing newline: read "fails" at EOF
        kids+=("${v[@]}")
      done
      for k in "${kids[@]}"; do
        queue+=("$k")
        while read -r v p_ _; do
          [ "$v" = VmHWM: ] && { sum=$((sum + p_)); break; }
        done <"/proc/$k/status" 2>/dev/null
      done
    done
    if ((sum > best)); then
      best=$sum
      echo "$best" >"$out"
    fi
    sleep 0.1
  done
}

wait_listen() { # NS PORT NAME
  local ns=() i
  [ -n "$1" ] && ns=(ip netns exec "$1")
  for i in $(seq 1000); do
    [ -n "$("${ns[@]}" ss -Hltn "sport = :$2")" ] && return 0
    sleep 0.01
  done
  cat "$D/$3.err" "$D/$3.out" >&2 || true
  die "$3 is not listening on port $2"
}

start_rsync_side() { # NS_SRC NS_DST DST_DIR HOST [CONNECT]
  local nsa=() nsb=() host=$4 connect=${5:-$4:$PORT_STUNNEL_SRV}
  [ -n "$1" ] && nsa=(ip netns exec "$1")
  [ -n "$2" ] && nsb=(ip netns exec "$2")
  cat >"$D/rsyncd.conf" <<EOF
# rsync daemon of the target, as MTC's DVM transfer pod runs it (no auth users: the tunnel's
# mutual TLS is the authentication here)
pid file =
log file = $D/rsyncd.log
hosts allow = 127.0.0.1, ::1
uid = root
gid = root
[module]
    path = $3
    read only = false
    use chroot = no
    munge symlinks = no
EOF
  cat >"$D/stunnel-server.conf" <<EOF
; stunnel in front of the target's rsync daemon (MTC DVM style)
foreground = yes
pid =
syslog = no
output = $D/stunnel-server.log
debug = 6
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
sslVersion = TLSv1.2
[rsync]
accept = $host:$PORT_STUNNEL_SRV
connect = 127.0.0.1:$PORT_RSYNC
cert = $SCERTS/server.crt
key = $SCERTS/server.key
CAfile = $SCERTS/ca.crt
verify = 2
TIMEOUTclose = 0
EOF
  cat >"$D/stunnel-client.conf" <<EOF
; stunnel on the source side (MTC DVM style)
foreground = yes
pid =
syslog = no
output = $D/stunnel-client.log
debug = 6
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
sslVersion = TLSv1.2
client = yes
[rsync]
accept = 127.0.0.1:$PORT_STUNNEL_CLI
connect = $connect
cert = $SCERTS/client.crt
key = $SCERTS/client.key
CAfile = $SCERTS/ca.crt
verify = 2
EOF
  spawn rsyncd "${nsb[@]}" /usr/bin/time -f '%M' -o "$D/rsyncd.time" \
    rsync --daemon --no-detach --config="$D/rsyncd.conf" --address=127.0.0.1 --port="$PORT_RSYNC"
  echo 0 >"$D/rsyncd.hwm"
  hwm_sampler "$SPAWN_PID" "$D/rsyncd.hwm" &
  SAMPLER_PID=$!
  spawn stunnel-server "${nsb[@]}" /usr/bin/time -f '%M' -o "$D/stunnel-server.time" stunnel4 "$D/stunnel-server.conf"
  spawn stunnel-client "${nsa[@]}" /usr/bin/time -f '%M' -o "$D/stunnel-client.time" stunnel4 "$D/stunnel-client.conf"
  wait_listen "$2" "$PORT_RSYNC" rsyncd
  wait_listen "$2" "$PORT_STUNNEL_SRV" stunnel-server
  wait_listen "$1" "$PORT_STUNNEL_CLI" stunnel-client
}

# The long link of case (w): a relay on PORT_RELAY to UPSTREAM, DELAY_MS each way. Its CPU and
# memory are counted for neither end.
start_relay() { # UPSTREAM
  spawn relay /usr/bin/time -f '%M' -o "$D/relay.time" \
    "$BIN/mover-testdata" delay-relay "127.0.0.1:$PORT_RELAY" "$1" "$DELAY_MS"
  wait_listen '' "$PORT_RELAY" relay
}

AGENT_ADDR=
start_agent() { # NS_DST DST_DIR HOST BIN
  local nsb=() i
  [ -n "$1" ] && nsb=(ip netns exec "$1")
  spawn agent "${nsb[@]}" /usr/bin/time -f '%M' -o "$D/agent.time" \
    "$4/mover-agent" serve --listen "$3:$PORT_AGENT" --certs "$MCERTS" --volume "vol=$2" --log-format json
  AGENT_ADDR=
  for i in $(seq 1000); do
    if grep -q '"message":"serving"' "$D/agent.err" 2>/dev/null; then
      AGENT_ADDR=$(grep '"message":"serving"' "$D/agent.err" | grep -o '"listen":"[^"]*"' | head -1 | cut -d'"' -f4)
      break
    fi
    kill -0 "$SPAWN_PID" 2>/dev/null || break
    sleep 0.01
  done
  [ -n "$AGENT_ADDR" ] || { cat "$D/agent.err" >&2; die "mover-agent did not start"; }
}

# Stops the servers of this run: waits for the rsync daemon's per-connection children to be
# reaped, reads the CPU ticks, SIGTERM, waits for time(1) to write the peak RSS.
stop_servers() {
  local i p
  for i in "${!SRV_NAMES[@]}"; do
    p=${SRV_PIDS[$i]}
    if [ "${SRV_NAMES[$i]}" = rsyncd ]; then
      for _ in $(seq 1000); do pgrep -P "$p" >/dev/null || break; sleep 0.01; done
    fi
  done
  for i in "${!SRV_NAMES[@]}"; do SRV_T1[$i]=$(ticks "${SRV_PIDS[$i]}"); done
  local own_hwm=0
  if [ -n "$SAMPLER_PID" ]; then
    touch "$D/rsyncd.hwm.stop"
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=
    for i in "${!SRV_NAMES[@]}"; do
      [ "${SRV_NAMES[$i]}" = rsyncd ] || continue
      own_hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/${SRV_PIDS[$i]}/status" 2>/dev/null || echo 0)
    done
  fi
  for i in "${!SRV_NAMES[@]}"; do kill -TERM "${SRV_PIDS[$i]}" 2>/dev/null || true; done
  for i in "${!SRV_NAMES[@]}"; do
    wait "${SRV_TPIDS[$i]}" 2>/dev/null || true
    SRV_RSS[$i]=$(tail -1 "$D/${SRV_NAMES[$i]}.time" 2>/dev/null | grep -Eo '^[0-9]+$' || echo 0)
    if [ "${SRV_NAMES[$i]}" = rsyncd ]; then
      # the daemon itself plus the summed peaks of its connection processes, at least time's %M
      local sampled=$((${own_hwm:-0} + $(cat "$D/rsyncd.hwm" 2>/dev/null || echo 0)))
      ((sampled > SRV_RSS[i])) && SRV_RSS[$i]=$sampled
    fi
    local keep=()
    for p in "${LIVE[@]}"; do [ "$p" = "${SRV_PIDS[$i]}" ] || keep+=("$p"); done
    LIVE=("${keep[@]}")
  done
}

link_counters() { # "TX_BYTES RX_BYTES PACKETS" of the veth in namespace a (the source side)
  local s=/sys/class/net/$VETH_A/statistics
  ip netns exec "$NS_A" cat "$s/tx_bytes" "$s/rx_bytes" "$s/tx_packets" "$s/rx_packets" |
    awk '{v[NR] = $1} END {printf "%.0f %.0f %.0f\n", v[1], v[2], v[3] + v[4]}'
}

num() { tr -d ',' | grep -Eo '[0-9]+' | head -1; }

# measure CASE TOOL RUN SRC DST LINK(0|1|wan)
printf 'case\ttool\trun\twall_s\tcpu_src_s\tcpu_dst_s\tcpu_total_s\tapp_sent_bytes\tapp_recv_bytes\tlink_fwd_bytes\tlink_rev_bytes\tlink_packets\trss_src_kib\trss_dst_kib\tfiles_transferred\tstatus\n' >"$RAW"
measure() {
  local case=$1 tool=$2 run=$3 src=$4 dst=$5 link=$6
  local nss='' nsd='' host=127.0.0.1
  if [ "$link" = 1 ]; then nss=$NS_A nsd=$NS_B host=10.213.0.2; fi
  local nsa=()
  [ -n "$nss" ] && nsa=(ip netns exec "$nss")
  D=$LOGS/$case-$tool-$run
  mkdir -p "$D"
  SRV_NAMES=() SRV_PIDS=() SRV_TPIDS=() SRV_T0=() SRV_T1=() SRV_RSS=()
  local cmd=()
  case $tool in
    mover | mover-base)
      local bin=$BIN
      [ "$tool" = mover-base ] && bin=$BASE_BIN
      start_agent "$nsd" "$dst" "$host" "$bin"
      local addr=$AGENT_ADDR
      if [ "$link" = wan ]; then start_relay "$AGENT_ADDR"; addr=127.0.0.1:$PORT_RELAY; fi
      cmd=("$bin/mover" copy "$src" "agent://$addr/vol" --certs "$MCERTS" --output json)
      ;;
    rsync | rsync-z)
      if [ "$link" = wan ]; then
        start_relay "127.0.0.1:$PORT_STUNNEL_SRV"
        start_rsync_side "$nss" "$nsd" "$dst" "$host" "127.0.0.1:$PORT_RELAY"
      else
        start_rsync_side "$nss" "$nsd" "$dst" "$host"
      fi
      cmd=(rsync --recursive --links --perms --times --devices --specials --owner --group --hard-links
        --delete --partial --stats)
      [ "$tool" = rsync-z ] && cmd+=(-z)
      cmd+=("$src/" "rsync://127.0.0.1:$PORT_STUNNEL_CLI/module/")
      ;;
    tar)
      # The floor of case (s): one process reads, one writes, nothing verified or compared.
      # POSIX (pax) format, so that times keep their nanoseconds, as the other tools keep them.
      # shellcheck disable=SC2016
      cmd=(sh -c 'tar --format=posix -cf - -C "$1" . | tar xf - -C "$2"' sh "$src" "$dst")
      ;;
    walk)
      # The floor of case (s) with nothing changed: both ends look at every file (lstat, as
      # the quick check does), at once; nothing is compared, sent or written.
      # shellcheck disable=SC2016
      cmd=(sh -c 'f="%s %T@ %m %U %G\n"; find "$1" -printf "$f" >/dev/null & find "$2" -printf "$f" >/dev/null & wait' sh "$src" "$dst")
      ;;
  esac
  sync
  local i t0=0 t1=0 r0=0 r1=0 p0=0 p1=0 rc=0
  for i in "${!SRV_NAMES[@]}"; do SRV_T0[$i]=$(ticks "${SRV_PIDS[$i]}"); done
  [ "$link" = 1 ] && read -r t0 r0 p0 < <(link_counters)
  # In the background and waited for, so that a signal interrupts the script at once.
  "${nsa[@]}" /usr/bin/time -f '%e %U %S %M' -o "$D/client.time" "${cmd[@]}" >"$D/client.out" 2>"$D/client.err" &
  CLIENT_PID=$!
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=
  [ "$link" = 1 ] && read -r t1 r1 p1 < <(link_counters)
  stop_servers

  local wall=0 user=0 sys=0 crss=0 app=0 app_recv=- files=0 status=ok
  read -r wall user sys crss < <(tail -1 "$D/client.time" 2>/dev/null) || true
  [[ $wall =~ ^[0-9.]+$ ]] || { wall=0 user=0 sys=0 crss=0; status=notime; }
  local cpu_src_t=0 cpu_dst_t=0 rss_src=$crss rss_dst=0
  for i in "${!SRV_NAMES[@]}"; do
    local dt=$((SRV_T1[i] - SRV_T0[i]))
    case ${SRV_NAMES[$i]} in
      stunnel-client) cpu_src_t=$((cpu_src_t + dt)) rss_src=$((rss_src + SRV_RSS[i])) ;;
      relay) ;;
      *) cpu_dst_t=$((cpu_dst_t + dt)) rss_dst=$((rss_dst + SRV_RSS[i])) ;;
    esac
  done
  local cpu_src cpu_dst
  cpu_src=$(awk -v u="$user" -v s="$sys" -v t="$cpu_src_t" -v hz="$HZ" 'BEGIN {printf "%.2f", u + s + t / hz}')
  cpu_dst=$(awk -v t="$cpu_dst_t" -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz}')

  case $tool in
    mover | mover-base)
      local summary
      summary=$(tail -1 "$D/client.out")
      app=$(grep -o '"bytes_on_wire":[0-9]*' <<<"$summary" | cut -d: -f2 || true)
      files=$(grep -o '"files_transferred":[0-9]*' <<<"$summary" | cut -d: -f2 || true)
      if ! grep -q '"errors":\[\]' <<<"$summary"; then
        status=errors
        say "  mover reported errors: $(grep -o '"errors":\[[^]]*\]' <<<"$summary" | head -c 2000)"
      fi
      ;;
    *)
      local sent recv
      sent=$(grep '^Total bytes sent:' "$D/client.out" | num || true)
      recv=$(grep '^Total bytes received:' "$D/client.out" | num || true)
      app=${sent:-0} app_recv=${recv:-0}
      files=$(grep '^Number of regular files transferred:' "$D/client.out" | num || true)
      ;;
  esac
  : "${app:=0}" "${files:=0}"
  if [ "$rc" != 0 ]; then
    status=rc=$rc
    say "  $tool exited with $rc; stderr: $(tail -5 "$D/client.err")"
  fi
  if [ "$VERIFY" = 1 ]; then
    local opts=()
    [[ $tool != mover* ]] && opts=(--no-allocation)
    # XFS keeps copy-on-write preallocations (up to 128 KiB per rewritten region of a cloned
    # file) until the inode leaves memory; remounting (untimed) shows the settled allocation.
    if [ "$TMOUNTED" = 1 ] && [ "$TARGETS" = xfs ]; then umount "$TDIR" && mount -o discard "$LOOPDEV" "$TDIR"; fi
    if ! "$BIN/mover-testdata" compare "$src" "$dst" "${opts[@]}" >"$D/compare.out" 2>&1; then
      # rsync's daemon with `use chroot = no` sanitizes symlink targets ("/etc/passwd" arrives as
      # "etc/passwd", ".." as "."): tell that apart from real differences.
      local nsym other
      read -r nsym other < <(awk '
        /^[0-9]+ differences?$/ { next }
        / symlink target "/ {
          line = $0; sub(/.*symlink target "/, "", line)
          n = index(line, "\" vs \""); a = substr(line, 1, n - 1); b = substr(line, n + 6); sub(/"$/, "", b)
          s = a; sub(/^\/+/, "", s)
          if (s == b || index(a, "..") > 0) { sym++; next }
        }
        { other++ }
        END { print sym + 0, other + 0 }' "$D/compare.out")
      if [ "$tool" != mover ] && [ "$other" = 0 ] && [ "$nsym" -gt 0 ]; then
        [ "$status" = ok ] && status='ok*'
        SANITIZED=$nsym
        say "  $tool: identical except $nsym symlink targets sanitized by the rsync daemon (use chroot = no)"
      else
        if [ "$status" = ok ]; then status=DIFF; else status=$status+DIFF; fi
        say "  $tool: target differs from the source ($D/compare.out):"
        head -20 "$D/compare.out" | sed 's/^/    /' >&2
      fi
    fi
  fi
  local link_f=- link_r=- link_p=-
  [ "$link" = 1 ] && link_f=$((t1 - t0)) link_r=$((r1 - r0)) link_p=$((p1 - p0))
  local cpu_tot
  cpu_tot=$(awk -v a="$cpu_src" -v b="$cpu_dst" 'BEGIN {printf "%.2f", a + b}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$tool" "$run" "$wall" "$cpu_src" \
    "$cpu_dst" "$cpu_tot" "$app" "$app_recv" "$link_f" "$link_r" "$link_p" "$rss_src" "$rss_dst" "$files" "$status" >>"$RAW"
  printf '  %-14s %-8s run %d: wall %7.2f s  cpu %6.2f + %6.2f s  sent %9.2f MiB  rss %6.1f / %6.1f MiB  files %6s  %s\n' \
    "$case" "$tool" "$run" "$wall" "$cpu_src" "$cpu_dst" "$(awk -v b="$app" 'BEGIN {print b / 1048576}')" \
    "$(awk -v k="$rss_src" 'BEGIN {print k / 1024}')" "$(awk -v k="$rss_dst" 'BEGIN {print k / 1024}')" \
    "$files" "$status" >&2
}

# ---------------------------------------------------------------------------------------------
# Which compressor does rsync -z negotiate? (one tiny transfer through the same tunnel)

RSYNC_Z=unknown
SANITIZED=
probe_rsync_z() {
  D=$LOGS/probe-z
  mkdir -p "$D/src" "$D/dst"
  echo probe >"$D/src/file"
  SRV_NAMES=() SRV_PIDS=() SRV_TPIDS=() SRV_T0=() SRV_T1=() SRV_RSS=()
  start_rsync_side '' '' "$D/dst" 127.0.0.1
  rsync -rz --debug=NSTR "$D/src/" "rsync://127.0.0.1:$PORT_STUNNEL_CLI/module/" >"$D/out" 2>&1 || true
  stop_servers
  RSYNC_Z=$(grep -i 'compress' "$D/out" | head -1 | sed 's/^ *//')
  [ -n "$RSYNC_Z" ] || RSYNC_Z="not reported: $(tail -2 "$D/out" | tr '\n' ' ')"
  rm -rf "$LOGS/probe-z"
}
[[ " $TOOLS " == *" rsync-z "* ]] && probe_rsync_z

# ---------------------------------------------------------------------------------------------
# The runs. Tools take turns within each run so that load from elsewhere hits them alike.

tree_desc() {
  local files entries app alloc
  entries=$(find "$1" -mindepth 1 | wc -l)
  files=$(find "$1" -type f | wc -l)
  app=$(du -s --apparent-size -B1 "$1" | cut -f1)
  alloc=$(du -s -B1 "$1" | cut -f1)
  awk -v e="$entries" -v f="$files" -v a="$app" -v l="$alloc" \
    'BEGIN {printf "%d entries (%d file names), %.1f MiB apparent, %.1f MiB allocated", e, f, a / 1048576, l / 1048576}'
}
SRC_DESC=$(tree_desc "$SRC")
# Case (s)'s tree: SMALL_FILES files of 1-8 KiB in directories of 100, seeded (made once, kept).
SMALL=$WORK/smallfiles-$SMALL_FILES/src
if has_case s && [ ! -f "$SMALL.done" ]; then
  say "generating $SMALL"
  rm -rf "$SMALL"
  python3 "$REPO/benches/small-files.py" "$SMALL" "$SMALL_FILES"
  touch "$SMALL.done"
fi
has_case s && SMALL_DESC=$(tree_desc "$SMALL")
say "tree $SRC: $SRC_DESC"
say "mutation ($SRC2):"
sed 's/^/  /' "$TREE/src2.mutation.log" >&2

# Targets: on a fresh journaled ext4 (see TARGETS), big enough for three copies and a fourth.
TARGETS=${TARGETS:-loop}
rm -rf "$TREE"/dst-* "$TREE"/base-*
TARGETS_DESC="in $TREE on $(findmnt -no FSTYPE -T "$TREE" 2>/dev/null || echo '?') (TARGETS=work)"
if [ "$TARGETS" = loop ] || [ "$TARGETS" = xfs ]; then
  fs=ext4
  [ "$TARGETS" = xfs ] && fs=xfs
  if [ "$(id -u)" != 0 ] || ! command -v losetup >/dev/null || ! command -v "mkfs.$fs" >/dev/null; then
    say "TARGETS=$TARGETS needs root, losetup and mkfs.$fs: targets stay in $TREE"
  else
    size=$(( $(du -s --apparent-size --block-size=1M "$SRC" | cut -f1) * 4 + 2048 ))
    mkfs_extra=()
    if has_case s; then
      # Every tool's copy of the small files (a 4 KiB block or two each), and inodes for them.
      size=$((size + SMALL_FILES * 12 * ($(wc -w <<<"$TOOLS") + 1) / 1024))
      [ "$fs" = ext4 ] && mkfs_extra=(-i 8192)
    fi
    TDIR=$WORK/targets
    mountpoint -q "$TDIR" && umount "$TDIR"
    rm -f "$WORK/targets.img"
    truncate -s "${size}M" "$WORK/targets.img"
    if [ "$fs" = xfs ]; then mkfs.xfs -q -f "$WORK/targets.img"; else mkfs.ext4 -q -F "${mkfs_extra[@]}" "$WORK/targets.img"; fi
    mkdir -p "$TDIR"
    # Direct I/O: the image's pages are not cached a second time on the root filesystem.
    LOOPDEV=$(losetup -f --show --direct-io=on "$WORK/targets.img")
    mount -o discard "$LOOPDEV" "$TDIR"
    TMOUNTED=1
    TARGETS_DESC="on a fresh $([ "$fs" = xfs ] && echo XFS || echo "journaled ext4") on a loop device (${size} MiB, $WORK/targets.img)"
  fi
fi
say "targets: $TARGETS_DESC"
if has_case a || has_case b || has_case c || has_case w || { has_case d && [ "$LINK_OK" = 1 ]; }; then
  say "case (a): initial copy into an empty target"
  for run in $(seq "$RUNS"); do
    for tool in $TOOLS; do
      rm -rf "$TDIR/dst-$tool"
      mkdir "$TDIR/dst-$tool"
      measure a-initial "$tool" "$run" "$SRC" "$TDIR/dst-$tool" 0
    done
  done
fi
if has_case b; then
  say "case (b): re-sync, nothing changed"
  for run in $(seq "$RUNS"); do
    for tool in $TOOLS; do measure b-nochange "$tool" "$run" "$SRC" "$TDIR/dst-$tool" 0; done
  done
fi
for tool in $TOOLS; do [ -d "$TDIR/dst-$tool" ] && mv "$TDIR/dst-$tool" "$TDIR/base-$tool"; done

resync_case() { # CASE LINK
  for run in $(seq "$RUNS"); do
    for tool in $TOOLS; do
      rm -rf "$TDIR/dst-$tool"
      cp -a "$TDIR/base-$tool" "$TDIR/dst-$tool"
      measure "$1" "$tool" "$run" "$SRC2" "$TDIR/dst-$tool" "$2"
      rm -rf "$TDIR/dst-$tool"
    done
  done
}
if has_case c; then
  say "case (c): re-sync after ~1 % changed (target reset to each tool's own case (a) result)"
  resync_case c-changed 0
fi
if has_case w; then
  say "case (w): a long link, $DELAY_MS ms each way (re-sync after ~1 % changed, then initial copy, then no change)"
  resync_case w-changed wan
  for run in $(seq "$RUNS"); do
    for tool in $TOOLS; do
      rm -rf "$TDIR/dst-$tool"
      mkdir "$TDIR/dst-$tool"
      measure w-initial "$tool" "$run" "$SRC" "$TDIR/dst-$tool" wan
    done
  done
  for run in $(seq "$RUNS"); do
    for tool in $TOOLS; do measure w-nochange "$tool" "$run" "$SRC" "$TDIR/dst-$tool" wan; done
  done
  for tool in $TOOLS; do rm -rf "$TDIR/dst-$tool"; done
fi
if has_case d && [ "$LINK_OK" = 1 ]; then
  say "case (d): over a $RATE link between namespaces (re-sync after ~1 % changed, then initial copy)"
  resync_case d-changed-link 1
  for tool in $TOOLS; do rm -rf "$TDIR/base-$tool"; done
  for run in $(seq "$RUNS"); do
    for tool in $TOOLS; do
      rm -rf "$TDIR/dst-$tool"
      mkdir "$TDIR/dst-$tool"
      measure d-initial-link "$tool" "$run" "$SRC" "$TDIR/dst-$tool" 1
      rm -rf "$TDIR/dst-$tool"
    done
  done
fi

if has_case s; then
  say "case (s): many small files: $SMALL_DESC (initial copy beside tar | tar, then no change beside walk)"
  for tool in $TOOLS; do rm -rf "$TDIR/base-$tool"; done
  for run in $(seq "$RUNS"); do
    for tool in $TOOLS tar; do
      rm -rf "$TDIR/small-$tool"
      mkdir "$TDIR/small-$tool"
      measure s-initial "$tool" "$run" "$SMALL" "$TDIR/small-$tool" 0
    done
  done
  for run in $(seq "$RUNS"); do
    for tool in $TOOLS; do measure s-nochange "$tool" "$run" "$SMALL" "$TDIR/small-$tool" 0; done
    measure s-nochange walk "$run" "$SMALL" "$TDIR/small-tar" 0
  done
  for tool in $TOOLS tar; do rm -rf "$TDIR/small-$tool"; done
fi

# ---------------------------------------------------------------------------------------------
# Medians, results file, tables.

STAMP=$(date +%Y%m%dT%H%M%S)
RESULTS=$WORK/results-$SCALE-$STAMP.tsv
# Columns: 1 case, 2 tool, 3 run, 4 wall_s, 5 cpu_src_s, 6 cpu_dst_s, 7 cpu_total_s,
# 8 app_sent_bytes, 9 app_recv_bytes, 10 link_fwd_bytes, 11 link_rev_bytes, 12 link_packets,
# 13 rss_src_kib, 14 rss_dst_kib, 15 files_transferred, 16 status.
awk -F'\t' -v OFS='\t' '
  function median(key, col,   n, i, j, t, v) {
    n = split(vals[key, col], v, " ")
    if (n == 0) return "-"
    for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    if (n % 2) return v[(n + 1) / 2]
    return (v[n / 2] + v[n / 2 + 1]) / 2
  }
  NR == 1 { print; next }
  {
    print
    key = $1 SUBSEP $2
    if (!(key in seen)) { seen[key] = 1; order[++nk] = key }
    for (c = 4; c <= 15; c++) if ($c != "-") vals[key, c] = vals[key, c] " " $c
    if ($16 != "ok" && $16 != "ok*") { if (!(key in bad)) { bad[key] = 1; st[key] = $16 } }
    else if (!(key in bad) && st[key] != "ok*") st[key] = $16
    runs[key]++
  }
  END {
    for (k = 1; k <= nk; k++) {
      key = order[k]; split(key, p, SUBSEP)
      line = p[1] OFS p[2] OFS "median"
      for (c = 4; c <= 15; c++) line = line OFS median(key, c)
      print line, st[key] " (" runs[key] " runs)"
    }
  }' "$RAW" >"$RESULTS"
cp "$RESULTS" "$WORK/results-$SCALE.tsv"

mover_compress=$("$BIN/mover" copy --help 2>/dev/null | awk '/^ *--compress/ {f = 1} f && /default:/ {sub(/.*default: /, ""); sub(/\].*/, ""); print; exit}')
echo
echo "mover vs rsync over stunnel (MTC direct volume migration style), SCALE=$SCALE, RUNS=$RUNS (medians)"
echo "tree: $SRC_DESC"
has_case s && echo "small files (s): $SMALL_DESC"
echo "change applied for (c) and (d): $(tail -1 "$TREE/src2.mutation.log" | sed 's/^total: //') (details: $TREE/src2.mutation.log)"
echo "mover $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?') (working tree as built), TLS 1.3, compression: ${mover_compress:-see mover copy --help} (its default)"
[[ " $TOOLS " == *" mover-base "* ]] && echo "mover-base: binaries in $BASE_BIN"
echo "$(rsync --version | head -1 | sed 's/  */ /g'), stunnel $(stunnel4 -version 2>&1 | grep -o 'stunnel [0-9.]*' | head -1 | cut -d' ' -f2) with TLSv1.2; rsync -z negotiated: $RSYNC_Z"
[ -z "$MOVER_ENV" ] || echo "environment seen by mover: $MOVER_ENV"
echo "targets: $TARGETS_DESC"
echo "warm page cache for every tool alike (no drop_caches here; sync before each run); CPU = user+sys (10 ms ticks)"
echo "  src = client (+ stunnel client), dst = mover-agent or rsync daemon and its children (+ stunnel server)"
echo "sent/recv MiB = application bytes before TLS, source->target / target->source (rsync: --stats total bytes"
echo "  sent / received; mover: bytes_on_wire, which counts only what the source writes: its recv is not reported)"
echo "link fwd/rev MiB, pkts = through the veth per direction, incl. TLS, TCP/IP and Ethernet headers (case d only)"
echo "RSS = peak resident set of each end in MiB (sum over its processes: rsync client + stunnel; daemon's children + stunnel)"
awk -F'\t' -v tools="$TOOLS$(has_case s && echo ' tar walk')" -v delay="$DELAY_MS" '
  BEGIN {
    title["a-initial"] = "(a) initial copy into an empty target"
    title["b-nochange"] = "(b) re-sync, nothing changed"
    title["c-changed"] = "(c) re-sync after ~1 % of the bytes changed"
    title["d-changed-link"] = "(d) re-sync after ~1 % changed, over the shaped link"
    title["d-initial-link"] = "(d) initial copy over the shaped link"
    title["w-changed"] = "(w) re-sync after ~1 % changed, over a long link (" delay " ms each way)"
    title["w-initial"] = "(w) initial copy over a long link (" delay " ms each way)"
    title["w-nochange"] = "(w) re-sync, nothing changed, over a long link (" delay " ms each way)"
    title["s-initial"] = "(s) many small files: initial copy (tar | tar: the floor)"
    title["s-nochange"] = "(s) many small files: re-sync, nothing changed (walk: both ends\047 find at once, the floor)"
    ncase = split("a-initial b-nochange c-changed d-changed-link d-initial-link w-changed w-initial w-nochange s-initial s-nochange", cases, " ")
    nt = split(tools, tl, " ")
  }
  function mib(v) { return (v == "-") ? "-" : sprintf("%.2f", v / 1048576) }
  $3 == "median" { for (c = 4; c <= 16; c++) m[$1, $2, c] = $c; have[$1] = 1 }
  END {
    for (i = 1; i <= ncase; i++) {
      cs = cases[i]
      if (!(cs in have)) continue
      printf "\n%s\n", title[cs]
      printf "%-10s %7s %7s %7s %7s %9s %8s %9s %8s %7s %7s %7s %6s  %s\n", "tool", "wall s", "cpu src", "cpu dst", "cpu tot", "sent MiB", "recv MiB", "link fwd", "link rev", "pkts", "RSS src", "RSS dst", "files", "status"
      for (t = 1; t <= nt; t++) {
        tool = tl[t]
        if (!((cs, tool, 4) in m)) continue
        pk = m[cs, tool, 12]; pk = (pk == "-") ? "-" : sprintf("%d", pk)
        printf "%-10s %7.2f %7.2f %7.2f %7.2f %9s %8s %9s %8s %7s %7.1f %7.1f %6d  %s\n", tool, m[cs, tool, 4], m[cs, tool, 5], m[cs, tool, 6], m[cs, tool, 7], mib(m[cs, tool, 8]), mib(m[cs, tool, 9]), mib(m[cs, tool, 10]), mib(m[cs, tool, 11]), pk, m[cs, tool, 13] / 1024, m[cs, tool, 14] / 1024, m[cs, tool, 15], m[cs, tool, 16]
      }
      line = ""
      if (((cs, "mover", 4) in m)) {
        for (t = 1; t <= nt; t++) {
          tool = tl[t]
          if (tool == "mover" || !((cs, tool, 4) in m)) continue
          w = (m[cs, tool, 4] > 0) ? sprintf("%.2f", m[cs, "mover", 4] / m[cs, tool, 4]) : "n/a"
          c = (m[cs, tool, 7] > 0) ? sprintf("%.2f", m[cs, "mover", 7] / m[cs, tool, 7]) : "n/a"
          line = line sprintf("   mover/%s: wall %s, cpu %s", tool, w, c)
        }
      }
      if (line != "") print "ratios:" line
    }
  }' "$RESULTS"
if [ -n "$SANITIZED" ]; then
  echo
  echo "ok* = identical to the source except $SANITIZED symlink targets that the rsync daemon sanitized"
  echo "      (\`use chroot = no\` makes it strip leading slashes and ..: \"/etc/passwd\" arrives as \"etc/passwd\")"
fi
echo
echo "results: $RESULTS (per run and medians); logs of the last invocation: $LOGS"

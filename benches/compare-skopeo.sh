#!/usr/bin/env bash
# mover image copy against skopeo copy, registry to registry, side by side in one run: two
# plain-HTTP CNCF distribution registries (`docker-registry`) on loopback, a source seeded with
# generated images and a destination both tools copy into.
#
#   ./benches/compare-skopeo.sh                        # both tools, both cases, 3 runs
#   RUNS=1 SCALE=small ./benches/compare-skopeo.sh     # quick check (~100 MiB images)
#   TOOLS=skopeo BUILD=0 ./benches/compare-skopeo.sh   # skopeo alone, binaries as they are
#
# Environment:
#   RUNS    repetitions per tool and case (default 3); the tables show medians
#   WORK    work directory (default /var/tmp/mover-compare-image); the generated layouts and the
#           source registry's storage are kept there and reused while their spec is unchanged;
#           the destination registry's storage is emptied at every invocation
#   SCALE   full (default: (a) 6 layers of 171M, ~1 GiB; (b) 4 shared layers of 64M and one
#           own layer of 32M per platform, 2 platforms) or small ((a) 6 x 16M; (b) 4 x 8M + 4M)
#   TOOLS   subset of "mover mover-base skopeo" (default "mover skopeo")
#   BASE_BIN  directory of another build's mover (tool mover-base): old and new binaries then take
#           turns in one invocation
#   CASES   subset of "a b" (default both)
#   VERIFY  1 (default) checks every copy with curl: the tag's manifest bytes hash to the
#           source's digest, every child manifest and every blob is present in the repository
#   BUILD   1 (default) runs cargo build --release first; 0 uses the binaries as they are
#   BIN     directory of the mover and mover-testdata binaries (default
#           ${CARGO_TARGET_DIR:-target}/release)
#   SKOPEO_CACHE  private (default) runs each skopeo copy in a private mount namespace with an
#           empty tmpfs over /var/lib/containers/cache, so skopeo's blob-info cache (which
#           remembers where it pushed each digest before) cannot turn a first copy into cheap
#           cross-repository mounts from an earlier run's repository; system leaves the cache as is
#
# Cases, each copied by both tools (tools take turns within every run):
#   (a) one image: SRC/bench/a:v1, a single linux/amd64 manifest
#   (b) a two-platform index: SRC/bench/b:v1, linux/amd64 and linux/arm64 sharing their layers
# and for each case two measurements:
#   first   into a fresh destination repository DST/<tool>/run-N-<epoch>/<case>:v1 (nothing of the image
#           in that repository; the registry's global blob store may hold the bytes from earlier
#           runs, but a client must upload them again, or mount them, to link them to the repository)
#   repeat  the same copy again into the same repository: every blob and manifest is present
# The commands, exactly:
#   mover image copy --src-plain-http --dest-plain-http --no-progress docker://SRC/bench/a:v1 docker://DST/mover/run-N-EPOCH/a:v1
#   skopeo copy --all --src-tls-verify=false --dest-tls-verify=false docker://SRC/bench/a:v1 docker://DST/skopeo/run-N-EPOCH/a:v1
# (skopeo --insecure-policy too, so that it needs no policy.json.)
#
# Measured per copy: wall time, CPU (user+sys) and peak RSS of the client (time(1)), and the CPU
# of each registry (/proc/PID/stat utime+stime deltas around the copy). Layers are real gzip
# streams of random bytes (mover-testdata image), so skopeo keeps them as they are rather than
# recompressing. Results: a table of medians on stdout, per-run rows in $WORK/results-*.tsv.
set -euo pipefail
export LC_ALL=C

cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${RUNS:-3}
WORK=${WORK:-/var/tmp/mover-compare-image}
SCALE=${SCALE:-full}
TOOLS=${TOOLS:-"mover skopeo"}
CASES=${CASES:-"a b"}
VERIFY=${VERIFY:-1}
BUILD=${BUILD:-1}
SKOPEO_CACHE=${SKOPEO_CACHE:-private}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
BIN=${BIN:-$TARGET/release}
BASE_BIN=${BASE_BIN:-}
ACCEPT='application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json'

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
has_tool() { [[ " $TOOLS " == *" $1 "* ]]; }

for t in $TOOLS; do [[ $t == mover || $t == mover-base || $t == skopeo ]] || die "TOOLS: unknown tool $t (mover, mover-base, skopeo)"; done
if has_tool mover-base; then [ -x "$BASE_BIN/mover" ] || die "TOOLS has mover-base: set BASE_BIN to a directory with a mover binary"; fi
for c in $CASES; do [[ $c == a || $c == b ]] || die "CASES: unknown case $c (a, b)"; done
[[ $SKOPEO_CACHE == private || $SKOPEO_CACHE == system ]] || die "SKOPEO_CACHE must be private or system"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number"

case $SCALE in
  full) GEN_A=(--layers 6 --layer-size 171M) GEN_B=(--layers 4 --layer-size 64M --platform-layer-size 32M) ;;
  small) GEN_A=(--layers 6 --layer-size 16M) GEN_B=(--layers 4 --layer-size 8M --platform-layer-size 4M) ;;
  *) die "SCALE must be full or small" ;;
esac
GEN_A+=(--platforms 1 --tag v1)
GEN_B+=(--platforms 2 --tag v1)

# ---------------------------------------------------------------------------------------------
# Packages and binaries

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
command -v python3 >/dev/null || need+=(python3)
command -v unshare >/dev/null || need+=(util-linux)
[ -x /usr/bin/time ] || need+=(time)
if ((${#need[@]})); then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if [ "$BUILD" = 1 ]; then
  pkgs=(-p mover-testdata)
  has_tool mover && pkgs+=(-p mover-cli)
  cargo build --release --locked "${pkgs[@]}"
fi
[ -x "$BIN/mover-testdata" ] || die "$BIN/mover-testdata missing (BUILD=1 builds it)"
grep -q 'mover-testdata image DIR' < <("$BIN/mover-testdata" image 2>&1 || true) ||
  die "$BIN/mover-testdata has no \`image\` subcommand: rebuild it (BUILD=1)"
if has_tool mover; then
  [ -x "$BIN/mover" ] || die "$BIN/mover missing (BUILD=1 builds it)"
  "$BIN/mover" image copy --help >/dev/null 2>&1 ||
    die "$BIN/mover has no working \`mover image copy\` (\`$BIN/mover image copy --help\` fails): build a mover with image copy, or run TOOLS=skopeo"
fi
if [ "$SKOPEO_CACHE" = private ] && has_tool skopeo; then
  [ "$(id -u)" = 0 ] || die "SKOPEO_CACHE=private needs root (a mount namespace); run as root or SKOPEO_CACHE=system"
  mkdir -p /var/lib/containers/cache
fi
MOVER_ENV=$(env | grep -E '^MOVER_' | sort | tr '\n' ' ' || true)
[ -z "$MOVER_ENV" ] || say "note: set in the environment, mover will honour: $MOVER_ENV"
HZ=$(getconf CLK_TCK)

LOGS=$WORK/logs
RAW=$LOGS/raw.tsv
mkdir -p "$WORK"
rm -rf "$LOGS"
mkdir -p "$LOGS"

# ---------------------------------------------------------------------------------------------
# Clean-up: the registries and the client we started (by pid), the destination's storage.

LIVE=()
CLIENT_PID=
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
  rm -rf "$WORK/registry-dst/storage"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Registries

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_registry NAME: starts docker-registry with storage under $WORK/registry-NAME; sets
# REG_ADDR and REG_PID. Retries with another port if the chosen one was taken meanwhile.
start_registry() {
  local name=$1 dir=$WORK/registry-$1 port attempt
  mkdir -p "$dir/storage"
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    cat >"$dir/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: "$dir/storage"}
  delete: {enabled: true}
  maintenance: {uploadpurging: {enabled: false}}
http: {addr: "127.0.0.1:$port", secret: "bench-$name"}
EOF
    docker-registry serve "$dir/config.yml" >"$LOGS/registry-$name.log" 2>&1 &
    REG_PID=$!
    LIVE+=("$REG_PID")
    local deadline=$((SECONDS + 20)) code=000
    while ((SECONDS < deadline)); do
      kill -0 "$REG_PID" 2>/dev/null || break
      code=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/" || true)
      [ "$code" = 200 ] && break
      sleep 0.1
    done
    if [ "$code" = 200 ]; then
      REG_ADDR=127.0.0.1:$port
      return
    fi
    kill -KILL "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
    grep -q 'address already in use' "$LOGS/registry-$name.log" || break
  done
  die "registry $name did not start; its log: $(tail -5 "$LOGS/registry-$name.log")"
}


# ---------------------------------------------------------------------------------------------
# The images: generated once per spec (a new one empties the source registry's storage), then
# the registries, and the images pushed to the source with skopeo (digests preserved).

# layout CASE ARGS...: (re)generates $WORK/layout-CASE when its spec changed.
layout() {
  local c=$1 dir=$WORK/layout-$1
  shift
  local spec="$* (gen-v1)"
  if [ ! -f "$dir/index.json" ] || [ "$(cat "$dir.spec" 2>/dev/null)" != "$spec" ]; then
    say "generating $dir ($*)"
    rm -rf "$dir" "$dir.spec" "$dir.out" "$WORK/registry-src/storage"
    "$BIN/mover-testdata" image "$dir" "$@" >"$dir.out"
    echo "$spec" >"$dir.spec"
  fi
}
tag_digest() { # LAYOUT TAG
  jq -r --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
    "$1/index.json"
}
for c in $CASES; do
  if [ "$c" = a ]; then layout a "${GEN_A[@]}"; else layout b "${GEN_B[@]}"; fi
done
rm -rf "$WORK/registry-dst/storage"
start_registry src
SRC=$REG_ADDR SRC_PID=$REG_PID
start_registry dst
DST=$REG_ADDR DST_PID=$REG_PID
say "registries: src $SRC (pid $SRC_PID), dst $DST (pid $DST_PID)"
for c in $CASES; do
  say "seeding $SRC/bench/$c:v1 with skopeo"
  skopeo --insecure-policy copy --all --preserve-digests --quiet --dest-tls-verify=false \
    "oci:$WORK/layout-$c:v1" "docker://$SRC/bench/$c:v1" >"$LOGS/seed-$c.log" 2>&1 ||
    die "seeding bench/$c failed: $(tail -3 "$LOGS/seed-$c.log")"
done

# ---------------------------------------------------------------------------------------------
# Verification with curl: the tag's manifest hashes to the source's digest; every child
# manifest and every blob it refers to is in the repository.

http_code() { curl -s --noproxy '*' -o /dev/null -w '%{http_code}' "$@" || true; }

verify_tree() { # LAYOUT DIGEST BASE REPO
  local layout=$1 digest=$2 base=$3 repo=$4 file child blob
  file=$layout/blobs/sha256/${digest#sha256:}
  if jq -e '.manifests' "$file" >/dev/null; then
    for child in $(jq -r '.manifests[].digest' "$file"); do
      [ "$(http_code -I -H "Accept: $ACCEPT" "$base/v2/$repo/manifests/$child")" = 200 ] || {
        say "    manifest $child missing in $repo"
        return 1
      }
      verify_tree "$layout" "$child" "$base" "$repo" || return 1
    done
  else
    for blob in $(jq -r '.config.digest, .layers[].digest' "$file"); do
      [ "$(http_code -I "$base/v2/$repo/blobs/$blob")" = 200 ] || {
        say "    blob $blob missing in $repo"
        return 1
      }
    done
  fi
}

verify_copy() { # CASE REPO -> 0 when DST/REPO:v1 is the source image
  local c=$1 repo=$2 want got
  want=$(tag_digest "$WORK/layout-$c" v1)
  got=sha256:$(curl -sf --noproxy '*' -H "Accept: $ACCEPT" "http://$DST/v2/$repo/manifests/v1" | sha256sum | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    say "    $repo:v1 is $got, the source is $want"
    return 1
  fi
  verify_tree "$WORK/layout-$c" "$want" "http://$DST" "$repo"
}

# ---------------------------------------------------------------------------------------------
# Measuring

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

printf 'case\ttool\trun\twall_s\tcpu_client_s\tcpu_src_reg_s\tcpu_dst_reg_s\trss_client_kib\tstatus\n' >"$RAW"
measure() { # CASE KIND TOOL RUN REPO
  local c=$1 kind=$2 tool=$3 run=$4 repo=$5
  local D=$LOGS/$c-$kind-$tool-$run
  mkdir -p "$D"
  local timed=(/usr/bin/time -f '%e %U %S %M' -o "$D/client.time")
  local cmd=()
  case $tool in
    mover | mover-base)
      local bin=$BIN
      [ "$tool" = mover-base ] && bin=$BASE_BIN
      cmd=("${timed[@]}" "$bin/mover" image copy --src-plain-http --dest-plain-http --no-progress
        "docker://$SRC/bench/$c:v1" "docker://$DST/$repo:v1")
      ;;
    skopeo)
      local sk=(skopeo --insecure-policy copy --all --src-tls-verify=false --dest-tls-verify=false
        "docker://$SRC/bench/$c:v1" "docker://$DST/$repo:v1")
      if [ "$SKOPEO_CACHE" = private ]; then
        # Only skopeo is timed: the namespace and the tmpfs are set up before time(1) starts.
        cmd=(unshare --mount --propagation private -- sh -c \
          'mount -t tmpfs -o size=64m,mode=0700 tmpfs /var/lib/containers/cache && exec "$@"' sh "${timed[@]}" "${sk[@]}")
      else
        cmd=("${timed[@]}" "${sk[@]}")
      fi
      ;;
  esac
  sync
  local s0 d0 s1 d1 rc=0
  s0=$(ticks "$SRC_PID") d0=$(ticks "$DST_PID")
  "${cmd[@]}" >"$D/client.out" 2>"$D/client.err" &
  CLIENT_PID=$!
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=
  s1=$(ticks "$SRC_PID") d1=$(ticks "$DST_PID")
  local wall=0 user=0 sys=0 rss=0 status=ok
  read -r wall user sys rss < <(tail -1 "$D/client.time" 2>/dev/null) || true
  [[ $wall =~ ^[0-9.]+$ ]] || { wall=0 user=0 sys=0 rss=0; status=notime; }
  if [ "$rc" != 0 ]; then
    status=rc=$rc
    say "  $tool exited with $rc; stderr: $(tail -5 "$D/client.err")"
  elif [ "$VERIFY" = 1 ] && ! verify_copy "$c" "$repo"; then
    status=BAD
  fi
  local cpu cpu_s cpu_d
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')
  cpu_s=$(awk -v t=$((s1 - s0)) -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz}')
  cpu_d=$(awk -v t=$((d1 - d0)) -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c-$kind" "$tool" "$run" "$wall" "$cpu" "$cpu_s" "$cpu_d" "$rss" "$status" >>"$RAW"
  printf '  %-9s %-7s run %d: wall %7.2f s  cpu %6.2f s  registries %5.2f + %5.2f s  rss %6.1f MiB  %s\n' \
    "$c-$kind" "$tool" "$run" "$wall" "$cpu" "$cpu_s" "$cpu_d" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" "$status" >&2
}

image_desc() { # CASE
  tail -1 "$WORK/layout-$1.out" 2>/dev/null ||
    find "$WORK/layout-$1/blobs" -type f -printf '%s\n' | awk '{n++; s += $1} END {printf "%d blobs, %d bytes", n, s}'
}

STAMP=$(date +%Y%m%dT%H%M%S)
EPOCH=$(date +%s) # repository names must be lowercase
for c in $CASES; do
  say "case ($c): $(image_desc "$c")"
  for run in $(seq "$RUNS"); do
    for tool in $TOOLS; do measure "$c" first "$tool" "$run" "$tool/run-$run-$EPOCH/$c"; done
    for tool in $TOOLS; do measure "$c" repeat "$tool" "$run" "$tool/run-$run-$EPOCH/$c"; done
  done
done

# ---------------------------------------------------------------------------------------------
# Medians, results file, table.

RESULTS=$WORK/results-$SCALE-$STAMP.tsv
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
    for (c = 4; c <= 8; c++) vals[key, c] = vals[key, c] " " $c
    if ($9 != "ok") bad[key] = $9
    runs[key]++
  }
  END {
    for (k = 1; k <= nk; k++) {
      key = order[k]; split(key, p, SUBSEP)
      line = p[1] OFS p[2] OFS "median"
      for (c = 4; c <= 8; c++) line = line OFS median(key, c)
      print line, ((key in bad) ? bad[key] : "ok") " (" runs[key] " runs)"
    }
  }' "$RAW" >"$RESULTS"
cp "$RESULTS" "$WORK/results-$SCALE.tsv"

echo
echo "mover image copy vs skopeo copy, registry to registry over loopback plain HTTP, SCALE=$SCALE, RUNS=$RUNS (medians)"
for c in $CASES; do
  case $c in
    a) echo "(a) one linux/amd64 image: $(image_desc a)" ;;
    b) echo "(b) two-platform index, layers shared: $(image_desc b)" ;;
  esac
done
has_tool mover && echo "mover $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?') (working tree as built), $BIN/mover"
has_tool mover-base && echo "mover-base: $BASE_BIN/mover"
has_tool skopeo && echo "$(skopeo --version), blob-info cache: $SKOPEO_CACHE"
echo "$(docker-registry --version 2>/dev/null | awk '{print $NF}' | sed 's/^/docker-registry /') x 2 (src, dst), filesystem storage under $WORK"
[ -z "$MOVER_ENV" ] || echo "environment seen by mover: $MOVER_ENV"
echo "first = into a fresh repository; repeat = the same copy again (everything present)"
echo "cpu = client user+sys; reg src/dst = CPU of each registry during the copy; RSS = client peak"
awk -F'\t' -v tools="$TOOLS" -v cases="$CASES" '
  $3 == "median" { for (c = 4; c <= 9; c++) m[$1, $2, c] = $c; have[$1] = 1 }
  END {
    nt = split(tools, tl, " ")
    nc = split(cases, cl, " ")
    printf "\n%-10s %-10s %8s %8s %8s %8s %8s  %s\n", "case", "tool", "wall s", "cpu s", "reg src", "reg dst", "RSS MiB", "status"
    for (i = 1; i <= nc; i++) {
      for (k = 1; k <= 2; k++) {
        cs = cl[i] "-" (k == 1 ? "first" : "repeat")
        if (!(cs in have)) continue
        for (t = 1; t <= nt; t++) {
          tool = tl[t]
          if (!((cs, tool, 4) in m)) continue
          printf "%-10s %-10s %8.2f %8.2f %8.2f %8.2f %8.1f  %s\n", cs, tool, m[cs, tool, 4], m[cs, tool, 5], m[cs, tool, 6], m[cs, tool, 7], m[cs, tool, 8] / 1024, m[cs, tool, 9]
        }
        if (((cs, "mover", 4) in m) && ((cs, "skopeo", 4) in m)) {
          w = (m[cs, "skopeo", 4] > 0) ? sprintf("%.2f", m[cs, "mover", 4] / m[cs, "skopeo", 4]) : "n/a"
          c = (m[cs, "skopeo", 5] > 0) ? sprintf("%.2f", m[cs, "mover", 5] / m[cs, "skopeo", 5]) : "n/a"
          printf "%-10s ratio mover/skopeo: wall %s, client cpu %s\n", cs, w, c
        }
        if (((cs, "mover", 4) in m) && ((cs, "mover-base", 4) in m)) {
          w = (m[cs, "mover-base", 4] > 0) ? sprintf("%.2f", m[cs, "mover", 4] / m[cs, "mover-base", 4]) : "n/a"
          c = (m[cs, "mover-base", 5] > 0) ? sprintf("%.2f", m[cs, "mover", 5] / m[cs, "mover-base", 5]) : "n/a"
          printf "%-10s ratio mover/mover-base: wall %s, client cpu %s\n", cs, w, c
        }
      }
    }
  }' "$RESULTS"
echo
echo "results: $RESULTS (per run and medians); logs of the last invocation: $LOGS"
if awk -F'\t' 'NR > 1 && $3 != "median" && $9 != "ok" {bad = 1} END {exit !bad}' "$RAW"; then
  say "error: some copies failed or did not verify (status column; logs in $LOGS)"
  exit 1
fi

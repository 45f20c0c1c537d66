#!/bin/bash
# CPU per file of `mover copy SRC agent://...` for two builds taking turns (an A/B of a change),
# N small files (1-8 KiB, seeded, directories of 100) into a fresh tmpfs (or TARGET, a directory
# emptied before each run, e.g. on a journaled ext4 loop device); perf stat per process.
# Usage (root: it mounts a tmpfs): W=/var/tmp/sb BASE=DIR NEW=DIR [N=20000 ROUNDS=3 TARGET=DIR] benches/small-files-ab.sh
# where DIR holds a `mover` and a `mover-agent` (release builds).
set -u
N=${N:-20000}; ROUNDS=${ROUNDS:-3}; PORT=${PORT:-7811}
W=${W:-/var/tmp/mover-small-ab}; BASE=${BASE:?BASE=DIR of the base build}; NEW=${NEW:?NEW=DIR of the new build}
mkdir -p "$W"; SRC=$W/src-$N; DST=${TARGET:-$W/dst}; C=$W/certs
if [ ! -f "$SRC.done" ]; then
  rm -rf "$SRC"
  python3 "$(dirname "$0")/small-files.py" "$SRC" "$N"
  touch "$SRC.done"
fi
mkdir -p "$DST"; [ -n "${TARGET:-}" ] || mountpoint -q "$DST" || mount -t tmpfs -o size=2G tmpfs "$DST"
[ -s "$C/ca.crt" ] || "$BASE/mover" certs init "$C" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  for v in base new; do
    if [ "$v" = base ]; then bin=$BASE; else bin=$NEW; fi
    rm -rf "${DST:?}"/* "$DST"/.mover* 2>/dev/null
    perf stat -x, -e task-clock,context-switches -o $W/agent.$v.$r.txt "$bin/mover-agent" serve --listen 127.0.0.1:$PORT --certs "$C" --volume "vol=$DST" >/dev/null 2>&1 &
    apid=$!
    for i in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
    start=$(date +%s.%N)
    perf stat -x, -e task-clock,context-switches -o $W/client.$v.$r.txt "$bin/mover" copy "$SRC" "agent://127.0.0.1:$PORT/vol" --certs "$C" >/dev/null 2>$W/err.$v.$r.txt || { echo "copy failed ($v)"; cat $W/err.$v.$r.txt | tail -3; }
    end=$(date +%s.%N)
    # The agent is perf's child: stop that one, not every agent on this port of the machine.
    kill -INT $(pgrep -P $apid) 2>/dev/null; wait $apid 2>/dev/null
    ct=$(awk -F, '/task-clock/ {print $1}' $W/client.$v.$r.txt); cs=$(awk -F, '/context-switches/ {print $1}' $W/client.$v.$r.txt)
    at=$(awk -F, '/task-clock/ {print $1}' $W/agent.$v.$r.txt); as=$(awk -F, '/context-switches/ {print $1}' $W/agent.$v.$r.txt)
    files=$(find "$DST" -type f | wc -l)
    printf "%s round %d: wall %.2fs  client %.0f us/file (%.2f cs/file)  agent %.0f us/file (%.2f cs/file)  files %d  load %s\n" \
      "$v" "$r" "$(echo "$end - $start" | bc)" "$(echo "$ct * 1000 / $N" | bc -l)" "$(echo "$cs / $N" | bc -l)" \
      "$(echo "$at * 1000 / $N" | bc -l)" "$(echo "$as / $N" | bc -l)" "$files" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done

#!/usr/bin/env bash
# Installs what the tests need when it is missing, then runs every test of the workspace.
# Needs root for the tests that mount small file systems (they skip themselves otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mount >/dev/null || need+=(mount)
# The simulated clusters give each pod a network namespace and a veth pair (`ip`).
command -v ip >/dev/null || need+=(iproute2)
command -v setfattr >/dev/null || need+=(attr)
command -v tinyproxy >/dev/null || need+=(tinyproxy)
command -v openssl >/dev/null || need+=(openssl)
# Image tests: a real registry, skopeo to seed it independently of mover, curl to read it back.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v curl >/dev/null || need+=(curl)
# Terminal tests read the real `mover` off a tmux screen.
command -v tmux >/dev/null || need+=(tmux)
# The exclude matcher is checked against the real rsync (the test skips without it).
command -v rsync >/dev/null || need+=(rsync)
# Reflinks: a loop-mounted XFS (mkfs.xfs) whose extents filefrag (e2fsprogs) reads.
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v filefrag >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing packages: ${need[*]} (run as root to install them)" >&2
  fi
fi

# Hook tests run the seed's playbooks with a real `ansible-playbook`; the metrics test parses
# `/metrics` with the Prometheus Python client's parsers; the Kubernetes manifests are checked
# offline against the 1.33 and 1.37 schemas by `kubernetes-validate --strict`. Those tests fail
# when these are missing (the manifests test skips outside CI=true).
py=()
command -v ansible-playbook >/dev/null || py+=(ansible-core)
python3 -c 'import prometheus_client' 2>/dev/null || py+=(prometheus-client)
command -v kubernetes-validate >/dev/null || py+=(kubernetes-validate)
if ((${#py[@]})); then
  if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
  fi
  # Debian's own Python refuses plain `pip install` (PEP 668); a pyenv or venv Python does not.
  python3 -m pip install --quiet "${py[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "${py[@]}"
  hash -r
fi

cargo test --workspace --locked
# Fuzz smoke run: every fuzz target for FUZZ_SECONDS (30) each; MOVER_FUZZ_SMOKE=0 skips it.
if [ "${MOVER_FUZZ_SMOKE:-1}" != 0 ]; then ./scripts/fuzz-smoke.sh; fi

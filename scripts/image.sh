#!/usr/bin/env bash
# Assembles the mover-agent image as an OCI image layout, without any container runtime:
#   scripts/image.sh [--bin-dir target/release] [--gzip-level 6] OUT_DIR
# One layer holds /usr/local/bin/mover-agent and /usr/local/bin/mover, the shared libraries
# `ldd` says they load (with the dynamic loader), /etc/passwd and /etc/group with a non-root
# `mover` user (uid and gid 65532, the default user), /etc/nsswitch.conf and, when the build host
# has it, its CA bundle. The config's entrypoint is mover-agent; its labels carry the version and
# the protocol version (`mover-agent --version`). OUT_DIR is tagged with the version:
#   mover image copy oci:OUT_DIR:VERSION docker://REGISTRY/mover/mover-agent:VERSION
# The Containerfile at the repository root describes the same image for a container runtime.
set -euo pipefail

usage() {
  echo "usage: $0 [--bin-dir DIR] [--gzip-level 1-9] OUT_DIR" >&2
  exit 64
}

bin_dir=target/release
gzip_level=6
out=
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    --gzip-level) gzip_level=${2:?--gzip-level needs 1-9}; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) [ -z "$out" ] || usage; out=$1; shift ;;
  esac
done
[ -n "$out" ] || usage
[[ "$gzip_level" =~ ^[1-9]$ ]] || { echo "--gzip-level must be 1-9, not \`$gzip_level\`" >&2; exit 64; }
for binary in mover-agent mover; do
  if [ ! -x "$bin_dir/$binary" ]; then
    echo "no \`$bin_dir/$binary\`: build it first (cargo build --release), or give --bin-dir" >&2
    exit 1
  fi
done
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  echo "\`$out\` exists and is not empty: give a new directory" >&2
  exit 1
fi

# `mover-agent 0.1.0 (protocol 7)`
version_line=$("$bin_dir/mover-agent" --version)
if [[ ! "$version_line" =~ ^mover-agent\ ([^ ]+)\ \(protocol\ ([0-9]+)\)$ ]]; then
  echo "cannot read the version and protocol from \`$version_line\`" >&2
  exit 1
fi
version=${BASH_REMATCH[1]}
protocol=${BASH_REMATCH[2]}

mkdir -p "$out"
exec python3 - "$bin_dir" "$out" "$version" "$protocol" "$gzip_level" <<'PY'
import gzip, hashlib, io, json, os, platform, re, subprocess, sys, tarfile

bin_dir, out, version, protocol, level = sys.argv[1:6]
BINARIES = ["mover-agent", "mover"]
UID = GID = 65532
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}[platform.machine()]

# Image path (no leading `/`) -> host file or bytes.
files = {f"usr/local/bin/{name}": os.path.join(bin_dir, name) for name in BINARIES}
for name in BINARIES:
    listing = subprocess.run(["ldd", os.path.join(bin_dir, name)], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        if "not found" in line:
            sys.exit(f"{name} needs a library ldd cannot find: {line.strip()}")
        match = re.search(r"(/\S+) \(0x", line)  # `libc.so.6 => /lib/.../libc.so.6 (0x..)` or the loader
        if match:
            files[match.group(1).lstrip("/")] = os.path.realpath(match.group(1))
files["etc/passwd"] = b"root:x:0:0:root:/root:/sbin/nologin\nmover:x:65532:65532:mover:/home/mover:/sbin/nologin\n"
files["etc/group"] = b"root:x:0:\nmover:x:65532:\n"
files["etc/nsswitch.conf"] = b"passwd: files\ngroup: files\nhosts: files dns\n"
bundle = "/etc/ssl/certs/ca-certificates.crt"
if os.path.isfile(bundle):
    files[bundle.lstrip("/")] = bundle

class Digest:
    """A writer that hashes what passes through it on the way to `sink`, and counts it."""
    def __init__(self, sink):
        self.sink, self.hash, self.size = sink, hashlib.sha256(), 0
    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        return self.sink.write(data) if self.sink else len(data)
    def flush(self):
        if self.sink:
            self.sink.flush()
    def digest(self):
        return "sha256:" + self.hash.hexdigest()

blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)
def put_blob(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest[7:]), "wb") as blob:
        blob.write(data)
    return {"digest": digest, "size": len(data)}

def entry(name, kind, mode, size=0, owner=0):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
    info.uid = info.gid = owner
    info.uname = info.gname = ""
    return info

# The layer, deterministic: sorted, time 0, owned by root (but the mover user's home).
directories = {"home/mover": UID, "tmp": 0}
for path in files:
    parent = os.path.dirname(path)
    while parent:
        directories.setdefault(parent, 0)
        parent = os.path.dirname(parent)
partial = os.path.join(blobs, "layer.partial")
with open(partial, "wb") as raw:
    compressed = Digest(raw)
    with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=int(level), mtime=0, filename="") as zipped:
        plain = Digest(zipped)
        with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as layer:
            for path in sorted(set(directories) | set(files)):
                if path in directories:
                    mode = 0o1777 if path == "tmp" else 0o755
                    layer.addfile(entry(path, tarfile.DIRTYPE, mode, owner=directories[path]))
                elif isinstance(files[path], bytes):
                    data = files[path]
                    layer.addfile(entry(path, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
                else:
                    host = files[path]
                    mode = 0o644 if path.startswith("etc/") else 0o755
                    with open(host, "rb") as source:
                        layer.addfile(entry(path, tarfile.REGTYPE, mode, os.path.getsize(host)), source)
os.rename(partial, os.path.join(blobs, compressed.digest()[7:]))
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": compressed.digest(), "size": compressed.size}

labels = {
    "org.opencontainers.image.title": "mover-agent",
    "org.opencontainers.image.description": "mover's agent: serves and receives volumes over mutual TLS",
    "org.opencontainers.image.version": version,
    "io.mover.protocol": protocol,
}
config = {
    "created": "1970-01-01T00:00:00Z",
    "architecture": ARCH,
    "os": "linux",
    "config": {
        "User": f"{UID}:{GID}",
        "Entrypoint": ["/usr/local/bin/mover-agent"],
        "Env": ["PATH=/usr/local/bin"],
        "WorkingDir": "/",
        "ExposedPorts": {"7443/tcp": {}},
        "Labels": labels,
    },
    "rootfs": {"type": "layers", "diff_ids": [plain.digest()]},
    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "scripts/image.sh"}],
}
def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put_blob(canonical(config))},
    "layers": [layer],
    "annotations": {"org.opencontainers.image.version": version},
}
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put_blob(canonical(manifest)),
        "platform": {"architecture": ARCH, "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": version},
    }],
}
with open(os.path.join(out, "index.json"), "wb") as file:
    file.write(canonical(index))
with open(os.path.join(out, "oci-layout"), "wb") as file:
    file.write(canonical({"imageLayoutVersion": "1.0.0"}))
print(f"{out}: mover-agent {version} (protocol {protocol}), tag {version}, {len(files)} files, "
      f"layer {layer['size']} bytes, manifest {index['manifests'][0]['digest']}")
PY

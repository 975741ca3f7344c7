#!/usr/bin/env bash
# Prepares rootful Podman (Debian's packages) for the container e2e tests
# (tests/tests/e2e/agent_containers.rs): installs what is missing, writes a
# private containers.conf/storage.conf under $BASE, imports an image built
# from a local busybox rootfs (no registry) and proves that a container
# starts and shows its ID in its cgroup.
#
# Prints exactly one line on stdout, which .ci/run exports as LANYARD_TEST_PODMAN:
#   the path of $BASE/env (exports CONTAINERS_CONF, CONTAINERS_STORAGE_CONF,
#   LANYARD_PODMAN_IMAGE, LANYARD_PODMAN_BASE), or
#   "SKIP: <reason>" when this machine cannot run containers (the test then
#   says so in its output; the cgroup-pattern unit tests run regardless).
# Progress goes to stderr. Idempotent; always exits 0. Run as root.
#
# Why these settings (a Debian 12 Firecracker VM with hybrid cgroups, podman 4.3.1):
#  - runtime runc: crun 1.8.1 refuses the hybrid layout
#      "crun: cgroups in hybrid mode not supported, drop all controllers from cgroupv2"
#  - default_ulimits nofile/nproc at or below the hard limits: root there lacks
#    CAP_SYS_RESOURCE, and podman asks for nofile=1048576 and nproc=4194304:
#      "runc ... error setting rlimit type 7: operation not permitted"
#    (podman also lowers its own RLIMIT_NPROC to 32768, so nproc stays <= 32768)
#  - cgroup_manager cgroupfs, events_logger file: PID 1 is not systemd there.
#  - netns none: no bridge or firewall rules, nothing touches the host network.
#  - private graphroot/runroot/tmp_dir under $BASE: no clash with a default store.
set -u

BASE="${LANYARD_PODMAN_BASE:-/var/tmp/lanyard-podman}"
IMAGE="${LANYARD_PODMAN_IMAGE:-localhost/lanyard-test:1}"
T="timeout 120"

skip() {
  mkdir -p "$BASE" 2>/dev/null
  rm -f "$BASE/env" 2>/dev/null
  echo "$*" >"$BASE/unavailable" 2>/dev/null
  echo "podman: cannot run containers here: $*" >&2
  echo "SKIP: $*"
  exit 0
}

[ "$(uname -s)" = Linux ] || skip "not Linux"
[ "$(id -u)" = 0 ] || skip "not root (uid $(id -u)); the rootful podman setup needs root"

# 1. packages, only if something is missing (~1 s update + ~14 s install)
PKGS="podman runc conmon busybox-static"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || skip "apt-get not found; cannot install:$missing"
  echo "podman: installing$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || true
  # shellcheck disable=SC2086
  apt-get install -y -qq $missing >&2 || skip "apt-get install failed for:$missing"
fi
command -v podman >/dev/null || skip "podman not on PATH after install"
command -v runc >/dev/null || skip "runc not on PATH after install"
[ -x /bin/busybox ] || skip "/bin/busybox (busybox-static) missing"

# 2. config files, rewritten every run; limits clamped to this machine's hard limits
mkdir -p "$BASE/storage" "$BASE/run" "$BASE/tmp" || skip "cannot create $BASE"
hn=$(ulimit -Hn); hu=$(ulimit -Hu)
[ "$hn" = unlimited ] && hn=1048576
[ "$hu" = unlimited ] && hu=1048576
NOFILE=$((hn < 1024 ? hn : 1024)); NPROC=$((hu < 4096 ? hu : 4096))
DRIVER="${LANYARD_PODMAN_DRIVER:-overlay}"
[ -f "$BASE/driver" ] && DRIVER=$(cat "$BASE/driver")

write_conf() {
  cat >"$BASE/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$BASE/tmp"
CONF
  cat >"$BASE/storage.conf" <<CONF
[storage]
driver = "$1"
graphroot = "$BASE/storage"
runroot = "$BASE/run"
CONF
}
write_conf "$DRIVER"
export CONTAINERS_CONF="$BASE/containers.conf" CONTAINERS_STORAGE_CONF="$BASE/storage.conf"

# 3. leftovers of an earlier run (CI kills processes, the store survives on disk):
#    only the tests' own containers, by name
for name in $($T podman ps -a --format '{{.Names}}' 2>/dev/null | grep '^lanyard-' || true); do
  $T podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
done

# 4. the image, from a local busybox rootfs (no registry)
build_and_import() {
  $T podman image exists "$IMAGE" 2>/dev/null && return 0
  rm -rf "$BASE/rootfs" && mkdir -p "$BASE/rootfs"/{bin,etc,proc,sys,dev,tmp,root} || return 1
  cp /bin/busybox "$BASE/rootfs/bin/busybox" || return 1
  for a in sh sleep cat ls ps id echo true env; do ln -sf busybox "$BASE/rootfs/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$BASE/rootfs/etc/passwd"
  echo 'root:x:0:' >"$BASE/rootfs/etc/group"
  tar -C "$BASE/rootfs" -cf "$BASE/rootfs.tar" . || return 1
  $T podman import --change 'CMD ["/bin/sleep","600"]' "$BASE/rootfs.tar" "$IMAGE" >/dev/null 2>&1
}

# 5. a real container must start and show its ID in its cgroup
probe() {
  build_and_import || { echo "podman import failed"; return 1; }
  local name="lanyard-setup-probe-$$" id pid out
  out=$($T podman run -d --name "$name" "$IMAGE" sleep 30 2>&1) ||
    { $T podman rm -f -t 0 "$name" >/dev/null 2>&1; echo "podman run failed: $(echo "$out" | tail -1)"; return 1; }
  id=$($T podman inspect --format '{{.Id}}' "$name" 2>/dev/null)
  pid=$($T podman inspect --format '{{.State.Pid}}' "$name" 2>/dev/null)
  if [ -z "$pid" ] || [ "$pid" = 0 ] || ! grep -q "$id" "/proc/$pid/cgroup" 2>/dev/null; then
    $T podman rm -f -t 0 "$name" >/dev/null 2>&1
    echo "container process '$pid' has no cgroup path with its ID $id"; return 1
  fi
  $T podman rm -f -t 0 "$name" >/dev/null 2>&1
  return 0
}

if ! why=$(probe); then
  if [ "$DRIVER" = overlay ]; then # overlay on overlayfs, say: try vfs
    echo "podman: overlay failed ($why); trying vfs" >&2
    $T podman system reset -f >/dev/null 2>&1
    DRIVER=vfs
    write_conf vfs
    why2=$(probe) || skip "$why (overlay); $why2 (vfs)"
    echo vfs >"$BASE/driver"
  else
    skip "$why"
  fi
fi

cat >"$BASE/env" <<ENV
export LANYARD_PODMAN_BASE="$BASE"
export CONTAINERS_CONF="$BASE/containers.conf"
export CONTAINERS_STORAGE_CONF="$BASE/storage.conf"
export LANYARD_PODMAN_IMAGE="$IMAGE"
ENV
rm -f "$BASE/unavailable"
echo "podman: OK, podman $(podman version --format '{{.Client.Version}}' 2>/dev/null), runtime runc, driver $DRIVER, image $IMAGE" >&2
echo "$BASE/env"
exit 0

#!/usr/bin/env bash
# Prepare podman for the container test (tests/docker, `make test-docker`) on a Debian host where no
# container registry is reachable:
#   1. podman, runc and debootstrap from Debian's packages (installed when missing, as root);
#   2. a containers.conf for this test only (CONTAINERS_CONF; the host's files stay untouched);
#   3. the base image: a minimal Debian bookworm made with debootstrap and imported into podman,
#      trimmed like the official bookworm-slim image. The root filesystem tarball is cached under
#      .cache/container-test/ and the image in podman's storage, so later runs skip both.
# Prints KEY=VALUE lines for the caller (CONTAINERS_CONF, BASE_IMAGE). Exit status 77 means the
# environment cannot run the test (the last line of stderr says why); the test then skips.
set -euo pipefail

CACHE=${CONTAINER_TEST_CACHE:-"$(cd "$(dirname "$0")/.." && pwd)/.cache/container-test"}
BASE_IMAGE=${BASE_IMAGE:-localhost/dyt-test-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_TAR="$CACHE/bookworm-minbase.tar"

unavailable() { echo "container test unavailable: $*" >&2; exit 77; }

install_tools() {
    local missing=()
    for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || unavailable "${missing[*]} not installed, and there is no apt-get"
    echo "installing ${missing[*]} from Debian's packages" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
        || unavailable "apt-get install ${missing[*]} failed"
}

# crun (podman's first choice) fails on a hybrid cgroup v1/v2 layout, so runc is named. Podman's
# default nofile/nproc limits (1048576) exceed the hard limits of many VMs and sandboxes, where
# runc then cannot start any container ("error setting rlimit"): use the host's hard limits, and
# for nproc no more than kernel.pid_max (podman caps its own nproc limit there; 32768 on small VMs).
write_containers_conf() {
    mkdir -p "$CACHE"
    local nofile nproc
    nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
    [ "$nofile" = unlimited ] && nofile=1048576
    [ "$nproc" = unlimited ] && nproc=1048576
    local pid_max
    pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo "$nproc")
    [ "$pid_max" -lt "$nproc" ] && nproc=$pid_max
    cat > "$CACHE/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF="$CACHE/containers.conf"
}

# A bookworm root filesystem as the slim image has it: minbase, no docs/man pages/translations,
# no apt lists or package cache, with the updates and security suites configured.
make_rootfs_tar() {
    local root="$CACHE/rootfs.tmp"
    rm -rf "$root"
    echo "debootstrap bookworm (about a minute)" >&2
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
        || unavailable "debootstrap failed (see $CACHE/debootstrap.log)"
    cat > "$root/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
    cat > "$root/etc/apt/sources.list" <<LIST
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
LIST
    find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    rm -rf "$root"/usr/share/{man,info,locale}/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* \
        "$root"/var/log/*.log "$root"/var/log/apt/*
    tar -C "$root" -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$root"
}

import_base_image() {
    podman image exists "$BASE_IMAGE" && return
    [ -s "$ROOTFS_TAR" ] || make_rootfs_tar
    podman import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null \
        || unavailable "podman import failed"
}

# debootstrap and podman's root storage (where the cached images live) both need root.
[ "$(id -u)" -eq 0 ] || unavailable "needs root (debootstrap, podman with runc); run as root or use CI"
install_tools
write_containers_conf
podman info >/dev/null 2>&1 || unavailable "podman cannot run here: $(podman info 2>&1 | tail -1)"
import_base_image
out=$(podman run --rm "$BASE_IMAGE" true 2>&1) || unavailable "podman cannot start a container: $out"
echo "CONTAINERS_CONF=$CONTAINERS_CONF"
echo "BASE_IMAGE=$BASE_IMAGE"

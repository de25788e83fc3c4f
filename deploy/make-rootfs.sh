#!/usr/bin/env bash
# Assembles the final image's file tree from a compiled executable: the executable as /model
# and the shared libraries it links (as `ldd` lists them, with the dynamic loader), nothing
# else. `docker build -f deploy/Dockerfile.prebuilt deploy/` then needs no base image.
#
#   deploy/make-rootfs.sh BIN [ROOTFS]      (ROOTFS defaults to deploy/rootfs)
#
# Check it without docker: `chroot deploy/rootfs /model serve --port 0` runs the server with
# only those files (as root).
set -euo pipefail
bin=${1:?usage: make-rootfs.sh BIN [ROOTFS]}
root=${2:-$(dirname "$0")/rootfs}
rm -rf "$root"
mkdir -p "$root/tmp"
chmod 1777 "$root/tmp"
cp "$bin" "$root/model"
# Every absolute path ldd prints: libc, libm, libgcc_s, the loader.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# cgroup cpu.max is read from /sys/fs/cgroup, which the container runtime mounts.
echo "rootfs at $root: $(du -sh "$root" | cut -f1)"
find "$root" -type f | sort

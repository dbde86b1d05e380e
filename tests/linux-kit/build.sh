#!/usr/bin/env bash
# Builds the Linux test kit into OUTDIR: Debian's current amd64 kernel
# (OUTDIR/vmlinuz, a bzImage) and a busybox initramfs (OUTDIR/initrd.img)
# whose /init prints the same markers and serves the same shell words as the
# project's test guest. Packages are downloaded with apt and unpacked, never
# installed. Booting it needs hardware KVM (see tests/helper.rs).
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$kernel" ] || { echo "no linux-image-amd64 in the apt lists (run apt-get update)" >&2; exit 1; }
apt-get download -q "$kernel" busybox-static >/dev/null
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
cp kernel/boot/vmlinuz-* "$out/vmlinuz"
mkdir -p root/bin root/proc root/sys root/dev
cp busybox/bin/busybox root/bin/busybox
install -m 0755 "$here/init" root/init
(cd root && find . | "$work/busybox/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -9 > "$out/initrd.img"
echo "linux-kit: $kernel and busybox in $out"

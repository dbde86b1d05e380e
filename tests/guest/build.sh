#!/usr/bin/env bash
# Builds the test guest from guest.S into OUTDIR/vmlinuz (bzImage, 64-bit
# entry) and OUTDIR/pvh.elf (ELF with a PVH note). Needs GNU as, ld and
# objcopy (binutils).
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
as --64 -o "$work/guest.o" "$here/guest.S"
ld -m elf_x86_64 -static -nostdlib --no-warn-rwx-segments -T "$here/pvh.ld" -o "$out/pvh.elf" "$work/guest.o"
# bzImage = the real-mode setup sectors, then the protected-mode payload as
# loaded at 1 MiB (the PVH ELF's image without its zero-filled .bss).
objcopy -O binary -j .setup "$work/guest.o" "$work/setup.bin"
objcopy -O binary -R .bss -R .note.pvh "$out/pvh.elf" "$work/payload.bin"
cat "$work/setup.bin" "$work/payload.bin" > "$out/vmlinuz"

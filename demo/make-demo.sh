#!/usr/bin/env bash
# make-demo.sh OUT.qcow2 [MOUNTQCOW]: a small demo disk, GPT with two ext4 partitions holding a
# few files, converted to zstd-compressed qcow2 by mountqcow itself (or qemu-img without MOUNTQCOW).
# Needs no root: the file systems are built into the disk file with mkfs.ext4 -d at an offset.
set -euo pipefail
out=${1:?usage: make-demo.sh OUT.qcow2 [MOUNTQCOW]}
mountqcow=${2:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

raw=$work/disk.raw
truncate -s 48M "$raw"
sfdisk -q "$raw" <<'TABLE'
label: gpt
start=2048, size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="boot"
start=18432, size=77824, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
TABLE

mkdir -p "$work/boot" "$work/root/etc" "$work/root/home/demo/notes"
echo "demo-vm" > "$work/root/etc/hostname"
printf 'NAME="MountQcow demo"\nID=demo\n' > "$work/root/etc/os-release"
printf 'Hello from inside a qcow2 image.\nYou read this through MountQcow and the file system driver it started.\n' > "$work/root/home/demo/README.txt"
for i in 1 2 3; do seq -f "note $i line %g" 1 2000 > "$work/root/home/demo/notes/note-$i.txt"; done
echo "pretend kernel" > "$work/boot/vmlinuz-demo"
printf 'menuentry "demo" { linux /vmlinuz-demo root=/dev/vda2 }\n' > "$work/boot/grub.cfg"

# mkfs.ext4 writes each file system at its partition's byte offset.
mkfs.ext4 -q -F -L boot -d "$work/boot" -E offset=$((2048 * 512)) "$raw" $((16384 / 2))k
mkfs.ext4 -q -F -L root -d "$work/root" -E offset=$((18432 * 512)) "$raw" $((77824 / 2))k

if [ -n "$mountqcow" ]; then
  "$mountqcow" convert --no-progress --compress zstd "$raw" "$out" 2>/dev/null
else
  qemu-img convert -q -f raw -O qcow2 -o compression_type=zstd -c "$raw" "$out"
fi
echo "made $out"

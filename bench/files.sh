#!/usr/bin/env bash
# bench/files.sh [SIZE_MIB] [ROUNDS]
# `mountqcow --files` against libguestfs' guestmount, in one run, on a qcow2 of a GPT disk whose
# ext4 partition holds a copy of /usr/lib and /usr/share (about SIZE_MIB, default 300):
#   first-ls  seconds from the mount command to the first `ls` of the partition's root
#   tar       MB/s of `tar cf - . | cat >/dev/null` of the whole partition (through a pipe: GNU tar
#             reads nothing when its archive is /dev/null), right after mounting
# The page cache is dropped before each mount. Best of ROUNDS (default 2). Needs root, qemu-img,
# e2fsprogs, fuse2fs, libguestfs-tools and a built artifacts/mountqcow.
set -euo pipefail
size=${1:-300}
rounds=${2:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
mq=$root/artifacts/mountqcow/mountqcow
[ "$(id -u)" -eq 0 ] || { echo "files.sh: run as root (it drops the page cache)"; exit 2; }
command -v guestmount >/dev/null || { echo "files.sh: apt-get install libguestfs-tools"; exit 2; }
# libguestfs boots its appliance with KVM when /dev/kvm exists; on a VM whose /dev/kvm does not
# work (this one: the appliance never boots) it must be told to emulate (TCG). Where KVM works,
# run with LIBGUESTFS_BACKEND_SETTINGS= (empty) to measure guestmount at its best.
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS-force_tcg}
work=$(mktemp -d /var/tmp/mq-files-bench.XXXXXX)
cleanup() {
  fusermount3 -u "$work/mq" 2>/dev/null || true
  mountpoint -q "$work/gm" && guestunmount "$work/gm" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/tree" "$work/mq" "$work/gm"

# A tree of real files: from /usr/lib and /usr/share, in find's order, until SIZE_MIB.
( cd /usr && find lib share -type f -size -8M -printf '%s\t%p\n' 2>/dev/null |
  awk -F'\t' -v max=$((size << 20)) '{ total += $1; if (total > max) exit; print $2 }' |
  xargs -d '\n' cp --parents -t "$work/tree" 2>/dev/null ) || true
mib=$(( $(du -sm "$work/tree" | cut -f1) * 2 + 64 ))
truncate -s "${mib}M" "$work/disk.raw"
printf 'label: gpt\nstart=2048, type=L\n' | sfdisk -q "$work/disk.raw"
mkfs.ext4 -q -F -d "$work/tree" -E offset=1048576 "$work/disk.raw" "$(( mib - 2 ))M"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm -f "$work/disk.raw"
bytes=$(du -sb "$work/tree" | cut -f1)
files=$(find "$work/tree" -type f | wc -l)
rm -rf "$work/tree"
echo "image: $(du -h "$work/disk.qcow2" | cut -f1) qcow2, ext4 partition with $files files, $((bytes / 1000000)) MB; best of $rounds"

now() { date +%s.%N; }
measure() { # NAME MOUNT-COMMAND... : first-ls seconds and tar MB/s of the mounted root $dir
  local name=$1; shift
  local best_ls=999 best_tar=0
  for _ in $(seq "$rounds"); do
    sync; echo 3 > /proc/sys/vm/drop_caches
    local s e t
    s=$(now); "$@" >/dev/null 2>&1; ls "$dir" >/dev/null; e=$(now)
    t=$(now); tar cf - -C "$dir" . 2>/dev/null | cat >/dev/null; local t2; t2=$(now)
    best_ls=$(echo "$e - $s" | bc -l | awk -v b="$best_ls" '{ print ($1 < b) ? $1 : b }')
    best_tar=$(echo "$bytes / ($t2 - $t) / 1000000" | bc -l | awk -v b="$best_tar" '{ print ($1 > b) ? $1 : b }')
    unmount_"$name"
  done
  printf '%-12s first ls %7.2f s   tar %7.1f MB/s\n' "$name" "$best_ls" "$best_tar"
}
unmount_mountqcow() { "$mq" unmount "$work/mq" >/dev/null; }
unmount_guestmount() { guestunmount "$work/gm"; while pgrep -f "guestmount.*$work" >/dev/null; do sleep 0.1; done; }

dir=$work/mq/p1 measure mountqcow "$mq" --files "$work/disk.qcow2" "$work/mq"
dir=$work/gm measure guestmount guestmount -a "$work/disk.qcow2" -m /dev/sda1 --ro "$work/gm"

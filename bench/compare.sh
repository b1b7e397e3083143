#!/usr/bin/env bash
# compare.sh: measures mountqcow against the other ways to read a qcow2 image as a file on
# this machine, in one interleaved run, and prints medians.
#
#   bench/compare.sh [-r ROUNDS] [-t SECONDS] [-x] IMAGE.qcow2...
#
# For each image and round, every mounter that can open it is measured in turn:
#   seq_MB/s     dd of the whole disk, 1 MiB reads, after dropping the page cache and reading
#                the image's files once (so every mounter starts from the same warm image)
#   rand4k_IOPS  fio, 4 KiB O_DIRECT random reads, 2 jobs, for SECONDS
# Mounters: mountqcow (artifacts/mountqcow/mountqcow, built by ./build.sh), QEMU's
# qemu-storage-daemon FUSE export, libqcow's qcowmount; each is skipped where missing.
# With -x it also times `mountqcow export` against `qemu-img convert -O raw`.
# Needs root (to drop caches), fuse3, fio; apt-get install qemu-system-common libqcow-utils fio
# brings the peers. Compare ratios from one run: shared machines drift between runs.
set -u
rounds=3 secs=5 exports=0
while getopts "r:t:x" opt; do
  case $opt in
    r) rounds=$OPTARG ;;
    t) secs=$OPTARG ;;
    x) exports=1 ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,17p' "$0"; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "compare.sh: run as root (it drops the page cache)"; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
mountqcow=$here/artifacts/mountqcow/mountqcow
[ -x "$mountqcow" ] || { echo "compare.sh: build first: ./build.sh"; exit 2; }
command -v fio >/dev/null || { echo "compare.sh: apt-get install fio"; exit 2; }

scratch=$(mktemp -d /tmp/mountqcow-compare.XXXXXX)
mounted=()
finish() {
  for m in "${mounted[@]}"; do fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  [ -f "$scratch/qsd.pid" ] && kill "$(cat "$scratch/qsd.pid")" 2>/dev/null
  rm -rf "$scratch"
}
trap finish EXIT

# The files an image reads: itself, its backing chain, external data files.
image_files() {
  qemu-img info -U --backing-chain --output=json "$1" 2>/dev/null | python3 -c '
import json, sys
for layer in json.load(sys.stdin):
    print(layer["filename"])
    data = layer.get("format-specific", {}).get("data", {}).get("data-file")
    if data: print(data)' || echo "$1"
}

warm() { sync; echo 3 > /proc/sys/vm/drop_caches; (cd "$(dirname "$1")" && image_files "$1" | xargs cat > /dev/null); }

seq_mbs() {
  warm "$1"
  dd if="$2" of=/dev/null bs=1M 2>&1 | awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") s = $(i - 1); printf "%.0f\n", $1 / s / 1e6 }'
}

rand_iops() {
  fio --name=r --filename="$1" --readonly --rw=randread --bs=4k --direct=1 --ioengine=psync --numjobs=2 \
    --runtime="$secs" --time_based --group_reporting --output-format=terse 2>/dev/null | awk -F';' '{ print $8 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : "-" }'; }

appears() { for _ in $(seq 100); do [ -e "$1" ] && return 0; sleep 0.1; done; return 1; }

for image in "$@"; do
  image=$(readlink -f "$image")
  name=$(basename "$image")
  declare -A file=() seq=() iops=()
  m=$scratch/mountqcow-$name; mkdir -p "$m"
  "$mountqcow" "$image" "$m" >/dev/null && mounted+=("$m") && file[mountqcow]=$m/disk.raw
  if command -v qemu-storage-daemon >/dev/null; then
    m=$scratch/qsd-$name; mkdir -p "$m"; touch "$m/disk"
    qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$image" --blockdev driver=qcow2,node-name=q,file=f \
      --export type=fuse,id=e,node-name=q,mountpoint="$m/disk",writable=off --daemonize --pidfile "$scratch/qsd.pid" 2>/dev/null \
      && mounted+=("$m/disk") && file[qemu-storage-daemon]=$m/disk
  fi
  if command -v qcowmount >/dev/null; then
    m=$scratch/qcowmount-$name; mkdir -p "$m"
    qcowmount "$image" "$m" >/dev/null 2>&1 && appears "$m/qcow1" && mounted+=("$m") && file[qcowmount]=$m/qcow1
  fi
  for _ in $(seq "$rounds"); do
    for who in "${!file[@]}"; do
      seq[$who]+="$(seq_mbs "$image" "${file[$who]}") "
      iops[$who]+="$(rand_iops "${file[$who]}") "
    done
  done
  echo "== $name ($rounds rounds, medians)"
  printf '%-22s %10s %12s\n' mounter seq_MB/s rand4k_IOPS
  for who in mountqcow qemu-storage-daemon qcowmount; do
    [ -n "${file[$who]:-}" ] || continue
    printf '%-22s %10s %12s\n' "$who" "$(tr ' ' '\n' <<< "${seq[$who]}" | median)" "$(tr ' ' '\n' <<< "${iops[$who]}" | median)"
  done
  if [ "$exports" = 1 ] && command -v qemu-img >/dev/null; then
    ours=() theirs=()
    for _ in $(seq "$rounds"); do
      warm "$image"; rm -f "$scratch/out.raw"
      s=$(date +%s.%N); "$mountqcow" export --no-progress "$image" "$scratch/out.raw" 2>/dev/null; e=$(date +%s.%N)
      ours+=("$(echo "$e - $s" | bc)")
      warm "$image"; rm -f "$scratch/out.raw"
      s=$(date +%s.%N); qemu-img convert -O raw "$image" "$scratch/out.raw"; e=$(date +%s.%N)
      theirs+=("$(echo "$e - $s" | bc)")
    done
    printf 'export to raw: mountqcow %.2f s, qemu-img convert %.2f s (medians)\n' \
      "$(printf '%s\n' "${ours[@]}" | median)" "$(printf '%s\n' "${theirs[@]}" | median)"
    rm -f "$scratch/out.raw"
  fi
  for m in "${mounted[@]}"; do fusermount3 -u "$m" 2>/dev/null; done
  mounted=()
  [ -f "$scratch/qsd.pid" ] && kill "$(cat "$scratch/qsd.pid")" 2>/dev/null && rm -f "$scratch/qsd.pid"
  unset file seq iops
done

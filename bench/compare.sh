#!/usr/bin/env bash
# compare.sh: measures mountqcow against the other ways to read a qcow2 image as a file on
# this machine, in one interleaved run, and prints medians.
#
#   [QEMU_BIN=DIR] bench/compare.sh [-r ROUNDS] [-t SECONDS] [-j "JOBS..."] [-C CEILING.c] [-x] [-w] [-f] [-c RAW] [IMAGE.qcow2...]
#
# QEMU_BIN: the folder of the QEMU to compare with (its qemu-storage-daemon and qemu-img); the
# anchor is QEMU 10: ../shared/bench/get-qemu10.sh unpacks it and prints the folder. Without it,
# the QEMU on the PATH.
#
# For each image and round, every mounter that can open it is measured in turn:
#   seq_MB/s     dd of the whole disk, 1 MiB reads, after dropping the page cache and reading
#                the image's files once (so every mounter starts from the same warm image)
#   rand4k_IOPS  fio, 4 KiB O_DIRECT random reads, for SECONDS, once per number of jobs in -j
#                (default "2 4": a column each)
# Mounters: mountqcow (artifacts/mountqcow/mountqcow, built by ./build.sh), QEMU's
# qemu-storage-daemon FUSE export, libqcow's qcowmount; each is skipped where missing. With
# -C (e.g. -C ../shared/bench/fuse-ceiling.c) also that C program's FUSE file, served from memory
# with no image: the transport's ceiling, which mountqcow's random reads should reach (>= 1.0 x).
# With -x it also times `mountqcow export` against `qemu-img convert -O raw`. For a zstd
# image it prints the decoder's limit: cores x the single-core rate of `zstd -b3 -B<cluster>` on
# the image's own data (needs zstd).
# With -w it measures writes through `mountqcow --rw` against qemu-storage-daemon's writable
# FUSE export, on fresh 4 GiB images with 64 KiB clusters (fio): seq (1 MiB writes of 1 GiB,
# end_fsync, MB/s), rand (4 KiB O_DIRECT, 2 jobs, IOPS), rand4 (the same, 4 jobs: writers of one
# file in parallel), sync (4 KiB, fsync every 32, IOPS), back (rand over a fully written backing
# file, IOPS).
# With -f it converts each image (uncompressed, please) to VMDK, VHD, VHDX and VDI with qemu-img
# and measures mountqcow on each against the qcow2 with the same bytes (target: >= 0.9 x).
# With -c RAW it times `mountqcow convert --compress` against `qemu-img convert -c` (zstd and
# deflate) on that raw disk, and compares the output sizes.
# Needs root (to drop caches), fuse3, fio; apt-get install qemu-system-common libqcow-utils fio
# brings the peers. Compare ratios from one run: shared machines drift between runs.
set -u
rounds=3 secs=5 exports=0 writes=0 formats=0 convert_src="" jobs="2 4" ceiling_src=""
usage() { sed -n '2,34p' "$0"; exit 2; }
while getopts "r:t:j:C:xwfc:" opt; do
  case $opt in
    r) rounds=$OPTARG ;;
    t) secs=$OPTARG ;;
    j) jobs=$OPTARG ;;
    C) ceiling_src=$(readlink -f "$OPTARG") ;;
    x) exports=1 ;;
    w) writes=1 ;;
    f) formats=1 ;;
    c) convert_src=$(readlink -f "$OPTARG") ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || [ "$writes" = 1 ] || [ -n "$convert_src" ] || usage
[ "$(id -u)" -eq 0 ] || { echo "compare.sh: run as root (it drops the page cache)"; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
mountqcow=$here/artifacts/mountqcow/mountqcow
[ -x "$mountqcow" ] || { echo "compare.sh: build first: ./build.sh"; exit 2; }
command -v fio >/dev/null || { echo "compare.sh: apt-get install fio"; exit 2; }
if [ -n "${QEMU_BIN:-}" ]; then
  [ -x "$QEMU_BIN/qemu-storage-daemon" ] || { echo "compare.sh: no qemu-storage-daemon in QEMU_BIN=$QEMU_BIN"; exit 2; }
  PATH=$QEMU_BIN:$PATH
fi
command -v qemu-storage-daemon >/dev/null && echo "peer: $(qemu-storage-daemon --version | head -1)"

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

rand_iops() { # target [jobs]
  fio --name=r --filename="$1" --readonly --rw=randread --bs=4k --direct=1 --ioengine=psync --numjobs="${2:-2}" \
    --runtime="$secs" --time_based --group_reporting --output-format=terse 2>/dev/null | awk -F';' '{ print $8 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : "-" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f x", a / b; else print "-" }'; }

appears() { for _ in $(seq 100); do [ -e "$1" ] && return 0; sleep 0.1; done; return 1; }

for image in "$@"; do
  image=$(readlink -f "$image")
  name=$(basename "$image")
  declare -A file=() seq=() iops=()
  m=$scratch/mountqcow-$name; mkdir -p "$m"
  "$mountqcow" "$image" "$m" >/dev/null && mounted+=("$m") && file[mountqcow]=$m/disk.raw
  if [ -n "$ceiling_src" ] && { [ -x "$scratch/ceiling" ] || gcc -O2 "$ceiling_src" -o "$scratch/ceiling" $(pkg-config fuse3 --cflags --libs); }; then
    m=$scratch/ceiling-$name; mkdir -p "$m"
    SIZE=$(qemu-img info -U --output=json "$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])') \
      "$scratch/ceiling" "$m" && mounted+=("$m") && file[fuse-ceiling]=$m/disk
  fi
  if command -v qemu-storage-daemon >/dev/null; then
    m=$scratch/qsd-$name; mkdir -p "$m"; touch "$m/disk"
    # read-only: mountqcow's mount holds QEMU's reader locks, which keep writers out
    qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$image",read-only=on --blockdev driver=qcow2,node-name=q,file=f,read-only=on \
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
      for j in $jobs; do iops[$who.$j]+="$(rand_iops "${file[$who]}" "$j") "; done
    done
  done
  echo "== $name ($rounds rounds, medians; us/them: mountqcow's figure over the row's)"
  printf '%-22s %10s %14s' mounter seq_MB/s "seq: us/them"
  for j in $jobs; do printf ' %14s %14s' "rand4k_IOPS_${j}j" "us/them"; done; echo
  declare -A mseq=() miops=()
  for who in mountqcow fuse-ceiling qemu-storage-daemon qcowmount; do
    [ -n "${file[$who]:-}" ] || continue
    mseq[$who]=$(tr ' ' '\n' <<< "${seq[$who]}" | median)
    printf '%-22s %10s %14s' "$who" "${mseq[$who]}" "$([ "$who" = mountqcow ] || ratio "${mseq[mountqcow]:-0}" "${mseq[$who]}")"
    for j in $jobs; do
      miops[$who.$j]=$(tr ' ' '\n' <<< "${iops[$who.$j]}" | median)
      printf ' %14s %14s' "${miops[$who.$j]}" "$([ "$who" = mountqcow ] || ratio "${miops[mountqcow.$j]:-0}" "${miops[$who.$j]}")"
    done
    echo
  done
  [ -n "${file[fuse-ceiling]:-}" ] && echo "random reads against the FUSE ceiling: target >= 1.0 x at every number of jobs"
  first=${jobs%% *}; miops[mountqcow]=${miops[mountqcow.$first]:-0}
  if command -v zstd >/dev/null && qemu-img info -U "$image" 2>/dev/null | grep -q "compression type: zstd"; then
    cluster=$(qemu-img info -U --output=json "$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')
    qemu-img convert -U -O raw "$image" "$scratch/plain.raw"
    single=$(zstd -b3 -B"$cluster" -i3 "$scratch/plain.raw" 2>&1 | tr '\r' '\n' | grep -oE '[0-9.]+ MB/s' | tail -1 | cut -d' ' -f1)
    rm -f "$scratch/plain.raw"
    limit=$(awk -v s="$single" -v c="$(nproc)" 'BEGIN { printf "%.0f", s * c }')
    echo "zstd decoder limit: $(nproc) cores x $single MB/s = $limit MB/s; mountqcow reads at $(ratio "${mseq[mountqcow]:-0}" "$limit") of it (target >= 0.75 x)"
  fi
  if [ "$formats" = 1 ]; then
    echo "-- the same bytes in other formats, through mountqcow (target >= 0.9 x the qcow2)"
    printf '%-8s %10s %12s %14s %14s\n' format seq_MB/s rand4k_IOPS "seq: /qcow2" "rand: /qcow2"
    for fmt in vmdk vpc vhdx vdi; do
      out=$scratch/$name.$fmt; m=$scratch/fmt-$fmt; mkdir -p "$m"
      qemu-img convert -U -O $fmt "$image" "$out" || continue
      "$mountqcow" "$out" "$m" >/dev/null || { rm -f "$out"; continue; }
      fs=() fi=()
      for _ in $(seq "$rounds"); do fs+=("$(seq_mbs "$out" "$m/disk.raw")"); fi+=("$(rand_iops "$m/disk.raw" "$first")"); done
      fusermount3 -u "$m"; rm -f "$out"
      a=$(printf '%s\n' "${fs[@]}" | median); b=$(printf '%s\n' "${fi[@]}" | median)
      printf '%-8s %10s %12s %14s %14s\n' $fmt "$a" "$b" "$(ratio "$a" "${mseq[mountqcow]:-0}")" "$(ratio "$b" "${miops[mountqcow]:-0}")"
    done
  fi
  unset mseq miops
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

# ---- writes: mountqcow --rw against qemu-storage-daemon's writable FUSE export ----
write_figure() { # kind target
  case $1 in
    seq)  fio --name=w --filename="$2" --rw=write --bs=1M --size=1G --ioengine=psync --end_fsync=1 --output-format=terse 2>/dev/null | awk -F';' '{printf "%.0f\n", $48*1.024/1000}' ;;
    rand|back) fio --name=w --filename="$2" --rw=randwrite --bs=4k --size=4G --direct=1 --ioengine=psync --numjobs=2 --runtime="$secs" --time_based --group_reporting --output-format=terse 2>/dev/null | awk -F';' '{print $49}' ;;
    rand4) fio --name=w --filename="$2" --rw=randwrite --bs=4k --size=4G --direct=1 --ioengine=psync --numjobs=4 --runtime="$secs" --time_based --group_reporting --output-format=terse 2>/dev/null | awk -F';' '{print $49}' ;;
    sync) fio --name=w --filename="$2" --rw=randwrite --bs=4k --size=4G --ioengine=psync --fsync=32 --runtime="$secs" --time_based --output-format=terse 2>/dev/null | awk -F';' '{print $49}' ;;
  esac
}
if [ "$writes" = 1 ]; then
  command -v qemu-storage-daemon >/dev/null || { echo "compare.sh -w needs qemu-storage-daemon (apt-get install qemu-system-common)"; exit 2; }
  w=$scratch/w; mkdir -p "$w"
  qemu-img create -q -f qcow2 "$w/base.qcow2" 4G
  qemu-io -f qcow2 -c "write -P 0x5a 0 2G" -c "write -P 0x5a 2G 2G" "$w/base.qcow2" >/dev/null
  declare -A wr=()
  for _ in $(seq "$rounds"); do
    for kind in seq rand rand4 sync back; do
      for who in mountqcow qemu; do
        img=$w/img-$who.qcow2; rm -f "$img"
        if [ $kind = back ]; then qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$img"; else qemu-img create -q -f qcow2 "$img" 4G; fi
        if [ $who = mountqcow ]; then
          mkdir -p "$w/m"; "$mountqcow" --rw "$img" "$w/m" >/dev/null && appears "$w/m/disk.raw" || continue
          wr[$who.$kind]+="$(write_figure $kind "$w/m/disk.raw") "
          "$mountqcow" unmount "$w/m" >/dev/null
        else
          mkdir -p "$w/q"; touch "$w/q/disk"
          qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$img" --blockdev driver=qcow2,node-name=q,file=f \
            --export type=fuse,id=e,node-name=q,mountpoint="$w/q/disk",writable=on --daemonize --pidfile "$w/q.pid" 2>/dev/null || continue
          wr[$who.$kind]+="$(write_figure $kind "$w/q/disk") "
          fusermount3 -u "$w/q/disk"; kill "$(cat "$w/q.pid")" 2>/dev/null; sleep 0.5
        fi
      done
    done
  done
  echo "== writes ($rounds rounds, medians; seq in MB/s, the others in IOPS)"
  printf '%-6s %12s %12s %10s %8s\n' load mountqcow qemu us/them target
  declare -A wtarget=([seq]=">= 1.5 x" [back]=">= 1.5 x" [rand]="" [rand4]=">= 3 x" [sync]="")
  for kind in seq rand rand4 sync back; do
    a=$(tr ' ' '\n' <<< "${wr[mountqcow.$kind]:-}" | median); b=$(tr ' ' '\n' <<< "${wr[qemu.$kind]:-}" | median)
    printf '%-6s %12s %12s %10s %8s\n' $kind "$a" "$b" "$(ratio "$a" "$b")" "${wtarget[$kind]}"
  done
fi

# ---- convert --compress against qemu-img convert -c ----
if [ -n "$convert_src" ]; then
  echo "== convert --compress of $(basename "$convert_src") ($rounds rounds, median seconds; sizes in bytes)"
  printf '%-8s %10s %10s %10s %14s %14s %10s\n' type mountqcow qemu-img us/them "mountqcow size" "qemu-img size" "size ratio"
  for type in zstd deflate; do
    ours=() theirs=()
    qopt=(); [ $type = zstd ] && qopt=(-o compression_type=zstd)
    for _ in $(seq "$rounds"); do
      rm -f "$scratch/c-ours.qcow2" "$scratch/c-qemu.qcow2"
      s=$(date +%s.%N); "$mountqcow" convert --no-progress -c $type "$convert_src" "$scratch/c-ours.qcow2" 2>/dev/null; e=$(date +%s.%N)
      ours+=("$(echo "$e - $s" | bc)")
      s=$(date +%s.%N); qemu-img convert -c -O qcow2 "${qopt[@]}" "$convert_src" "$scratch/c-qemu.qcow2"; e=$(date +%s.%N)
      theirs+=("$(echo "$e - $s" | bc)")
    done
    a=$(printf '%s\n' "${ours[@]}" | median); b=$(printf '%s\n' "${theirs[@]}" | median)
    sa=$(stat -c %s "$scratch/c-ours.qcow2"); sb=$(stat -c %s "$scratch/c-qemu.qcow2")
    printf '%-8s %10.2f %10.2f %10s %14s %14s %10s\n' $type "$a" "$b" "$(ratio "$b" "$a")" "$sa" "$sb" "$(ratio "$sa" "$sb")"
    qemu-img compare -q "$convert_src" "$scratch/c-ours.qcow2" || echo "mountqcow's $type output differs from the source!"
    rm -f "$scratch/c-ours.qcow2" "$scratch/c-qemu.qcow2"
  done
fi

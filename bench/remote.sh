#!/usr/bin/env bash
# bench/remote.sh IMAGE [ROUNDS]
# A qcow2 image read over HTTP from nginx on loopback against the same file read locally, in one
# run: export to /dev/null (and curl of the whole object, the HTTP ceiling), then dd and fio
# 4 KiB O_DIRECT random reads (2 jobs, 10 s) of disk.raw through a mount of the URL and of the
# file, the page cache dropped and the image file read into it before each dd (as compare.sh).
# Needs root, nginx, fio, FUSE and a built artifacts/mountqcow. Medians of ROUNDS (default 3); the
# last lines put each figure against its target (export and dd of the URL against curl, random
# reads of the URL against 3 x the 11 715 IOPS measured before issue 6).
set -euo pipefail
image=$(realpath "$1")
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
mq=$root/artifacts/mountqcow/mountqcow
work=$(mktemp -d /tmp/mq-remote-bench.XXXXXX)
port=$((20000 + RANDOM % 20000))
chmod 755 "$work" # nginx's workers run as nobody
mkdir -p "$work/www" "$work/url" "$work/local"
ln -s "$image" "$work/www/image.qcow2"
cat >"$work/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi;
  scgi_temp_path $work/scgi;
  server { listen 127.0.0.1:$port; root $work/www; }
}
EOF
nginx -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
cleanup() {
  fusermount3 -u "$work/url" 2>/dev/null || true
  fusermount3 -u "$work/local" 2>/dev/null || true
  kill "$nginx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
url=http://127.0.0.1:$port/image.qcow2
for _ in $(seq 50); do curl -sf -r 0-0 -o /dev/null "$url" && break; sleep 0.1; done
[ "$(id -u)" -eq 0 ] || { echo "remote.sh: run as root (it drops the page cache)"; exit 2; }
warm() { sync; echo 3 > /proc/sys/vm/drop_caches; cat "$image" >/dev/null; }
warm

median() { sort -n | awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : "-" }'; }
timed() { # median wall time of a command over the rounds, in seconds
  local all=()
  for _ in $(seq "$rounds"); do
    local s e
    s=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; e=$(date +%s.%N)
    all+=("$(echo "$e - $s" | bc -l)")
  done
  printf '%s\n' "${all[@]}" | median
}
ratio() { # NAME VALUE TARGET: the value against its target, and whether it is met
  awk -v n="$1" -v v="$2" -v t="$3" 'BEGIN { printf "  %-44s %6.2f  (target >= %s: %s)\n", n, v, t, (v >= t) ? "met" : "NOT met" }'
}
size=$(stat -c %s "$image")
echo "image: $image ($size bytes), nginx on 127.0.0.1:$port, medians of $rounds, $(nproc) CPUs, $(date -u +%F)"
t_local=$(timed "$mq" export --no-progress "$image" /dev/null)
t_url=$(timed "$mq" export --no-progress "$url" /dev/null)
t_curl=$(timed curl -sf -o /dev/null "$url")
printf 'export to /dev/null, local file: %.2f s\n' "$t_local"
printf 'export to /dev/null, URL:        %.2f s\n' "$t_url"
printf 'curl of the whole object:        %.2f s (%.0f MB/s)\n' "$t_curl" "$(echo "$size / $t_curl / 1000000" | bc -l)"
"$mq" export --no-progress "$url" /dev/null 2>&1 | grep fetched || true

"$mq" "$image" "$work/local" >/dev/null
"$mq" "$url" "$work/url" >/dev/null
declare -A mbs iops
for where in local url; do
  disk=$work/$where/disk.raw
  all=()
  for _ in $(seq "$rounds"); do
    warm
    s=$(date +%s.%N); dd if="$disk" of=/dev/null bs=1M 2>/dev/null; e=$(date +%s.%N)
    all+=("$(echo "$e - $s" | bc -l)")
  done
  secs=$(printf '%s\n' "${all[@]}" | median)
  mbs[$where]=$(echo "$(stat -c %s "$disk") / $secs / 1000000" | bc -l)
  iops[$where]=$(fio --name=r --filename="$disk" --rw=randread --bs=4k --direct=1 --ioengine=psync --numjobs=2 \
    --time_based --runtime=10 --group_reporting --readonly --output-format=terse 2>/dev/null | awk -F';' '{ print $8 }')
  printf 'mounted %-5s dd %6.0f MB/s   fio 4 KiB random %8s IOPS\n' "$where" "${mbs[$where]}" "${iops[$where]}"
done
# The targets of issue 6 (2 vCPUs, loopback nginx): 11 715 IOPS is what a URL mount did before it.
curl_mbs=$(echo "$size / $t_curl / 1000000" | bc -l)
echo "against the targets:"
ratio "export URL /dev/null, speed x curl's" "$(echo "$t_curl / $t_url" | bc -l)" 1.0
ratio "dd of a URL mount, speed x curl's" "$(echo "${mbs[url]} / $curl_mbs" | bc -l)" 0.8
ratio "random 4 KiB IOPS of a URL mount x 11715" "$(echo "${iops[url]} / 11715" | bc -l)" 3.0

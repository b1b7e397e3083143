#!/usr/bin/env bash
# bench/remote.sh IMAGE [ROUNDS]
# A qcow2 image read over HTTP from nginx on loopback against the same file read locally, in one
# run: export to /dev/null (and curl of the whole object, the HTTP ceiling), then dd and fio
# 4 KiB O_DIRECT random reads (2 jobs, 10 s) of disk.raw through a mount of the URL and of the
# file, the page cache dropped and the image file read into it before each dd (as compare.sh).
# Needs root, nginx, fio, FUSE and a built artifacts/mountqcow. Best of ROUNDS (default 3).
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

best() { # best wall time of a command over the rounds, in seconds
  local b=999
  for _ in $(seq "$rounds"); do
    local s e
    s=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; e=$(date +%s.%N)
    b=$(echo "$e - $s" | bc -l | awk -v b="$b" '{ print ($1 < b) ? $1 : b }')
  done
  printf '%.2f' "$b"
}
size=$(stat -c %s "$image")
echo "image: $image ($size bytes), nginx on 127.0.0.1:$port, best of $rounds"
echo "export to /dev/null, local file: $(best "$mq" export --no-progress "$image" /dev/null) s"
echo "export to /dev/null, URL:        $(best "$mq" export --no-progress "$url" /dev/null) s"
echo "curl of the whole object:        $(best curl -sf -o /dev/null "$url") s"
"$mq" export --no-progress "$url" /dev/null 2>&1 | grep fetched || true

"$mq" "$image" "$work/local" >/dev/null
"$mq" "$url" "$work/url" >/dev/null
for where in local url; do
  disk=$work/$where/disk.raw
  secs=999
  for _ in $(seq "$rounds"); do
    warm
    s=$(date +%s.%N); dd if="$disk" of=/dev/null bs=1M 2>/dev/null; e=$(date +%s.%N)
    secs=$(echo "$e - $s" | bc -l | awk -v b="$secs" '{ print ($1 < b) ? $1 : b }')
  done
  mb=$(echo "$(stat -c %s "$disk") / $secs / 1000000" | bc -l)
  iops=$(fio --name=r --filename="$disk" --rw=randread --bs=4k --direct=1 --ioengine=psync --numjobs=2 \
    --time_based --runtime=10 --group_reporting --readonly --output-format=terse 2>/dev/null | awk -F';' '{ print $8 }')
  printf 'mounted %-5s dd %6.0f MB/s   fio 4 KiB random %8s IOPS\n' "$where" "$mb" "$iops"
done

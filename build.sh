#!/usr/bin/env bash
# build.sh          restore, build Release, publish the host to artifacts/mountqcow/mountqcow
# build.sh demo     build, make a small demo image, mount it with --files and read a partition's files
# build.sh test     build (and publish mountqcow.exe for win-x64), then run every test; the last line is "N passed, N failed"
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD
cmd=${1:-build}

# Debian packages the tests (and mounting) need; installed when missing and we are root.
need_packages() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "build.sh: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "build.sh: please install: sudo apt-get install ${missing[*]}" >&2
    return 1
  fi
}

build() {
  need_packages fuse3 || true  # mounting needs it; building does not
  dotnet build MountQcow.sln -c Release -nologo -clp:"ErrorsOnly;NoSummary" -v:q
  dotnet publish src/MountQcow/MountQcow.csproj -c Release -nologo -v:q -o artifacts/mountqcow >/dev/null
  echo "built artifacts/mountqcow/mountqcow"
}

run_tests() {
  need_packages fuse3 libfuse3-dev qemu-utils e2fsprogs fdisk gcc pkg-config gcc-mingw-w64-x86-64 wine64 dosfstools ntfs-3g xfsprogs btrfs-progs nginx fuse2fs mtools procps time
  # s3rver, an S3-compatible server on loopback, for the s3:// tests
  if ! command -v s3rver >/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v npm >/dev/null; then npm install -g --no-audit --no-fund s3rver@3 >/dev/null
    else echo "build.sh: the s3:// tests need s3rver: sudo npm install -g s3rver@3" >&2; fi
  fi
  local results=$root/artifacts/test-results
  rm -rf "$results"
  local status=0
  dotnet test MountQcow.sln -c Release --no-build -nologo --results-directory "$results" \
    --logger "trx" --logger "console;verbosity=normal" || status=$?
  # Totals from the result files: a skipped test is not a passed one.
  # Each test is one UnitTestResult element; the file's ResultSummary has an outcome too.
  count() { cat "$results"/*.trx 2>/dev/null | grep -o "<UnitTestResult [^>]*outcome=\"$1\"" | wc -l || true; }
  local passed failed skipped
  passed=$(count Passed)
  failed=$(count Failed)
  skipped=$(count NotExecuted)
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; echo "the test run itself failed (exit $status)"; fi
  [ "$skipped" -gt 0 ] && echo "$skipped skipped (their reasons are above)"
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

demo() {
  need_packages fuse3 e2fsprogs fdisk fuse2fs
  build
  local dir=$root/artifacts/demo mq=$root/artifacts/mountqcow/mountqcow
  mkdir -p "$dir/mnt"
  [ -f "$dir/demo.qcow2" ] || demo/make-demo.sh "$dir/demo.qcow2" "$mq"
  if mountpoint -q "$dir/mnt"; then fusermount3 -u "$dir/mnt" 2>/dev/null || umount "$dir/mnt"; fi
  echo
  # --files: each partition's file system mounted by its user-space driver (fuse2fs), no root needed
  echo "\$ mountqcow --files $dir/demo.qcow2 $dir/mnt"
  "$mq" --files "$dir/demo.qcow2" "$dir/mnt"
  echo "\$ ls -l $dir/mnt"
  ls -l "$dir/mnt"
  echo "\$ ls -R $dir/mnt/p2/home"
  ls -R "$dir/mnt/p2/home"
  echo "\$ cat $dir/mnt/p2/home/demo/README.txt"
  cat "$dir/mnt/p2/home/demo/README.txt"
  echo
  echo "the demo image stays mounted at $dir/mnt; unmount it with: $mq unmount $dir/mnt"
}

# mountqcow.exe for Windows, without ReadyToRun (that needs a Windows-targeting crossgen): a
# Windows-only compile error fails the test command here, before the tests run.
publish_windows() {
  dotnet publish src/MountQcow/MountQcow.csproj -c Release -r win-x64 -p:PublishReadyToRun=false -nologo -v:q \
    -o artifacts/mountqcow-win-x64 >/dev/null
  echo "published artifacts/mountqcow-win-x64/mountqcow.exe"
}

case "$cmd" in
  build) build ;;
  demo) demo ;;
  test) publish_windows && build && run_tests ;;
  *) sed -n '2,3p' "$0"; exit 2 ;;
esac

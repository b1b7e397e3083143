#!/usr/bin/env bash
# build.sh          restore, build Release, publish the host to artifacts/mountqcow/mountqcow
# build.sh test     build, then run every test; the last line is "N passed, N failed"
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
  dotnet build MountQcow.sln -c Release -nologo -clp:"ErrorsOnly;NoSummary" -v:q
  dotnet publish src/MountQcow/MountQcow.csproj -c Release --no-build -nologo -v:q -o artifacts/mountqcow >/dev/null
  echo "built artifacts/mountqcow/mountqcow"
}

run_tests() {
  need_packages fuse3 libfuse3-dev qemu-utils e2fsprogs fdisk
  local results=$root/artifacts/test-results
  rm -rf "$results"
  local status=0
  dotnet test MountQcow.sln -c Release --no-build -nologo --results-directory "$results" \
    --logger "trx" --logger "console;verbosity=normal" || status=$?
  # Totals from the result files: a skipped test is not a passed one.
  count() { cat "$results"/*.trx 2>/dev/null | grep -o "outcome=\"$1\"" | wc -l || true; }
  local passed failed skipped
  passed=$(count Passed)
  failed=$(count Failed)
  skipped=$(count NotExecuted)
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; echo "the test run itself failed (exit $status)"; fi
  [ "$skipped" -gt 0 ] && echo "$skipped skipped (their reasons are above)"
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

case "$cmd" in
  build) build ;;
  test) build && run_tests ;;
  *) sed -n '2,3p' "$0"; exit 2 ;;
esac

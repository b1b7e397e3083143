#!/usr/bin/env bash
# build.sh          restore, build Release, publish the host to artifacts/mountqcow/mountqcow
# build.sh demo     build, make a small demo image, mount it with --files and read a partition's files
# build.sh test     build (and publish mountqcow.exe for win-x64), then run every test; the last line is "N passed, N failed"
# build.sh windows  publish mountqcow.exe for win-x64 (one self-contained file) to artifacts/mountqcow-win-x64
# build.sh deb      artifacts/mountqcow_VERSION_amd64.deb: the self-contained program, its man page, bash completion, mount.fuse.mountqcow
# build.sh pack     artifacts/nupkg: MountQcow.Engine.VERSION.nupkg (the library), mountqcow.VERSION.nupkg (the .NET tool); samples/ReadDisk built against them
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
  need_packages fuse3 libfuse3-dev qemu-utils e2fsprogs fdisk gcc pkg-config gcc-mingw-w64-x86-64 wine64 dosfstools ntfs-3g xfsprogs btrfs-progs nginx fuse2fs mtools procps time man-db
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

# The Debian package: /usr/bin/mountqcow self-contained (no .NET runtime needed), mountqcow(1) and
# the bash completion it prints itself (from the source --help shows), and /sbin/mount.fuse.mountqcow:
# fuse3's mount.fuse3 under the name that makes mount(8) run `mountqcow IMAGE DIR -o OPTIONS` for
# `mount -t fuse.mountqcow` and fstab lines of that type. dpkg-deb only: no debhelper, no fakeroot.
deb() {
  local out=$root/artifacts/deb-publish stage=$root/artifacts/deb-root
  rm -rf "$out" "$stage"
  dotnet publish src/MountQcow/MountQcow.csproj -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true \
    -p:IncludeNativeLibrariesForSelfExtract=true -p:PublishDocumentationFiles=false -nologo -v:q -o "$out" >/dev/null
  local mq=$out/mountqcow version
  version=$("$mq" --version | cut -d' ' -f2)
  # SemVer's pre-release (0.3.0-alpha.0.5) sorts before its release; in Debian's order '~' does that.
  local debversion=${version//-/\~}
  install -Dm755 "$mq" "$stage/usr/bin/mountqcow"
  mkdir -p "$stage/usr/share/man/man1" "$stage/sbin" "$stage/DEBIAN"
  # The page's date from the commit, so the same commit makes the same page.
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s) "$mq" --man | gzip -9n >"$stage/usr/share/man/man1/mountqcow.1.gz"
  "$mq" --completion bash | install -Dm644 /dev/stdin "$stage/usr/share/bash-completion/completions/mountqcow"
  install -Dm644 packaging/deb/copyright "$stage/usr/share/doc/mountqcow/copyright"
  ln -s mount.fuse3 "$stage/sbin/mount.fuse.mountqcow"
  sed -e "s/@VERSION@/$debversion/" -e "s/@SIZE@/$(du -sk "$stage" | cut -f1)/" packaging/deb/control >"$stage/DEBIAN/control"
  local deb=$root/artifacts/mountqcow_${debversion}_amd64.deb
  rm -f "$root"/artifacts/mountqcow_*_amd64.deb
  dpkg-deb --build --root-owner-group -Zxz "$stage" "$deb" >/dev/null
  echo "built artifacts/$(basename "$deb")"
}

# The NuGet packages, versioned as the program: the library (MountQcow.Engine) and the .NET tool
# (framework-dependent, any platform); then samples/ReadDisk, a caller's program, built against the
# packed library (its nuget.config names artifacts/nupkg) into artifacts/sample.
pack() {
  rm -rf artifacts/nupkg artifacts/sample
  dotnet pack src/MountQcow.Engine/MountQcow.Engine.csproj -c Release -nologo -v:q -o artifacts/nupkg >/dev/null
  dotnet pack src/MountQcow/MountQcow.csproj -c Release -nologo -v:q -o artifacts/nupkg >/dev/null
  local version
  version=$(cd artifacts/nupkg && ls MountQcow.Engine.*.nupkg)
  version=${version#MountQcow.Engine.}
  version=${version%.nupkg}
  # NuGet caches a package by id and version: a package packed again under the same version
  # must not be taken from the cache.
  rm -rf "$(dotnet nuget locals global-packages --list | sed 's/^global-packages: //')mountqcow.engine/$version"
  dotnet build samples/ReadDisk/ReadDisk.csproj -c Release -nologo -v:q -clp:"ErrorsOnly;NoSummary" -p:MountQcowVersion="$version" -o artifacts/sample >/dev/null
  echo "packed artifacts/nupkg: $(cd artifacts/nupkg && echo *.nupkg); built artifacts/sample/ReadDisk.dll against it"
}

case "$cmd" in
  build) build ;;
  demo) demo ;;
  test) publish_windows && build && deb && pack && run_tests ;;
  windows) publish_windows ;;
  deb) deb ;;
  pack) pack ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac

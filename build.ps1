# build.ps1          restore, build Release, publish the host to artifacts\mountqcow
# build.ps1 test     build, then run every test; the last line is "N passed, N failed"
param([string]$Command = "build")
$ErrorActionPreference = "Stop"
Set-Location $PSScriptRoot

function Build {
    dotnet build MountQcow.sln -c Release -nologo -clp:"ErrorsOnly;NoSummary" -v:q
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    dotnet publish src/MountQcow/MountQcow.csproj -c Release -nologo -v:q -o artifacts/mountqcow | Out-Null
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    Write-Host "built artifacts\mountqcow\mountqcow.exe"
}

function Test {
    $results = Join-Path $PSScriptRoot "artifacts/test-results"
    if (Test-Path $results) { Remove-Item -Recurse -Force $results }
    dotnet test MountQcow.sln -c Release --no-build -nologo --results-directory $results --logger trx --logger "console;verbosity=normal"
    $status = $LASTEXITCODE
    $trx = Get-ChildItem $results -Filter *.trx | Get-Content -Raw
    # Each test is one UnitTestResult element; the file's ResultSummary has an outcome too.
    $passed = ([regex]::Matches($trx, '<UnitTestResult [^>]*outcome="Passed"')).Count
    $failed = ([regex]::Matches($trx, '<UnitTestResult [^>]*outcome="Failed"')).Count
    $skipped = ([regex]::Matches($trx, '<UnitTestResult [^>]*outcome="NotExecuted"')).Count
    if ($status -ne 0 -and $failed -eq 0) { $failed = 1; Write-Host "the test run itself failed (exit $status)" }
    if ($skipped -gt 0) { Write-Host "$skipped skipped (their reasons are above)" }
    Write-Host "$passed passed, $failed failed"
    if ($failed -ne 0) { exit 1 }
}

switch ($Command) {
    "build" { Build }
    "test" { Build; Test }
    default { Write-Host "usage: build.ps1 [build|test]"; exit 2 }
}

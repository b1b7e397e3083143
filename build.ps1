# build.ps1          build Release and publish mountqcow.exe for win-x64 to artifacts\mountqcow-win-x64
# build.ps1 test     build, then run the tests Windows can run (the FUSE, root and qemu tests
#                    skip here, saying why); the last line is "N passed, N failed"
# Needs the .NET 10 SDK. Mounting needs Dokany 2.x (https://github.com/dokan-dev/dokany/releases).
param([string]$Command = "build")
$ErrorActionPreference = "Stop"
Set-Location $PSScriptRoot

function Build {
    dotnet build MountQcow.sln -c Release -nologo -clp:"ErrorsOnly;NoSummary" -v:q
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    dotnet publish src/MountQcow/MountQcow.csproj -c Release -r win-x64 -nologo -v:q -o artifacts/mountqcow-win-x64 | Out-Null
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    Write-Output "built artifacts\mountqcow-win-x64\mountqcow.exe"
}

function Test {
    $results = Join-Path $PSScriptRoot "artifacts/test-results"
    if (Test-Path $results) { Remove-Item -Recurse -Force $results }
    dotnet test MountQcow.sln -c Release --no-build -nologo --results-directory $results --logger trx --logger "console;verbosity=normal"
    $status = $LASTEXITCODE
    # Totals from the result files: a skipped test is not a passed one.
    $text = (Get-ChildItem $results -Filter *.trx | Get-Content -Raw) -join ""
    $passed = ([regex]::Matches($text, '<UnitTestResult [^>]*outcome="Passed"')).Count
    $failed = ([regex]::Matches($text, '<UnitTestResult [^>]*outcome="Failed"')).Count
    $skipped = ([regex]::Matches($text, '<UnitTestResult [^>]*outcome="NotExecuted"')).Count
    if ($status -ne 0 -and $failed -eq 0) { $failed = 1; Write-Output "the test run itself failed (exit $status)" }
    if ($skipped -gt 0) { Write-Output "$skipped skipped (their reasons are above)" }
    Write-Output "$passed passed, $failed failed"
    if ($failed -ne 0) { exit 1 }
}

switch ($Command) {
    "build" { Build }
    "test" { Build; Test }
    default { Get-Content $PSCommandPath -TotalCount 3; exit 2 }
}

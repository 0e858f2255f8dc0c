# azd preprovision hook (azure.yaml), Windows: same as azd-preprovision.sh.
$ErrorActionPreference = 'Stop'

if (-not $env:SHAREPOINT_MYSITE_URL) {
    Write-Error "SHAREPOINT_MYSITE_URL is not set. Run, for example: azd env set SHAREPOINT_MYSITE_URL https://contoso-my.sharepoint.com"
    exit 1
}
if (-not $env:SHAREPOINT_MYSITE_URL.StartsWith('https://')) {
    Write-Error "SHAREPOINT_MYSITE_URL must start with https:// (got $($env:SHAREPOINT_MYSITE_URL))"
    exit 1
}

if (-not $env:GRAPH_CLIENT_STATE) {
    $bytes = [byte[]]::new(32)
    [System.Security.Cryptography.RandomNumberGenerator]::Fill($bytes)
    $secret = -join ($bytes | ForEach-Object { $_.ToString('x2') })
    azd env set GRAPH_CLIENT_STATE $secret
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    Write-Host "Created GRAPH_CLIENT_STATE in the azd environment (kept for later provisions)."
} else {
    Write-Host "GRAPH_CLIENT_STATE already set in the azd environment; keeping it."
}

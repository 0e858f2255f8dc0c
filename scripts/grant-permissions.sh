#!/usr/bin/env bash
# Grant photo-sync's managed identity the Microsoft Graph and SharePoint application permissions it
# needs. Idempotent: roles and site grants already in place are reported and left alone.
# Run as an Entra ID admin who may grant application permissions (Privileged Role Administrator or
# Global Administrator), signed in with `az login`. See docs/permissions.md.
set -euo pipefail

GRAPH_APP_ID="00000003-0000-0000-c000-000000000000"       # Microsoft Graph
SHAREPOINT_APP_ID="00000003-0000-0ff1-ce00-000000000000"  # Office 365 SharePoint Online
GRAPH_URL="${GRAPH_URL:-https://graph.microsoft.com}"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--principal-id ID] [--mysite-url URL] [--geos GEOS]
       [--full-control | --skip-site-grant] [--groups] [--profile-writes | --revoke-profile-writes]
       [--dry-run]

Grants the managed identity's service principal:
  Microsoft Graph  User.Read.All          list and read users; change notifications on users
  Microsoft Graph  ProfilePhoto.Read.All  read photos (least privileged for photos)
  SharePoint       User.Read.All          read user profiles (PeopleManager/GetPropertiesFor)
  SharePoint       Sites.Selected         + a 'write' grant on the My Site host site (default), or
  SharePoint       Sites.FullControl.All  with --full-control (no per-site grant needed)
  Microsoft Graph  GroupMember.Read.All   only with --groups (SYNC_INCLUDE_GROUPS/SYNC_EXCLUDE_GROUPS)
  SharePoint       Sites.FullControl.All  with --profile-writes: the set PnP PowerShell documents
  SharePoint       User.ReadWrite.All     for app-only profile property writes (link new people's
  SharePoint       TermStore.ReadWrite.All  profiles to their photo); not every tenant honours it

Options:
  --principal-id ID  object id of the identity's service principal
                     (default: azd env value PHOTO_SYNC_IDENTITY_PRINCIPAL_ID)
  --mysite-url URL   My Site host, e.g. https://contoso-my.sharepoint.com
                     (default: azd env value SHAREPOINT_MYSITE_URL)
  --geos GEOS        Multi-Geo tenants: the other geos' My Site hosts, as in SHAREPOINT_GEOS
                     (EUR=https://contosoeur-my.sharepoint.com,APC=...); with Sites.Selected each
                     geo's My Site host gets its own 'write' grant (default: azd env value
                     SHAREPOINT_GEOS)
  --full-control     grant SharePoint Sites.FullControl.All instead of Sites.Selected + site grant
  --skip-site-grant  do not look at the My Site host's site grant: a SharePoint administrator made
                     it by hand (the fallback below); the app roles are still checked and granted
  --groups           also grant Microsoft Graph GroupMember.Read.All
  --profile-writes   also grant the SharePoint profile-write set above (includes
                     Sites.FullControl.All, so no Sites.Selected site grant is made); combinable with
                     --full-control. docs/permissions.md says what they allow and what works without
  --revoke-profile-writes
                     remove User.ReadWrite.All and TermStore.ReadWrite.All, and Sites.FullControl.All
                     unless --full-control is given (then Sites.Selected + the site grant are made, so
                     the app keeps writing thumbnails)
  --dry-run          show what would be granted, change nothing
  -h, --help         this text

Needs the Azure CLI signed in (az login) to the tenant, as an admin allowed to grant application
permissions. Reading and creating the Sites.Selected site grant both need Sites.FullControl.All on
the caller's token, which the Azure CLI's token may not carry: then the script prints the commands a
SharePoint administrator runs instead and exits with code 3; run it again with --skip-site-grant
once they have.

Exit codes: 0 done, 1 a Graph call failed, 2 bad arguments or no Azure CLI, 3 the site grant needs a
SharePoint administrator (printed).
USAGE
}

principal_id=""
mysite_url=""
geos=""
full_control=false
skip_site_grant=false
groups=false
profile_writes=false
revoke_profile_writes=false
dry_run=false
while [ $# -gt 0 ]; do
    case "$1" in
        --principal-id) principal_id="${2:?--principal-id needs a value}"; shift 2 ;;
        --mysite-url) mysite_url="${2:?--mysite-url needs a value}"; shift 2 ;;
        --geos) geos="${2:?--geos needs a value}"; shift 2 ;;
        --full-control) full_control=true; shift ;;
        --skip-site-grant) skip_site_grant=true; shift ;;
        --groups) groups=true; shift ;;
        --profile-writes) profile_writes=true; shift ;;
        --revoke-profile-writes) revoke_profile_writes=true; shift ;;
        --dry-run) dry_run=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

azd_value() {
    # A value from the current azd environment, or nothing.
    if command -v azd >/dev/null 2>&1; then
        azd env get-value "$1" 2>/dev/null || true
    fi
}

if ! command -v az >/dev/null 2>&1; then
    echo "The Azure CLI (az) is required: https://learn.microsoft.com/cli/azure/install-azure-cli" >&2
    exit 2
fi
[ -n "$principal_id" ] || principal_id="$(azd_value PHOTO_SYNC_IDENTITY_PRINCIPAL_ID)"
[ -n "$mysite_url" ] || mysite_url="$(azd_value SHAREPOINT_MYSITE_URL)"
[ -n "$geos" ] || geos="$(azd_value SHAREPOINT_GEOS)"
if [ -z "$principal_id" ]; then
    echo "No service principal: pass --principal-id (the identity's principal/object id)" >&2
    exit 2
fi
if $full_control && $skip_site_grant; then
    echo "--full-control needs no site grant; --skip-site-grant is for Sites.Selected" >&2
    exit 2
fi
if $profile_writes && $revoke_profile_writes; then
    echo "--profile-writes and --revoke-profile-writes contradict each other" >&2
    exit 2
fi
if $profile_writes && $skip_site_grant; then
    echo "--profile-writes grants Sites.FullControl.All, which needs no site grant; drop --skip-site-grant" >&2
    exit 2
fi
# Sites.FullControl.All (from either option) covers the photos library: no Sites.Selected grant.
$profile_writes && full_control=true
if ! $full_control && ! $skip_site_grant && [ -z "$mysite_url" ]; then
    echo "No My Site URL: pass --mysite-url https://contoso-my.sharepoint.com (or use --full-control)" >&2
    exit 2
fi
mysite_host="${mysite_url#https://}"
mysite_host="${mysite_host%%/*}"
# Every geo's My Site host (Multi-Geo: each geo has its own, sp-dev-docs multigeo-discovery.md)
mysite_hosts="$mysite_host"
IFS=',' read -r -a geo_entries <<< "$geos"
for entry in "${geo_entries[@]}"; do
    url="${entry#*=}"
    url="${url%%|*}"
    url="$(printf '%s' "$url" | tr -d '[:space:]')"
    [ -n "$url" ] || continue
    if [ "$url" = "$entry" ] || [ "${url#https://}" = "$url" ]; then
        echo "--geos: '$entry' is not CODE=https://<tenant><geo>-my.sharepoint.com" >&2
        exit 2
    fi
    host="${url#https://}"
    host="${host%%/*}"
    case " $mysite_hosts " in *" $host "*) ;; *) mysite_hosts="$mysite_hosts $host" ;; esac
done

graph() {
    # graph METHOD PATH [extra az rest arguments...]
    local method="$1" path="$2"
    shift 2
    az rest --only-show-errors --method "$method" --url "$GRAPH_URL/v1.0$path" "$@"
}

say() { printf '%s\n' "$*"; }

if ! sp_name="$(graph get "/servicePrincipals/$principal_id?\$select=displayName" --query displayName -o tsv)" \
    || ! sp_app_id="$(graph get "/servicePrincipals/$principal_id?\$select=appId" --query appId -o tsv)"; then
    echo "error: cannot read the service principal $principal_id (az login to its tenant, as an admin?)" >&2
    exit 1
fi
say "Identity: $sp_name (service principal $principal_id, client id $sp_app_id)"

granted=0
skipped=0
revoked=0

grant_app_role() {
    # grant_app_role RESOURCE_APP_ID ROLE_VALUE LABEL
    local resource_app_id="$1" role="$2" label="$3" resource_id role_id existing
    resource_id="$(graph get "/servicePrincipals(appId='$resource_app_id')?\$select=id" --query id -o tsv)"
    role_id="$(graph get "/servicePrincipals(appId='$resource_app_id')?\$select=appRoles" \
        --query "appRoles[?value=='$role' && contains(allowedMemberTypes, 'Application')].id | [0]" -o tsv)"
    if [ -z "$role_id" ] || [ "$role_id" = "None" ]; then
        echo "error: $label has no application role $role" >&2
        exit 1
    fi
    existing="$(graph get "/servicePrincipals/$principal_id/appRoleAssignments" \
        --query "length(value[?resourceId=='$resource_id' && appRoleId=='$role_id'])" -o tsv)"
    if [ "$existing" != "0" ]; then
        say "  = $label $role: already granted"
        skipped=$((skipped + 1))
        return
    fi
    if $dry_run; then
        say "  + $label $role: would grant (app role $role_id)"
        return
    fi
    graph post "/servicePrincipals/$principal_id/appRoleAssignments" \
        --headers "Content-Type=application/json" \
        --body "{\"principalId\": \"$principal_id\", \"resourceId\": \"$resource_id\", \"appRoleId\": \"$role_id\"}" \
        --output none
    say "  + $label $role: granted"
    granted=$((granted + 1))
}

revoke_app_role() {
    # revoke_app_role RESOURCE_APP_ID ROLE_VALUE LABEL: remove the assignment if there is one
    local resource_app_id="$1" role="$2" label="$3" resource_id role_id assignment_id
    resource_id="$(graph get "/servicePrincipals(appId='$resource_app_id')?\$select=id" --query id -o tsv)"
    role_id="$(graph get "/servicePrincipals(appId='$resource_app_id')?\$select=appRoles" \
        --query "appRoles[?value=='$role' && contains(allowedMemberTypes, 'Application')].id | [0]" -o tsv)"
    assignment_id="$(graph get "/servicePrincipals/$principal_id/appRoleAssignments" \
        --query "value[?resourceId=='$resource_id' && appRoleId=='$role_id'].id | [0]" -o tsv)"
    if [ -z "$assignment_id" ] || [ "$assignment_id" = "None" ]; then
        say "  = $label $role: not granted"
        skipped=$((skipped + 1))
        return
    fi
    if $dry_run; then
        say "  - $label $role: would revoke (assignment $assignment_id)"
        return
    fi
    graph delete "/servicePrincipals/$principal_id/appRoleAssignments/$assignment_id" --output none
    say "  - $label $role: revoked"
    revoked=$((revoked + 1))
}

manual_site_grant() {
    # The commands a SharePoint administrator runs instead; exit code 3 (docs/permissions.md).
    local why="$1"
    cat >&2 <<MANUAL

$why
Reading and creating site permissions (GET/POST /sites/{id}/permissions) both need
Sites.FullControl.All on the caller's token, which the Azure CLI's token may not carry. Ask a
SharePoint administrator to give the app 'write' on https://$mysite_host with one of:

  PnP PowerShell:
    Connect-PnPOnline -Url https://$mysite_host -Interactive -ClientId <your PnP app id>
    Grant-PnPAzureADAppSitePermission -AppId $sp_app_id -DisplayName "$sp_name" -Site https://$mysite_host -Permissions Write

  CLI for Microsoft 365:
    m365 spo site apppermission add --siteUrl https://$mysite_host --appId $sp_app_id --appDisplayName "$sp_name" --permission write

Then run this script again with --skip-site-grant (the app roles above are in place), or use
--full-control instead of Sites.Selected.
MANUAL
    exit 3
}

grant_site_write() {
    # Sites.Selected: give the app 'write' on the My Site host's root site (User Photos lives there).
    local site_id current perm_id roles body
    if ! site_id="$(graph get "/sites/$mysite_host?\$select=id" --query id -o tsv)" || [ -z "$site_id" ]; then
        manual_site_grant "Cannot look up the site https://$mysite_host (the Azure CLI's token needs Sites.Read.All for that)."
    fi
    if ! current="$(graph get "/sites/$site_id/permissions" \
        --query "value[?grantedToIdentitiesV2[?application.id=='$sp_app_id'] || grantedToIdentities[?application.id=='$sp_app_id']] | [0].[id, join(',', roles)]" \
        -o tsv)"; then
        # Not POSTing blindly: creating needs the same permission the read just lacked, and a grant
        # made by hand may already be there.
        manual_site_grant "Cannot verify the site grant on https://$mysite_host: reading site permissions was refused."
    fi
    perm_id="$(printf '%s' "$current" | cut -f1)"
    roles="$(printf '%s' "$current" | cut -s -f2)"
    case ",$roles," in
        *,write,*|*,manage,*|*,owner,*|*,fullcontrol,*)
            # write is what photo-sync needs; manage, owner and fullcontrol include it: never lower them.
            say "  = site https://$mysite_host: already granted ($roles)"
            skipped=$((skipped + 1))
            return ;;
    esac
    if $dry_run; then
        say "  + site https://$mysite_host: would grant 'write' to $sp_app_id${roles:+ (has: $roles)}"
        return
    fi
    if [ -n "$perm_id" ] && [ "$perm_id" != "None" ]; then
        body='{"roles": ["write"]}'
        if graph patch "/sites/$site_id/permissions/$perm_id" --headers "Content-Type=application/json" \
            --body "$body" --output none; then
            say "  + site https://$mysite_host: raised from '$roles' to 'write'"
            granted=$((granted + 1))
            return
        fi
    else
        body="{\"roles\": [\"write\"], \"grantedToIdentities\": [{\"application\": {\"id\": \"$sp_app_id\", \"displayName\": \"$sp_name\"}}]}"
        if graph post "/sites/$site_id/permissions" --headers "Content-Type=application/json" \
            --body "$body" --output none; then
            say "  + site https://$mysite_host: granted 'write'"
            granted=$((granted + 1))
            return
        fi
    fi
    manual_site_grant "The site grant on https://$mysite_host failed."
}

say "Microsoft Graph:"
grant_app_role "$GRAPH_APP_ID" "User.Read.All" "Microsoft Graph"
grant_app_role "$GRAPH_APP_ID" "ProfilePhoto.Read.All" "Microsoft Graph"
if $groups; then
    grant_app_role "$GRAPH_APP_ID" "GroupMember.Read.All" "Microsoft Graph"
fi
say "SharePoint:"
grant_app_role "$SHAREPOINT_APP_ID" "User.Read.All" "SharePoint"
if $profile_writes; then
    grant_app_role "$SHAREPOINT_APP_ID" "User.ReadWrite.All" "SharePoint"
    grant_app_role "$SHAREPOINT_APP_ID" "TermStore.ReadWrite.All" "SharePoint"
fi
if $revoke_profile_writes; then
    revoke_app_role "$SHAREPOINT_APP_ID" "User.ReadWrite.All" "SharePoint"
    revoke_app_role "$SHAREPOINT_APP_ID" "TermStore.ReadWrite.All" "SharePoint"
    if ! $full_control; then
        revoke_app_role "$SHAREPOINT_APP_ID" "Sites.FullControl.All" "SharePoint"
    fi
fi
if $full_control; then
    grant_app_role "$SHAREPOINT_APP_ID" "Sites.FullControl.All" "SharePoint"
else
    grant_app_role "$SHAREPOINT_APP_ID" "Sites.Selected" "SharePoint"
    if $skip_site_grant; then
        say "  - site grant: skipped (--skip-site-grant: made by a SharePoint administrator)"
    else
        for mysite_host in $mysite_hosts; do
            grant_site_write
        done
    fi
fi

if $dry_run; then
    say "Dry run: nothing changed ($skipped already in place)."
else
    say "Done: $granted granted, $revoked revoked, $skipped already as asked."
    if [ "$granted" -gt 0 ]; then
        say "New application permissions reach the identity's tokens within minutes to hours (tokens"
        say "are cached up to 24 h); restart the Function App after a while if calls still answer 403."
    fi
    if $profile_writes; then
        say "photo-sync notices the grant by itself: its next profile-write probe (at most one a"
        say "day, PROFILE_WRITE_PROBE_HOURS) flips the tenant to 'allowed' and the next reconciliation"
        say "links everyone waiting. \`python -m shared preflight --write-test\` tests it now."
    fi
fi

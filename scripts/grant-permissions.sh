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
Usage: $(basename "$0") [--principal-id ID] [--mysite-url URL] [--full-control] [--groups] [--dry-run]

Grants the managed identity's service principal:
  Microsoft Graph  User.Read.All          list and read users; change notifications on users
  Microsoft Graph  ProfilePhoto.Read.All  read photos (least privileged for photos)
  SharePoint       User.Read.All          read user profiles (PeopleManager/GetPropertiesFor)
  SharePoint       Sites.Selected         + a 'write' grant on the My Site host site (default), or
  SharePoint       Sites.FullControl.All  with --full-control (no per-site grant needed)
  Microsoft Graph  GroupMember.Read.All   only with --groups (SYNC_INCLUDE_GROUPS/SYNC_EXCLUDE_GROUPS)

Options:
  --principal-id ID  object id of the identity's service principal
                     (default: azd env value PHOTO_SYNC_IDENTITY_PRINCIPAL_ID)
  --mysite-url URL   My Site host, e.g. https://contoso-my.sharepoint.com
                     (default: azd env value SHAREPOINT_MYSITE_URL)
  --full-control     grant SharePoint Sites.FullControl.All instead of Sites.Selected + site grant
  --groups           also grant Microsoft Graph GroupMember.Read.All
  --dry-run          show what would be granted, change nothing
  -h, --help         this text

Needs the Azure CLI signed in (az login) to the tenant, as an admin allowed to grant application
permissions. The Sites.Selected site grant also needs a SharePoint administrator; when the CLI's
token may not create it, the script prints the PnP PowerShell command that does.
USAGE
}

principal_id=""
mysite_url=""
full_control=false
groups=false
dry_run=false
while [ $# -gt 0 ]; do
    case "$1" in
        --principal-id) principal_id="${2:?--principal-id needs a value}"; shift 2 ;;
        --mysite-url) mysite_url="${2:?--mysite-url needs a value}"; shift 2 ;;
        --full-control) full_control=true; shift ;;
        --groups) groups=true; shift ;;
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
if [ -z "$principal_id" ]; then
    echo "No service principal: pass --principal-id (the identity's principal/object id)" >&2
    exit 2
fi
if ! $full_control && [ -z "$mysite_url" ]; then
    echo "No My Site URL: pass --mysite-url https://contoso-my.sharepoint.com (or use --full-control)" >&2
    exit 2
fi
mysite_host="${mysite_url#https://}"
mysite_host="${mysite_host%%/*}"

graph() {
    # graph METHOD PATH [extra az rest arguments...]
    local method="$1" path="$2"
    shift 2
    az rest --only-show-errors --method "$method" --url "$GRAPH_URL/v1.0$path" "$@"
}

say() { printf '%s\n' "$*"; }

sp_name="$(graph get "/servicePrincipals/$principal_id?\$select=displayName" --query displayName -o tsv)"
sp_app_id="$(graph get "/servicePrincipals/$principal_id?\$select=appId" --query appId -o tsv)"
say "Identity: $sp_name (service principal $principal_id, client id $sp_app_id)"

granted=0
skipped=0

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

grant_site_write() {
    # Sites.Selected: give the app 'write' on the My Site host's root site (User Photos lives there).
    local site_id current perm_id body
    site_id="$(graph get "/sites/$mysite_host?\$select=id" --query id -o tsv)"
    current="$(graph get "/sites/$site_id/permissions" \
        --query "value[?grantedToIdentitiesV2[?application.id=='$sp_app_id'] || grantedToIdentities[?application.id=='$sp_app_id']] | [0].[id, join(',', roles)]" \
        -o tsv || true)"
    perm_id="$(printf '%s' "$current" | cut -f1)"
    case "$(printf '%s' "$current" | cut -f2)" in
        *write*|*owner*|*fullcontrol*)
            say "  = site https://$mysite_host: already granted ($(printf '%s' "$current" | cut -f2))"
            skipped=$((skipped + 1))
            return ;;
    esac
    if $dry_run; then
        say "  + site https://$mysite_host: would grant 'write' to $sp_app_id"
        return
    fi
    if [ -n "$perm_id" ] && [ "$perm_id" != "None" ]; then
        body='{"roles": ["write"]}'
        if graph patch "/sites/$site_id/permissions/$perm_id" --headers "Content-Type=application/json" \
            --body "$body" --output none; then
            say "  + site https://$mysite_host: raised to 'write'"
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
    cat >&2 <<MANUAL

The site grant failed: creating site permissions needs Sites.FullControl.All for the caller, which
the Azure CLI's token may not carry. Ask a SharePoint administrator to run (PnP PowerShell):

  Connect-PnPOnline -Url https://$mysite_host -Interactive -ClientId <your PnP app id>
  Grant-PnPAzureADAppSitePermission -AppId $sp_app_id -DisplayName "$sp_name" -Site https://$mysite_host -Permissions Write

then run this script again to check, or use --full-control instead of Sites.Selected.
MANUAL
    exit 3
}

say "Microsoft Graph:"
grant_app_role "$GRAPH_APP_ID" "User.Read.All" "Microsoft Graph"
grant_app_role "$GRAPH_APP_ID" "ProfilePhoto.Read.All" "Microsoft Graph"
if $groups; then
    grant_app_role "$GRAPH_APP_ID" "GroupMember.Read.All" "Microsoft Graph"
fi
say "SharePoint:"
grant_app_role "$SHAREPOINT_APP_ID" "User.Read.All" "SharePoint"
if $full_control; then
    grant_app_role "$SHAREPOINT_APP_ID" "Sites.FullControl.All" "SharePoint"
else
    grant_app_role "$SHAREPOINT_APP_ID" "Sites.Selected" "SharePoint"
    grant_site_write
fi

if $dry_run; then
    say "Dry run: nothing changed ($skipped already in place)."
else
    say "Done: $granted granted, $skipped already in place."
    if [ "$granted" -gt 0 ]; then
        say "New application permissions reach the identity's tokens within minutes to hours (tokens"
        say "are cached up to 24 h); restart the Function App after a while if calls still answer 403."
    fi
fi

#!/bin/sh
# azd preprovision hook (azure.yaml): check the settings `azd up` needs and create the Graph
# clientState secret once per azd environment. azd passes the environment's values as variables.
set -eu

if [ -z "${SHAREPOINT_MYSITE_URL:-}" ]; then
    echo "SHAREPOINT_MYSITE_URL is not set. Run, for example:" >&2
    echo "  azd env set SHAREPOINT_MYSITE_URL https://contoso-my.sharepoint.com" >&2
    exit 1
fi
case "$SHAREPOINT_MYSITE_URL" in
    https://*) ;;
    *) echo "SHAREPOINT_MYSITE_URL must start with https:// (got $SHAREPOINT_MYSITE_URL)" >&2; exit 1 ;;
esac

if [ -z "${GRAPH_CLIENT_STATE:-}" ]; then
    # 64 hex characters from the OS random source; Graph allows up to 128.
    secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    azd env set GRAPH_CLIENT_STATE "$secret"
    echo "Created GRAPH_CLIENT_STATE in the azd environment (kept for later provisions)."
else
    echo "GRAPH_CLIENT_STATE already set in the azd environment; keeping it."
fi

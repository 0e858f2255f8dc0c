// The Function App on the Flex Consumption plan, with every app setting photo-sync reads.
// tests/test_infra_settings.py parses `appSettings` below and checks it against shared/settings.py:
// keep one setting per line, `NAME: value`.
param name string
param location string = resourceGroup().location
param tags object = {}
param appServicePlanId string
param storageAccountName string
param deploymentStorageContainerName string
param applicationInsightsName string
param identityId string
param identityClientId string
param instanceMemoryMB int = 2048
param maximumInstanceCount int = 4
@description('Always-ready instances of the HTTP function group; 0: none.')
param httpAlwaysReady int = 1
param sharePointRuPerMinute int = 1250
param graphPhotoConcurrency int = 4
param verifySample int = 200
param profileWrites string = 'auto'
param profileWriteProbeHours int = 24
param organisation string = ''
param thumbnailNaming string = 'object-id'

param syncQueueName string
param stateTableName string
param graphBaseUrl string
param sharePointMySiteUrl string
param sharePointAdminUrl string = ''
param photosFolder string = ''
param sharepointGeos string = ''
@secure()
param graphClientState string
param reconcileIntervalMinutes int
param reconcileHotIntervalMinutes int
param reconcileHotPercent int
// Strings, not bool: the app reads true/false, yes/no, on/off, 1/0 (see main.bicep).
param includeGuests string = 'true'
param enabledOnly string = 'true'
param paused string = 'false'
param includeGroups string = ''
param excludeGroups string = ''

resource stg 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Hardening that applies to Flex Consumption. Not set, because Flex Consumption deprecates them
// (azure-docs articles/azure-functions/functions-app-settings.md, "Flex Consumption plan
// deprecations"): ftpsState ("FTPS not supported"), alwaysOn, use32BitWorkerProcess,
// functionAppScaleLimit, preWarmedInstanceCount, linuxFxVersion; tests/test_infra_templates.py keeps
// them out. Each Checkov finding skipped below has its reason on its line; docs/security.md lists them.
resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_78:FTP/FTPS does not exist on Flex Consumption (ftpsState is a deprecated property there); basic publishing credentials are off below
  //checkov:skip=CKV_AZURE_222:Microsoft Graph delivers change notifications from the internet to /api/notifications and /api/lifecycle
  //checkov:skip=CKV_AZURE_17:Graph does not present a client certificate with notifications; clientState authenticates them, function keys the rest
  //checkov:skip=CKV_AZURE_212:numberOfWorkers is an App Service plan setting; Flex Consumption scales per function and keeps an always-ready HTTP instance
  //checkov:skip=CKV_AZURE_213:App Service health check is not available on Flex Consumption; GET /api/health and the alert rules watch the app
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: appServicePlanId
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${stg.properties.primaryEndpoints.blob}${deploymentStorageContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        // Per-function scale groups: 'http' is every HTTP-triggered function
        // (azure-docs flex-consumption-plan.md "Per-function scaling"); REST type
        // FunctionsAlwaysReadyConfig {name, instanceCount}.
        alwaysReady: httpAlwaysReady > 0 ? [
          {
            name: 'http'
            instanceCount: httpAlwaysReady
          }
        ] : []
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// https://<default host name>: Flex Consumption host names may carry a regional suffix, so they
// are read from the site rather than built from its name.
var baseUrl = 'https://${functionApp.properties.defaultHostName}'

// Flex Consumption: no FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION or
// WEBSITE_RUN_FROM_PACKAGE here (functionAppConfig carries runtime and package).
var appSettings = {
  // Host storage and the app's queues/table, identity-based (the account refuses shared keys).
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: stg.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: stg.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: stg.properties.primaryEndpoints.table
  // Application Insights with Entra ID authentication (local auth is disabled on the component).
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // The Python worker exports the app's log records with the Azure Monitor OpenTelemetry distro, so
  // their `extra` fields become customDimensions, which the alert rules read (docs/operations.md;
  // learn.microsoft.com/azure/azure-functions/opentelemetry-howto, Python).
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  // photo-sync (shared/settings.py)
  PHOTO_SYNC_QUEUE: syncQueueName
  PHOTO_SYNC_STATE_TABLE: stateTableName
  GRAPH_BASE_URL: graphBaseUrl
  SHAREPOINT_MYSITE_URL: sharePointMySiteUrl
  SHAREPOINT_ADMIN_URL: sharePointAdminUrl
  SHAREPOINT_PHOTOS_FOLDER: photosFolder
  SHAREPOINT_GEOS: sharepointGeos
  SHAREPOINT_THUMBNAIL_NAMING: thumbnailNaming
  PHOTO_SYNC_ORGANISATION: organisation
  // Empty: S 48, M 72 and L at the size of the tenant's existing L thumbnails, learnt by the
  // sync (200 or 300 px; docs/settings.md). Set e.g. '48,72,300' to fix the sizes.
  THUMBNAIL_SIZES: ''
  MAX_PHOTO_BYTES: '10485760'
  MAX_PHOTO_PIXELS: '40000000'
  PHOTO_SYNC_CREDENTIAL: 'managed-identity'
  AZURE_CLIENT_ID: identityClientId
  AZURE_TENANT_ID: tenant().tenantId
  GRAPH_CLIENT_STATE: graphClientState
  NOTIFICATION_URL: '${baseUrl}/api/notifications'
  LIFECYCLE_NOTIFICATION_URL: '${baseUrl}/api/lifecycle'
  RECONCILE_INTERVAL: string(reconcileIntervalMinutes)
  RECONCILE_HOT_INTERVAL: string(reconcileHotIntervalMinutes)
  RECONCILE_HOT_PERCENT: string(reconcileHotPercent)
  SYNC_INCLUDE_GUESTS: includeGuests
  SYNC_ENABLED_ONLY: enabledOnly
  PHOTO_SYNC_PAUSED: paused
  // Scale-out within the SharePoint budget: each process paces at the budget / max instances.
  PHOTO_SYNC_MAX_INSTANCES: string(maximumInstanceCount)
  SHAREPOINT_RU_PER_MINUTE: string(sharePointRuPerMinute)
  GRAPH_PHOTO_CONCURRENCY: string(graphPhotoConcurrency)
  VERIFY_SAMPLE: string(verifySample)
  PROFILE_WRITES: profileWrites
  PROFILE_WRITE_PROBE_HOURS: string(profileWriteProbeHours)
  SYNC_INCLUDE_GROUPS: includeGroups
  SYNC_EXCLUDE_GROUPS: excludeGroups
  // UPNs are redacted from log records; an operator sets 'true' in the portal to trace one user
  // (docs/security.md). A redeploy puts it back to 'false'.
  PHOTO_SYNC_LOG_UPNS: 'false'
}

// Checkov reads every Microsoft.Web/sites/config as the `web` config: these checks look for
// properties that resource never has (they belong to siteConfig, logs or authsettings).
resource configAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  //checkov:skip=CKV_AZURE_13:an appsettings resource, not authsettings; the webhooks must stay anonymous for Graph and the other routes need a function key
  //checkov:skip=CKV_AZURE_63:an appsettings resource; HTTP logs are an App Service feature, the app logs to Application Insights
  //checkov:skip=CKV_AZURE_65:an appsettings resource; detailed error pages are an App Service feature, off by default
  //checkov:skip=CKV_AZURE_66:an appsettings resource; failed request tracing is an App Service feature, the app logs to Application Insights
  //checkov:skip=CKV_AZURE_80:an appsettings resource; the app is Python, no .NET Framework version applies
  //checkov:skip=CKV_AZURE_88:an appsettings resource; Flex Consumption deploys from a blob container, not Azure Files
  //checkov:skip=CKV_AZURE_222:an appsettings resource; the site's public access is explained on functionApp
  parent: functionApp
  name: 'appsettings'
  properties: appSettings
}

// Basic (user name and password) publishing credentials off for FTP and the SCM site: azd and the
// Azure CLI deploy with Microsoft Entra ID tokens (learn.microsoft.com/azure/app-service/
// configure-basic-auth-disable).
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output uri string = baseUrl

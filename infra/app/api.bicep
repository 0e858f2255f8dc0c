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
@secure()
param graphClientState string
param reconcileSchedule string
// Strings, not bool: the app reads true/false, yes/no, on/off, 1/0 (see main.bicep).
param includeGuests string = 'true'
param enabledOnly string = 'true'
param includeGroups string = ''
param excludeGroups string = ''

resource stg 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
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
  SHAREPOINT_THUMBNAIL_NAMING: thumbnailNaming
  PHOTO_SYNC_ORGANISATION: organisation
  THUMBNAIL_SIZES: '48,72,200'
  MAX_PHOTO_BYTES: '10485760'
  MAX_PHOTO_PIXELS: '40000000'
  PHOTO_SYNC_CREDENTIAL: 'managed-identity'
  AZURE_CLIENT_ID: identityClientId
  AZURE_TENANT_ID: tenant().tenantId
  GRAPH_CLIENT_STATE: graphClientState
  NOTIFICATION_URL: '${baseUrl}/api/notifications'
  LIFECYCLE_NOTIFICATION_URL: '${baseUrl}/api/lifecycle'
  RECONCILE_SCHEDULE: reconcileSchedule
  SYNC_INCLUDE_GUESTS: includeGuests
  SYNC_ENABLED_ONLY: enabledOnly
  // Scale-out within the SharePoint budget: each process paces at the budget / max instances.
  PHOTO_SYNC_MAX_INSTANCES: string(maximumInstanceCount)
  SHAREPOINT_RU_PER_MINUTE: string(sharePointRuPerMinute)
  GRAPH_PHOTO_CONCURRENCY: string(graphPhotoConcurrency)
  VERIFY_SAMPLE: string(verifySample)
  PROFILE_WRITES: profileWrites
  PROFILE_WRITE_PROBE_HOURS: string(profileWriteProbeHours)
  SYNC_INCLUDE_GROUPS: includeGroups
  SYNC_EXCLUDE_GROUPS: excludeGroups
}

resource configAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: appSettings
}

output name string = functionApp.name
output uri string = baseUrl

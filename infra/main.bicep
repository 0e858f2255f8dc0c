// photo-sync: Function App (Flex Consumption, Python 3.11) with identity-based storage, the queues
// and table the code uses, Application Insights, and a user-assigned managed identity.
// Shaped after Azure-Samples/functions-quickstart-python-http-azd. Deploy with `azd up`
// (docs/deploy.md); Microsoft Graph and SharePoint permissions are granted afterwards by
// scripts/grant-permissions.sh because Bicep cannot grant Entra ID application roles.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used for the resource group name and a unique token in every resource name.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@minLength(1)
@description('My Site host, e.g. https://contoso-my.sharepoint.com (app setting SHAREPOINT_MYSITE_URL).')
param sharePointMySiteUrl string

@description('SharePoint admin host, e.g. https://contoso-admin.sharepoint.com. Empty: the app derives it from the My Site host (-my. -> -admin.).')
param sharePointAdminUrl string = ''

@description('NCRONTAB schedule of the reconciliation timer (app setting RECONCILE_SCHEDULE).')
param reconcileSchedule string = '0 0 */6 * * *'

@description('Sync guest accounts too (app setting SYNC_INCLUDE_GUESTS).')
param includeGuests bool = true

@description('Sync enabled accounts only (app setting SYNC_ENABLED_ONLY).')
param enabledOnly bool = true

@description('Comma-separated group object ids: only their transitive user members are synced (SYNC_INCLUDE_GROUPS). Needs GroupMember.Read.All.')
param includeGroups string = ''

@description('Comma-separated group object ids whose members are never synced (SYNC_EXCLUDE_GROUPS). Needs GroupMember.Read.All.')
param excludeGroups string = ''

@description('Microsoft Graph endpoint (GRAPH_BASE_URL); change only for national clouds.')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('Override of the photos folder on the My Site host, e.g. User Photos/Profilbilder (SHAREPOINT_PHOTOS_FOLDER). Empty: learned from linked profiles or the User Photos library.')
param photosFolder string = ''

@description('File names for profiles still on a placeholder (SHAREPOINT_THUMBNAIL_NAMING): object-id, as SharePoint names them now, or upn.')
@allowed(['object-id', 'upn'])
param thumbnailNaming string = 'object-id'

@description('CompanyName in the User-Agent NONISV|<organisation>|photo-sync/<version> (PHOTO_SYNC_ORGANISATION). Empty: the tenant name of the My Site host.')
param organisation string = ''

// Secret Graph echoes in every change notification (GRAPH_CLIENT_STATE). azd passes the value the
// preprovision hook stored in the azd environment, so it is the same on every provision. The
// newGuid() default only applies when the template is deployed without a value (plain
// `az deployment sub create`): pass the previous value there too, or notifications stop being
// accepted until the subscription is recreated (docs/deploy.md).
@secure()
@minLength(16)
@maxLength(128)
@description('Graph clientState secret (16-128 characters).')
param graphClientState string = newGuid()

@description('Object id of the deploying user (azd sets AZURE_PRINCIPAL_ID). Gets queue and table data access so the CLI and az storage commands work against this account. Empty: none.')
param principalId string = ''

@description('Most instances the Flex Consumption app may scale out to. Graph and SharePoint throttle per app, so more instances do not mean more throughput.')
param maximumInstanceCount int = 40

@allowed([
  2048
  4096
])
@description('Instance memory size of the Flex Consumption app.')
param instanceMemoryMB int = 2048

param resourceGroupName string = ''
param functionAppName string = ''
param storageAccountName string = ''

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var appName = !empty(functionAppName) ? functionAppName : 'func-photosync-${resourceToken}'
var deploymentStorageContainerName = 'app-package-${take(appName, 32)}-${take(toLower(uniqueString(appName, resourceToken)), 7)}'

// The names the code expects (shared/settings.py defaults); the control queue and the poison queues
// derive from the sync queue's name exactly as the Functions host and shared/handlers.py derive them.
var syncQueueName = 'photo-sync'
var stateTableName = 'photosyncstate'
var queueNames = [
  syncQueueName
  '${syncQueueName}-poison'
  '${syncQueueName}-control'
  '${syncQueueName}-control-poison'
]

resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

// The identity the app uses for everything: host storage, queues, table, App Insights, and (after
// scripts/grant-permissions.sh) Microsoft Graph and SharePoint.
module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-photosync-${resourceToken}'
    location: location
    tags: tags
  }
}

module appServicePlan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'appserviceplan'
  scope: rg
  params: {
    name: 'plan-${resourceToken}'
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
    location: location
    tags: tags
  }
}

module storage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : 'st${resourceToken}'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // identity-based connections only
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: [{ name: deploymentStorageContainerName }]
    }
    minimumTlsVersion: 'TLS1_2'
    location: location
    tags: tags
  }
}

// Queues and the state table, created up front (the code also creates them on first use).
module storageQueues './app/storage-queues.bicep' = {
  name: 'storageQueues'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    queueNames: queueNames
    tableNames: [stateTableName]
  }
}

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: 'loganalytics'
  scope: rg
  params: {
    name: 'log-${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
  }
}

module monitoring 'br/public:avm/res/insights/component:0.6.0' = {
  name: 'appinsights'
  scope: rg
  params: {
    name: 'appi-${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true // telemetry is sent with the managed identity (Monitoring Metrics Publisher)
  }
}

module rbac './app/rbac.bicep' = {
  name: 'rbacAssignments'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.name
    managedIdentityPrincipalId: identity.outputs.principalId
    userIdentityPrincipalId: principalId
  }
}

module api './app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: appName
    location: location
    tags: union(tags, { 'azd-service-name': 'api' })
    appServicePlanId: appServicePlan.outputs.resourceId
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: deploymentStorageContainerName
    applicationInsightsName: monitoring.outputs.name
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    syncQueueName: syncQueueName
    stateTableName: stateTableName
    graphBaseUrl: graphBaseUrl
    sharePointMySiteUrl: sharePointMySiteUrl
    sharePointAdminUrl: sharePointAdminUrl
    photosFolder: photosFolder
    thumbnailNaming: thumbnailNaming
    organisation: organisation
    graphClientState: graphClientState
    reconcileSchedule: reconcileSchedule
    includeGuests: includeGuests
    enabledOnly: enabledOnly
    includeGroups: includeGroups
    excludeGroups: excludeGroups
  }
  dependsOn: [
    storageQueues
    rbac
  ]
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output PHOTO_SYNC_IDENTITY_NAME string = identity.outputs.name
output PHOTO_SYNC_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output PHOTO_SYNC_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output NOTIFICATION_URL string = '${api.outputs.uri}/api/notifications'

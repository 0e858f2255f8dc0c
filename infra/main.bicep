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

// Regions that offer the Flex Consumption plan, as listed by Microsoft's own azd quickstart
// (Azure-Samples/functions-quickstart-python-http-azd infra/main.bicep, Nov 2025; its canary region
// eastus2euap left out). The list grows: check the current one with
// `az functionapp list-flexconsumption-locations --query "sort_by([], &name)[].name" -o tsv`
// and add new regions here (docs/deploy.md, "Regions").
@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
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

// Reconciliation (docs/settings.md): the timer ticks every minute and starts a pass when this many
// minutes have passed since the previous pass started. It replaces RECONCILE_SCHEDULE (deprecated:
// the app still reads it for one release when RECONCILE_INTERVAL is not set).
@minValue(0)
@maxValue(10080)
@description('Minutes between reconciliation passes (app setting RECONCILE_INTERVAL); 0 turns the timer\'s passes off. Every photo change shows within this plus one pass.')
param reconcileIntervalMinutes int = 15

@minValue(0)
@maxValue(10080)
@description('Minutes between checks of the hot users (new in 14 days, or photo changed in 30) between passes (app setting RECONCILE_HOT_INTERVAL); 0: off.')
param reconcileHotIntervalMinutes int = 2

@minValue(0)
@maxValue(100)
@description('The hot set\'s bound, in percent of the users in scope, most recent first (app setting RECONCILE_HOT_PERCENT).')
param reconcileHotPercent int = 5

// Booleans are strings on purpose: azd converts a `bool` parameter's value with Go's
// strconv.ParseBool (Azure/azure-dev cli/azd/pkg/infra/provisioning/bicep/bicep_provider.go,
// armParameterFileValue), which rejects yes/no/on/off and then drops the value, so the template
// default (true) would win over `azd env set SYNC_INCLUDE_GUESTS no`. As strings they reach the app
// setting unchanged, and the app reads them (shared/settings.py _Reader.flag). The allowed words are
// exactly the ones the app accepts (tests/test_infra_settings.py checks that).
@allowed([
  'true'
  'false'
  'yes'
  'no'
  'on'
  'off'
  '1'
  '0'
])
@description('Sync guest accounts too (app setting SYNC_INCLUDE_GUESTS): true/false, yes/no, on/off, 1/0.')
param includeGuests string = 'true'

// A first deployment can start paused (README, "Deploy to a real tenant"): the app is there, with its
// identity and admin endpoint, but writes nothing until this is false again (`azd env set
// PHOTO_SYNC_PAUSED false`, then `azd provision`).
@allowed([
  'true'
  'false'
  'yes'
  'no'
  'on'
  'off'
  '1'
  '0'
])
@description('Deployed but paused (app setting PHOTO_SYNC_PAUSED): no subscription, nothing queued or written.')
param paused string = 'false'

@allowed([
  'true'
  'false'
  'yes'
  'no'
  'on'
  'off'
  '1'
  '0'
])
@description('Sync enabled accounts only (app setting SYNC_ENABLED_ONLY): true/false, yes/no, on/off, 1/0.')
param enabledOnly string = 'true'

@description('Comma-separated group object ids: only their transitive user members are synced (SYNC_INCLUDE_GROUPS). Needs GroupMember.Read.All.')
param includeGroups string = ''

@description('Comma-separated group object ids whose members are never synced (SYNC_EXCLUDE_GROUPS). Needs GroupMember.Read.All.')
param excludeGroups string = ''

@description('Microsoft Graph endpoint (GRAPH_BASE_URL); change only for national clouds.')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('Multi-Geo tenants: the satellite geos as CODE=MySiteUrl[|AdminUrl], comma-separated, e.g. EUR=https://contosoeur-my.sharepoint.com,APC=https://contosoapc-my.sharepoint.com (SHAREPOINT_GEOS). Empty: discovered with Graph Sites.Read.All, else single-geo.')
param sharepointGeos string = ''

@description('Override of the photos folder on the My Site host, e.g. User Photos/Profilbilder (SHAREPOINT_PHOTOS_FOLDER). Empty: learned from linked profiles or the User Photos library.')
param photosFolder string = ''

@description('CompanyName in the SharePoint traffic decoration User-Agent NONISV|<organisation>|photo-sync/<version> (PHOTO_SYNC_ORGANISATION). Empty: the tenant name of the My Site host.')
param organisation string = ''

@allowed([
  'object-id'
  'upn'
])
@description('File stem of the thumbnails for profiles still on a placeholder (SHAREPOINT_THUMBNAIL_NAMING).')
param thumbnailNaming string = 'object-id'

// Secret Graph echoes in every change notification (GRAPH_CLIENT_STATE). azd passes the value the
// preprovision hook stored in the azd environment, so it is the same on every provision. The
// newGuid() default only applies when the template is deployed without a value (plain
// `az deployment sub create`): pass the previous value there too, or notifications stop being
// accepted until the subscription is recreated (docs/deploy.md).
@secure()
@minLength(16)
@maxLength(128)
@description('Graph clientState secret (16-128 characters).')
//checkov:skip=CKV_AZURE_131:the default is newGuid(), a new random value per deployment, not a literal; azd passes the stored one
param graphClientState string = newGuid()

@description('Object id of the deploying principal (azd sets AZURE_PRINCIPAL_ID). Gets queue and table data access so the CLI and az storage commands work against this account. Empty: none.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
])
@description('Type of principalId (azd sets AZURE_PRINCIPAL_TYPE: User after `azd auth login`, ServicePrincipal in CI).')
param principalType string = 'User'

// Scale-out within SharePoint's budget (docs/deploy.md, "Scale and the SharePoint budget").
// maximumInstanceCount is per app (Microsoft.Web/sites functionAppConfig.scaleAndConcurrency:
// "The maximum number of instances for the function app"): 1 to 1,000, default 100, below 40 only
// "for advanced scenarios" of HTTP apps (azure-docs articles/azure-functions/migration/
// migrate-plan-consumption-to-flex.md, 2026; older pages said the lowest value was 40). Every worker
// process paces its SharePoint calls at sharePointRuPerMinute / maximumInstanceCount, so the whole
// app stays within the budget however far it scales.
@minValue(1)
@maxValue(1000)
@description('Most instances the Flex Consumption app may scale out to (also app setting PHOTO_SYNC_MAX_INSTANCES): each process paces itself at the SharePoint budget divided by this.')
param maximumInstanceCount int = 4

@minValue(100)
@maxValue(6250)
@description('The app\'s SharePoint resource-unit budget per minute in the tenant (SHAREPOINT_RU_PER_MINUTE): 1,250 / 2,500 / 3,750 / 5,000 / 6,250 by licence count.')
param sharePointRuPerMinute int = 1250

@minValue(1)
@maxValue(4)
@description('Graph photo requests in flight for the whole app (GRAPH_PHOTO_CONCURRENCY); Outlook allows 4 per app.')
param graphPhotoConcurrency int = 4

@minValue(0)
@maxValue(5000)
@description('Users the daily verify checks, a deterministic sample (VERIFY_SAMPLE). 0: no daily verify.')
param verifySample int = 200

@allowed([
  'auto'
  'off'
])
@description('Whether the app tries app-only profile writes (PROFILE_WRITES): auto learns the tenant\'s answer once; off never tries (docs/permissions.md).')
param profileWrites string = 'auto'

@minValue(1)
@maxValue(720)
@description('Hours between two profile-write probes while SharePoint refuses them (PROFILE_WRITE_PROBE_HOURS).')
param profileWriteProbeHours int = 24

// Graph validates the webhook within 10 s when the subscription is created; on Flex Consumption the
// HTTP functions scale in their own group ("http"), separately from the timer that creates the
// subscription, so a cold HTTP group may miss the handshake. One always-ready instance keeps it warm
// (azure-docs articles/azure-functions/flex-consumption-plan.md, "Per-function scaling" and
// "Always ready instances"). 0 saves its baseline cost; the app then relies on its retry.
@minValue(0)
@maxValue(20)
@description('Always-ready instances of the HTTP function group (webhooks, health, manual sync). 0: none.')
param httpAlwaysReady int = 1

@allowed([
  2048
  4096
])
@description('Instance memory size of the Flex Consumption app.')
param instanceMemoryMB int = 2048

// Alerts (docs/deploy.md, "Alerts").
@description('E-mail address for alert notifications (ALERT_EMAIL). Empty: the alert rules are created without an action group; they still fire in Azure Monitor > Alerts.')
param alertEmail string = ''

@minValue(0)
@maxValue(48)
@description('Alert when no reconciliation completed for this many hours (ALERT_RECONCILE_AFTER_HOURS). 0: twice reconcileIntervalMinutes, rounded up to whole hours, at least 2 (48 when passes are off).')
param reconcileAlertAfterHours int = 0

@minValue(1)
@description('Alert when more than this many syncs end `failed` within one hour (ALERT_FAILED_PER_HOUR).')
param failedAlertThreshold int = 20

// The account holds only queues, the state table and the deployment package, all rebuilt by a
// reconciliation or a deploy: locally redundant storage is enough. Zone- or geo-redundant copies are
// a choice (STORAGE_SKU). Switching an existing account between LRS and GRS is an update; to or from
// ZRS/GZRS is a conversion Azure Storage runs separately (docs/deploy.md, "Storage redundancy").
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Redundancy of the storage account (STORAGE_SKU): Standard_LRS, Standard_ZRS, Standard_GRS or Standard_GZRS.')
param storageSkuName string = 'Standard_LRS'

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
module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.6.0' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-photosync-${resourceToken}'
    location: location
    tags: tags
  }
}

// serverfarm 0.7.0 sets tier FlexConsumption itself for skuName FC1 (and omits the capacity);
// kind 'functionapp' as Microsoft's Flex Consumption samples declare the plan
// (Azure-Samples/azure-functions-flex-consumption-samples IaC/bicep); `reserved` (Linux) must be
// passed, since the module's default is `kind == 'linux'`.
module appServicePlan 'br/public:avm/res/web/serverfarm:0.7.0' = {
  name: 'appserviceplan'
  scope: rg
  params: {
    name: 'plan-${resourceToken}'
    skuName: 'FC1'
    kind: 'functionapp'
    reserved: true
    location: location
    tags: tags
  }
}

// Checkov does not open br/public modules: tests/test_infra_templates.py checks these values.
module storage 'br/public:avm/res/storage/storage-account:0.33.0' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : 'st${resourceToken}'
    skuName: storageSkuName
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // identity-based connections only
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    supportsHttpsTrafficOnly: true
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

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.16.1' = {
  name: 'loganalytics'
  scope: rg
  params: {
    name: 'log-${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
  }
}

module monitoring 'br/public:avm/res/insights/component:0.8.0' = {
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
    userIdentityPrincipalType: principalType
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
    httpAlwaysReady: httpAlwaysReady
    sharePointRuPerMinute: sharePointRuPerMinute
    graphPhotoConcurrency: graphPhotoConcurrency
    verifySample: verifySample
    profileWrites: profileWrites
    profileWriteProbeHours: profileWriteProbeHours
    syncQueueName: syncQueueName
    stateTableName: stateTableName
    graphBaseUrl: graphBaseUrl
    sharePointMySiteUrl: sharePointMySiteUrl
    sharePointAdminUrl: sharePointAdminUrl
    photosFolder: photosFolder
    sharepointGeos: sharepointGeos
    thumbnailNaming: thumbnailNaming
    organisation: organisation
    graphClientState: graphClientState
    reconcileIntervalMinutes: reconcileIntervalMinutes
    reconcileHotIntervalMinutes: reconcileHotIntervalMinutes
    reconcileHotPercent: reconcileHotPercent
    includeGuests: includeGuests
    enabledOnly: enabledOnly
    paused: paused
    includeGroups: includeGroups
    excludeGroups: excludeGroups
  }
  dependsOn: [
    storageQueues
    rbac
  ]
}

// Alert rules on the app's structured log records (infra/app/alerts.bicep, docs/deploy.md "Alerts").
// Twice the pass interval in whole hours (integer arithmetic on the numeric parameter), at least 2
// so that a long pass at a large tenant does not alert, at most 48 (the rules look back 2 days).
var derivedReconcileAlertHours = reconcileIntervalMinutes == 0 ? 48 : min(max((2 * reconcileIntervalMinutes + 59) / 60, 2), 48)

module alerts './app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    appInsightsName: monitoring.outputs.name
    location: location
    tags: tags
    resourceToken: resourceToken
    alertEmail: alertEmail
    reconcileAlertAfterHours: reconcileAlertAfterHours > 0 ? reconcileAlertAfterHours : derivedReconcileAlertHours
    failedAlertThreshold: failedAlertThreshold
    syncQueueName: syncQueueName
    functionAppName: api.outputs.name
  }
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

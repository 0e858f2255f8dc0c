// Azure RBAC for the app's managed identity (and, optionally, the deploying user).
// Microsoft Graph and SharePoint permissions are Entra ID app roles, not Azure RBAC: see
// scripts/grant-permissions.sh and docs/permissions.md.
param storageAccountName string
param appInsightsName string
param managedIdentityPrincipalId string
@description('Deploying user (AZURE_PRINCIPAL_ID); empty: no assignment.')
param userIdentityPrincipalId string = ''
// azd substitutes ${AZURE_PRINCIPAL_TYPE} with the signed-in principal's type: 'User' for
// `azd auth login`, 'ServicePrincipal' in CI (Azure/azure-dev cli/azd/pkg/environment/environment.go
// PrincipalTypeEnvVarName; pkg/infra/provisioning/current_principal_id_provider.go). A role
// assignment whose principalType does not match the principal is refused (UnmatchedPrincipalType).
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
@description('Type of userIdentityPrincipalId (AZURE_PRINCIPAL_TYPE).')
param userIdentityPrincipalType string = 'User'

// Built-in role definition ids (Azure built-in roles reference,
// learn.microsoft.com/azure/role-based-access-control/built-in-roles; tests/test_infra_roles.py
// checks each id against the role it names).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // host: deployment package, timer locks
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // sync and control queues
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // state table
var storageQueueDataReader = '19e7f393-937e-4f77-808e-94535e297925' // deploying user: queue depths
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb' // App Insights with Entra auth

var identityStorageRoles = [
  storageBlobDataOwner
  storageQueueDataContributor
  storageTableDataContributor
]
// The deploying user runs the runbooks of docs/operations.md ("Who runs what"; tests/test_runbooks.py
// checks each documented command against these roles). Commands that write as the app
// (subscription ensure, reconcile, counters rebuild, replay-poison) run inside the app with
// `--app NAME` and need no data role here, only the master key (the deployer's own role on the app).
// - Storage Table Data Contributor: `status` reads the state table; `link-profiles`, run as a
//   SharePoint administrator, records each profile it links there.
// - Storage Queue Data Reader: `status` and `replay-poison --dry-run` read queue depths.
// No blob access, no queue writes.
var userStorageRoles = [
  storageTableDataContributor
  storageQueueDataReader
]

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource identityStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in identityStorageRoles: {
    name: guid(storageAccount.id, managedIdentityPrincipalId, roleId)
    scope: storageAccount
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: managedIdentityPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource identityMonitoring 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, managedIdentityPrincipalId, monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource userStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in userStorageRoles: if (!empty(userIdentityPrincipalId)) {
    name: guid(storageAccount.id, userIdentityPrincipalId, roleId)
    scope: storageAccount
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: userIdentityPrincipalId
      principalType: userIdentityPrincipalType
    }
  }
]

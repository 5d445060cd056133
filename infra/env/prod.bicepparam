// Production: runbook handler, managed identity, zone-redundant storage, full Event Grid retry window.
// Switch `handler` to 'logicapp' once the Logic App workflow (separate issue) is delivered.
using '../main.bicep'

param namePrefix = 'amlrprd'
param handler = 'runbook'
param workspaceName = 'contoso-ml-prod'
param workspaceResourceGroupName = 'rg-contoso-ml-prod'
param adoOrganization = 'contoso'
param auth = 'managed-identity'
param storageSkuName = 'Standard_ZRS'
param maxDeliveryAttempts = 30
param eventTimeToLiveInMinutes = 1440
param tags = {
  environment: 'prod'
  workload: 'amlrelay'
}

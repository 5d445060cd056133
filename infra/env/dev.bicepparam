// Development: runbook handler, managed identity to Azure DevOps, locally redundant storage.
// Deploy with scripts/deploy --env dev (it adds the webhook, the wheel and the third-party wheels).
using '../main.bicep'

param namePrefix = 'amlrdev'
param handler = 'runbook'
param workspaceName = 'contoso-ml-dev'
param workspaceResourceGroupName = 'rg-contoso-ml-dev'
param adoOrganization = 'contoso'
param auth = 'managed-identity'
param storageSkuName = 'Standard_LRS'
param maxDeliveryAttempts = 10
param eventTimeToLiveInMinutes = 120
param tags = {
  environment: 'dev'
  workload: 'amlrelay'
}

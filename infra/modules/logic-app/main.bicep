// Logic App (Consumption) handler, used when handler = 'logicapp'. The workflow is generated from
// routes.json by `amlrelay logicapp build` (logicapps/workflow.json, or workflow-pat.json in PAT mode):
// a Request trigger that Event Grid posts to (the subscriptions get its callback URL, a secret, via
// listCallbackUrl in infra/main.bicep: never an output), routing, the exactly-once ledger claim in the
// ledger table, the ADO "Run Pipeline" call with the system identity, and a Response after the work (200,
// 500 so Event Grid retries, 400 for a body that is not events). Failed runs go to Log Analytics when a
// workspace is given (WorkflowRuntime logs).
metadata name = 'amlrelay logic app'
metadata description = 'Consumption Logic App generated from routes.json, with a system identity and diagnostic settings.'

@description('Required. Logic App (workflow) name.')
@minLength(1)
@maxLength(80)
param name string

@description('Optional. Azure region. Defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('Optional. Tags applied to every resource of this module.')
param tags object = {}

@description('Optional. How the workflow authenticates to Azure DevOps: its managed identity, or a PAT it reads from Key Vault with that identity.')
@allowed([
  'managed-identity'
  'pat'
])
param auth string = 'managed-identity'

@description('Required. Azure DevOps organization URL, e.g. https://dev.azure.com/contoso.')
param adoOrganizationUrl string

@description('Required. Workspace resource ids whose events may trigger runs.')
param allowedWorkspaceIds array

@description('Required. Table endpoint of the ledger\'s storage account, e.g. https://<account>.table.core.windows.net.')
param ledgerTableUrl string

@description('Optional. Ledger table name.')
param ledgerTableName string = 'amlrelayledger'

@description('Optional. Key Vault URI holding the PAT (PAT mode only).')
param keyVaultUri string = ''

@description('Optional. Name of the Key Vault secret holding the PAT (PAT mode only).')
param patSecretName string = 'ado-pat'

@description('Optional. Read each event\'s run or model version back from AML before acting on it (the handler needs Reader on the workspace).')
param verifyEvents bool = true

@description('Optional. ARM endpoint the workflow reads AML from (verification).')
param armUrl string = environment().resourceManager

@description('Optional. Resource id of the Log Analytics workspace for the workflow\'s run and action history (failed runs): the same parameter as the monitoring module\'s; empty: no diagnostic settings.')
param logAnalyticsWorkspaceId string = ''

var definitions = {
  'managed-identity': loadJsonContent('../../../logicapps/workflow.json')
  pat: loadJsonContent('../../../logicapps/workflow-pat.json')
  'managed-identity-unverified': loadJsonContent('../../../logicapps/workflow-unverified.json')
  'pat-unverified': loadJsonContent('../../../logicapps/workflow-pat-unverified.json')
}
var trimmedArmUrl = endsWith(armUrl, '/') ? substring(armUrl, 0, length(armUrl) - 1) : armUrl
var trimmedLedgerUrl = endsWith(ledgerTableUrl, '/') ? substring(ledgerTableUrl, 0, length(ledgerTableUrl) - 1) : ledgerTableUrl
var trimmedVaultUri = endsWith(keyVaultUri, '/') ? substring(keyVaultUri, 0, length(keyVaultUri) - 1) : keyVaultUri
var baseParameters = {
  adoOrganizationUrl: {
    value: endsWith(adoOrganizationUrl, '/') ? substring(adoOrganizationUrl, 0, length(adoOrganizationUrl) - 1) : adoOrganizationUrl
  }
  allowedWorkspaces: {
    // AMLRELAY_ALLOWED_WORKSPACES' format; the workflow normalises case, spaces and trailing slashes
    value: join(allowedWorkspaceIds, ',')
  }
  ledgerTableUrl: {
    value: trimmedLedgerUrl
  }
  ledgerTable: {
    value: ledgerTableName
  }
}
var verifyParameters = verifyEvents ? {
  armUrl: {
    value: trimmedArmUrl
  }
  armAudience: {
    value: '${trimmedArmUrl}/'
  }
} : {}
var patParameters = auth == 'pat' ? {
  keyVaultUrl: {
    value: trimmedVaultUri
  }
  patSecretName: {
    value: patSecretName
  }
} : {}

resource workflow 'Microsoft.Logic/workflows@2019-05-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    state: 'Enabled'
    definition: definitions[verifyEvents ? auth : '${auth}-unverified']
    parameters: union(baseParameters, verifyParameters, patParameters)
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'amlrelay-failed-runs'
  scope: workflow
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'WorkflowRuntime'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

@description('The workflow\'s resource id.')
output resourceId string = workflow.id

@description('The workflow\'s name.')
output name string = workflow.name

@description('Object id of the workflow\'s system-assigned identity: add it to Azure DevOps (scripts/grant-ado-access).')
output principalId string = workflow.identity.principalId

@description('The Request trigger\'s name (its callback URL is a secret and is never an output).')
output triggerName string = 'When_an_AML_event_is_received'

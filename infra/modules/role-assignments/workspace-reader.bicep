// Verification against AML (AMLRELAY_VERIFY, on by default): the handler reads back the run (Jobs_Get)
// or model version (ModelVersions_Get) an event names, and the workspace itself (to tell a missing run
// from a missing workspace). Those are control-plane reads, Microsoft.MachineLearningServices/workspaces/
// jobs/read, .../models/versions/read and workspaces/read, all matched by the built-in Reader role's
// `*/read` (it has no data actions, so no data-plane access); assigned on the workspace only, never on its
// resource group. Deploy this module in the workspace's resource group (one deployment per workspace).
metadata name = 'amlrelay workspace reader'
metadata description = 'Reader on one AML workspace for the handler, so it can verify events against AML.'

@description('Required. Name of the existing Azure Machine Learning workspace (in this module\'s resource group).')
param workspaceName string

@description('Required. Object id of the handler\'s managed identity (Automation account or Logic App).')
param handlerPrincipalId string

// Built-in role definition id (the same in every cloud).
var readerRoleId = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource handlerWorkspaceReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, handlerPrincipalId, readerRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
    principalId: handlerPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay handler (AMLRELAY_VERIFY): read back the runs and model versions events name.'
  }
}

@description('Resource id of the role assignment.')
output roleAssignmentId string = handlerWorkspaceReader.id

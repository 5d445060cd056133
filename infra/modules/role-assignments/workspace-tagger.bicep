// Tag-back (AMLRELAY_TAG_BACK, off by default): after the handler starts an ADO run it tags the AML run or
// model version the event named with that run, through the workspace's MLflow endpoint (runs/set-tag,
// model-versions/set-tag) with an ARM token. MLflow tracking needs Microsoft.MachineLearningServices/
// workspaces/experiments/* (and .../jobs/*), the model registry .../models/*/* (azure-docs
// how-to-use-mlflow-configure-tracking); AzureML Data Scientist is a built-in role that has both (it also
// has more: a custom role with just those actions is narrower). Assigned on the workspace only, never on its
// resource group. Deploy this module in the workspace's resource group (one deployment per workspace).
metadata name = 'amlrelay workspace tagger'
metadata description = 'AzureML Data Scientist on one AML workspace for the handler, so tag-back can tag runs and model versions.'

@description('Required. Name of the existing Azure Machine Learning workspace (in this module\'s resource group).')
param workspaceName string

@description('Required. Object id of the handler\'s managed identity (Automation account).')
param handlerPrincipalId string

// Built-in role definition id (the same in every cloud).
var dataScientistRoleId = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource handlerWorkspaceTagger 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, handlerPrincipalId, dataScientistRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataScientistRoleId)
    principalId: handlerPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay handler (AMLRELAY_TAG_BACK): tag runs and model versions with the ADO run they started.'
  }
}

@description('Resource id of the role assignment.')
output roleAssignmentId string = handlerWorkspaceTagger.id

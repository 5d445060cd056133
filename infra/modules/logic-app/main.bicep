// Logic App (Consumption) handler, used when handler = 'logicapp'. SEAM: the real workflow (route the
// event, call Azure DevOps with the managed identity, write the ledger) is another issue; pass it as
// `definition` (and its `$connections` as `connectionParameters`). Until then the placeholder below only
// answers Event Grid's subscription validation handshake and acknowledges other events with 202, so the
// generated event subscriptions can be created. The Event Grid API connection is deployed for workflows
// that use the connector's trigger instead of the Request trigger.
metadata name = 'amlrelay logic app'
metadata description = 'Consumption Logic App with a system identity, plus an Event Grid API connection.'

@description('Required. Logic App (workflow) name.')
@minLength(1)
@maxLength(80)
param name string

@description('Optional. Azure region. Defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('Optional. Tags applied to every resource of this module.')
param tags object = {}

@description('Optional. Name of the Request trigger Event Grid posts to; infra/main.bicep reads its callback URL with listCallbackUrl().')
param triggerName string = 'When_an_AML_event_is_received'

@description('Optional. Workflow definition (Workflow Definition Language). Empty object: the placeholder that only answers the validation handshake.')
param definition object = {}

@description('Optional. Workflow parameters, e.g. the $connections value for the Event Grid connector.')
param workflowParameters object = {}

@description('Optional. Name of the Event Grid API connection (Microsoft.Web/connections).')
param eventGridConnectionName string = 'azureeventgrid'

var placeholderDefinition = {
  '$schema': 'https://schema.management.azure.com/providers/Microsoft.Logic/schemas/2016-06-01/workflowdefinition.json#'
  contentVersion: '1.0.0.0'
  parameters: {
    '$connections': {
      defaultValue: {}
      type: 'Object'
    }
  }
  triggers: {
    '${triggerName}': {
      type: 'Request'
      kind: 'Http'
      inputs: {
        method: 'POST'
        schema: {
          type: 'array'
        }
      }
    }
  }
  actions: {
    Is_subscription_validation: {
      type: 'If'
      expression: {
        and: [
          {
            equals: [
              '@first(triggerBody())?[\'eventType\']'
              'Microsoft.EventGrid.SubscriptionValidationEvent'
            ]
          }
        ]
      }
      actions: {
        Validation_response: {
          type: 'Response'
          kind: 'Http'
          inputs: {
            statusCode: 200
            body: {
              validationResponse: '@first(triggerBody())?[\'data\']?[\'validationCode\']'
            }
          }
        }
      }
      else: {
        actions: {
          Not_yet_implemented: {
            type: 'Response'
            kind: 'Http'
            inputs: {
              statusCode: 202
              body: {
                message: 'amlrelay Logic App placeholder: the workflow is not deployed yet.'
              }
            }
          }
        }
      }
      runAfter: {}
    }
  }
  outputs: {}
}

resource eventGridConnection 'Microsoft.Web/connections@2016-06-01' = {
  name: eventGridConnectionName
  location: location
  tags: tags
  properties: {
    displayName: 'amlrelay Event Grid'
    api: {
      id: subscriptionResourceId('Microsoft.Web/locations/managedApis', location, 'azureeventgrid')
    }
  }
}

resource workflow 'Microsoft.Logic/workflows@2019-05-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    state: 'Enabled'
    definition: empty(definition) ? placeholderDefinition : definition
    parameters: workflowParameters
  }
}

@description('The workflow\'s resource id.')
output resourceId string = workflow.id

@description('The workflow\'s name.')
output name string = workflow.name

@description('Object id of the workflow\'s system-assigned identity: add it to Azure DevOps (scripts/grant-ado-access).')
output principalId string = workflow.identity.principalId

@description('The Request trigger\'s name (its callback URL is a secret and is never an output).')
output triggerName string = triggerName

@description('Resource id of the Event Grid API connection, for the workflow\'s $connections parameter.')
output eventGridConnectionId string = eventGridConnection.id

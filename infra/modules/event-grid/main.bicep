// Event Grid: a system topic on an EXISTING Azure Machine Learning workspace, and the event
// subscriptions generated from the routes file (infra/generated/subscriptions.json, written by
// `python -m amlrelay.subscriptions routes.json`). Deploy this module in the workspace's resource group.
// Each subscription delivers to the handler's endpoint (a @secure() input, never an output), retries with
// the given policy and dead-letters to a blob container using the topic's managed identity.
// The journal: per route one more subscription with the same filters, delivered with the topic's managed
// identity to a Storage queue that `amlrelay sweep` drains, so an event whose webhook job died after the
// webhook's 202 is still found. Its own retry policy (the longest Event Grid allows) and dead letters.
metadata name = 'amlrelay event grid'
metadata description = 'System topic on an AML workspace and the generated event subscriptions.'

@description('Required. Name of the existing Azure Machine Learning workspace (in this module\'s resource group).')
param workspaceName string

@description('Required. System topic name. A workspace can have only one system topic: if it already has one, give its name here.')
@minLength(3)
@maxLength(128)
param systemTopicName string

@description('Optional. Tags applied to the system topic.')
param tags object = {}

@description('Required. Event subscriptions: the items of infra/generated/subscriptions.json for the chosen handler (name, filter, optional maxEventsPerBatch and preferredBatchSizeInKilobytes).')
param subscriptions array

@description('Optional. Secure. HTTPS endpoint the subscriptions deliver to (Automation webhook URI or Logic App trigger callback URL). Empty: create the topic only.')
@secure()
param endpointUrl string = ''

@description('Required. Resource id of the storage account that receives dead-lettered events.')
param deadLetterStorageAccountId string

@description('Optional. Dead-letter blob container name.')
param deadLetterContainerName string = 'deadletters'

@description('Optional. Delivery attempts before an event is dead-lettered (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Optional. Minutes an event is retried before it is dead-lettered (1-1440).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

@description('Optional. Journal subscriptions: the "journal" items of infra/generated/subscriptions.json. Empty: no journal.')
param journalSubscriptions array = []

@description('Optional. Resource id of the storage account holding the journal queue; empty: no journal.')
param journalStorageAccountId string = ''

@description('Optional. Name of the journal queue.')
param journalQueueName string = 'amlrelay-journal'

@description('Optional. Delivery attempts to the journal queue before dead-lettering (1-30).')
@minValue(1)
@maxValue(30)
param journalMaxDeliveryAttempts int = 30

@description('Optional. Minutes Event Grid retries writing to the journal queue before dead-lettering (1-1440).')
@minValue(1)
@maxValue(1440)
param journalEventTimeToLiveInMinutes int = 1440

@description('Optional. Label set on every subscription this module manages; scripts/deploy deletes labelled subscriptions that are no longer generated.')
param label string = 'amlrelay'

@description('Optional. True when the workspace already has a system topic named systemTopicName: amlrelay then adds its subscriptions without changing the topic. Its system-assigned identity must be on (dead letters and the journal are written with it).')
param systemTopicExists bool = false

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

// A workspace has at most one system topic. When it already has one (systemTopicExists: scripts/deploy finds it
// by its source, the workspace id), it is only referenced: never PUT, so its owner's tags and identity stay as
// they are. When amlrelay creates it, the tag amlrelay-created-topic says so (scripts/teardown deletes only
// such a topic, and only when no other subscription uses it).
resource createdTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = if (!systemTopicExists) {
  name: systemTopicName
  location: workspace.location
  tags: union(tags, {
    'amlrelay-created-topic': 'true'
  })
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: workspace.id
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

// The topic either way: the subscriptions are its children (and wait for it when amlrelay creates it).
resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: systemTopicName
}

resource eventSubscriptions 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = [for sub in subscriptions: if (!empty(endpointUrl)) {
  parent: systemTopic
  name: sub.name
  dependsOn: [
    createdTopic
  ]
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    labels: [
      label
      'route:${sub.route}'
    ]
    filter: {
      includedEventTypes: sub['filter'].includedEventTypes
      advancedFilters: sub['filter'].advancedFilters
      enableAdvancedFilteringOnArrays: false
    }
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: endpointUrl
        maxEventsPerBatch: contains(sub, 'maxEventsPerBatch') ? sub.maxEventsPerBatch : 1
        preferredBatchSizeInKilobytes: contains(sub, 'preferredBatchSizeInKilobytes') ? sub.preferredBatchSizeInKilobytes : 64
      }
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}]

resource journal 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = [for sub in journalSubscriptions: if (!empty(journalStorageAccountId)) {
  parent: systemTopic
  name: sub.name
  dependsOn: [
    createdTopic
  ]
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    labels: [
      label
      'route:${sub.route}'
      'journal'
    ]
    filter: {
      includedEventTypes: sub['filter'].includedEventTypes
      advancedFilters: sub['filter'].advancedFilters
      enableAdvancedFilteringOnArrays: false
    }
    deliveryWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      destination: {
        endpointType: 'StorageQueue'
        properties: {
          resourceId: journalStorageAccountId
          queueName: journalQueueName
          queueMessageTimeToLiveInSeconds: -1
        }
      }
    }
    retryPolicy: {
      maxDeliveryAttempts: journalMaxDeliveryAttempts
      eventTimeToLiveInMinutes: journalEventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}]

@description('The system topic\'s resource id.')
output systemTopicId string = systemTopic.id

@description('The system topic\'s name.')
output systemTopicName string = systemTopic.name

@description('Object id of the system topic\'s identity (it writes dead letters).')
output principalId string = systemTopicExists ? systemTopic.identity.principalId : createdTopic.identity.principalId

@description('Names of the generated event subscriptions (created once an endpoint is given).')
output subscriptionNames array = [for sub in subscriptions: sub.name]

@description('Names of the journal subscriptions (created when a journal account is given).')
output journalSubscriptionNames array = [for sub in journalSubscriptions: sub.name]

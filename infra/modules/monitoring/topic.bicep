// The Event Grid system topic's diagnostic setting (delivery failures) to Log Analytics. A diagnostic setting
// is an extension resource of the topic, so it is deployed in the topic's (the workspace's) resource group.
metadata name = 'amlrelay topic diagnostics'
metadata description = 'Diagnostic setting of the Event Grid system topic (DeliveryFailures) to a Log Analytics workspace.'

@description('Required. The system topic\'s name (in this module\'s resource group).')
param systemTopicName string

@description('Required. Resource id of the Log Analytics workspace.')
param logAnalyticsWorkspaceId string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: systemTopicName
}

resource topicDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'amlrelay-to-log-analytics'
  scope: systemTopic
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'DeliveryFailures'
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

@description('The diagnostic setting\'s name.')
output name string = topicDiagnostics.name

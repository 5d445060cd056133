// Monitoring for amlrelay: diagnostic settings of the runbook handler, storage and Key Vault to an optional Log
// Analytics workspace, and metric alerts for the failures that need a person: dead-lettered events and
// failed deliveries on the system topic, failed runbook jobs or Logic App runs. The system topic's own
// diagnostic setting lives in its resource group (modules/monitoring/topic.bicep), the Logic App's in
// modules/logic-app (the same logAnalyticsWorkspaceId). Webhook expiry is not a metric: the replay runbook
// fails its job (-> the failed-jobs alert) within 30 days of it, and scripts/deploy rotates the webhook.
metadata name = 'amlrelay monitoring'
metadata description = 'Diagnostic settings to Log Analytics and metric alerts for dead letters, delivery failures and failed handler runs.'

@description('Optional. Resource id of a Log Analytics workspace for the diagnostic settings. Empty: no diagnostic settings.')
param logAnalyticsWorkspaceId string = ''

@description('Optional. Metric alerts on (dead letters, delivery failures, failed jobs or runs).')
param alertsEnabled bool = true

@description('Optional. Resource id of an action group the alerts notify. Empty: the alerts fire in Azure Monitor without notifying anyone.')
param actionGroupId string = ''

@description('Optional. Tags applied to the alerts.')
param tags object = {}

@description('Required. The amlrelay storage account\'s name.')
param storageAccountName string

@description('Optional. The Automation account\'s name (runbook handler); empty with the Logic App handler.')
param automationAccountName string = ''

@description('Optional. The Logic App\'s name (logicapp handler); empty with the runbook handler.')
param logicAppName string = ''

@description('Optional. The PAT-mode Key Vault\'s name; empty in managed-identity mode.')
param keyVaultName string = ''

@description('Required. Resource id of the Event Grid system topic (in the workspace\'s resource group).')
param systemTopicId string

@description('Optional. Alert when the storage account\'s queues (the journal and its poison queue) hold more than this many messages for an hour: the sweep is not draining them or events are being moved aside. 0: no backlog alert.')
@minValue(0)
param queueBacklogThreshold int = 100

var diagnostics = !empty(logAnalyticsWorkspaceId)
var actions = empty(actionGroupId) ? [] : [
  {
    actionGroupId: actionGroupId
  }
]

resource account 'Microsoft.Storage/storageAccounts@2026-09-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2026-09-01' existing = {
  parent: account
  name: 'default'
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2026-09-01' existing = {
  parent: account
  name: 'default'
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2026-09-01' existing = {
  parent: account
  name: 'default'
}

resource automationAccount 'Microsoft.Automation/automationAccounts@2024-10-23' existing = if (!empty(automationAccountName)) {
  name: empty(automationAccountName) ? 'unused' : automationAccountName
}

resource workflow 'Microsoft.Logic/workflows@2019-05-01' existing = if (!empty(logicAppName)) {
  name: empty(logicAppName) ? 'unused' : logicAppName
}

resource vault 'Microsoft.KeyVault/vaults@2026-05-15' existing = if (!empty(keyVaultName)) {
  name: empty(keyVaultName) ? 'unused' : keyVaultName
}

resource automationDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (diagnostics && !empty(automationAccountName)) {
  name: 'amlrelay-to-log-analytics'
  scope: automationAccount
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'JobLogs'
        enabled: true
      }
      {
        category: 'JobStreams'
        enabled: true
      }
    ]
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (diagnostics) {
  name: 'amlrelay-to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (diagnostics) {
  name: 'amlrelay-to-log-analytics'
  scope: tableService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

// The journal and its poison queue: who wrote (Event Grid), received, hid and deleted which message.
resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (diagnostics) {
  name: 'amlrelay-to-log-analytics'
  scope: queueService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource vaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (diagnostics && !empty(keyVaultName)) {
  name: 'amlrelay-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

// One static-threshold alert per failure kind; a count above zero in 15 minutes needs a person.
var topicAlerts = [
  {
    name: 'amlrelay-dead-lettered-events'
    metric: 'DeadLetteredCount'
    description: 'amlrelay: Event Grid dead-lettered AML events (see the deadletters container; the replay runbook re-delivers them).'
  }
  {
    name: 'amlrelay-delivery-failures'
    metric: 'DeliveryAttemptFailCount'
    description: 'amlrelay: Event Grid could not deliver AML events to the handler (it retries; dead letters follow).'
  }
]

resource topicMetricAlerts 'Microsoft.Insights/metricAlerts@2018-03-01' = [for alert in topicAlerts: if (alertsEnabled) {
  name: alert.name
  location: 'global'
  tags: tags
  properties: {
    description: alert.description
    severity: 2
    enabled: true
    scopes: [
      systemTopicId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: alert.metric
          metricNamespace: 'Microsoft.EventGrid/systemTopics'
          metricName: alert.metric
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Total'
        }
      ]
    }
    actions: actions
  }
}]

resource failedJobsAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = if (alertsEnabled && !empty(automationAccountName)) {
  name: 'amlrelay-failed-runbook-jobs'
  location: 'global'
  tags: tags
  properties: {
    description: 'amlrelay: a runbook job failed (trigger or replay); read its output in the Automation account.'
    severity: 2
    enabled: true
    scopes: [
      automationAccount.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'FailedJobs'
          metricNamespace: 'Microsoft.Automation/automationAccounts'
          metricName: 'TotalJob'
          dimensions: [
            {
              name: 'Status'
              operator: 'Include'
              values: [
                'Failed'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Total'
        }
      ]
    }
    actions: actions
  }
}

// QueueMessageCount is a capacity metric Storage emits about hourly, for all queues of the account together (no
// per-queue dimension): journal and poison queue alike. A journal that the sweep drains stays near the
// number of events of the last grace period; a growing count means the sweep is not running or fails.
resource queueBacklogAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = if (alertsEnabled && queueBacklogThreshold > 0) {
  name: 'amlrelay-queue-backlog'
  location: 'global'
  tags: tags
  properties: {
    description: 'amlrelay: the journal / poison queues hold a backlog (is the replay runbook running? read the replay runbook jobs; amlrelay sweep --poison drains the poison queue).'
    severity: 2
    enabled: true
    scopes: [
      queueService.id
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT6H'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'QueueBacklog'
          metricNamespace: 'Microsoft.Storage/storageAccounts/queueServices'
          metricName: 'QueueMessageCount'
          operator: 'GreaterThan'
          threshold: queueBacklogThreshold
          timeAggregation: 'Average'
        }
      ]
    }
    actions: actions
  }
}

resource failedRunsAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = if (alertsEnabled && !empty(logicAppName)) {
  name: 'amlrelay-failed-logic-app-runs'
  location: 'global'
  tags: tags
  properties: {
    description: 'amlrelay: a Logic App run failed; read its run history.'
    severity: 2
    enabled: true
    scopes: [
      workflow.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'RunsFailed'
          metricNamespace: 'Microsoft.Logic/workflows'
          metricName: 'RunsFailed'
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Total'
        }
      ]
    }
    actions: actions
  }
}

@description('Names of the metric alerts created.')
output alertNames array = alertsEnabled ? concat([
  'amlrelay-dead-lettered-events'
  'amlrelay-delivery-failures'
], !empty(automationAccountName) ? [
  'amlrelay-failed-runbook-jobs'
] : [], !empty(logicAppName) ? [
  'amlrelay-failed-logic-app-runs'
] : [], queueBacklogThreshold > 0 ? [
  'amlrelay-queue-backlog'
] : []) : []

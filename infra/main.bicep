// amlrelay: relay Azure Machine Learning events to Azure DevOps pipeline runs.
// Deploys, in the target resource group: storage (ledger, dead letters, packages), the handler
// (Automation runbook + webhook and the scheduled replay runbook, or a Consumption Logic App), Key Vault
// in PAT mode, and least-privilege role assignments; in the workspace's resource group: the Event Grid
// system topic and the event subscriptions generated from routes.json. Follow infra/README.md;
// scripts/deploy drives the two passes (the webhook URI and the wheel's SAS URL only exist after the first
// one; the replay schedule needs the published runbook).
metadata name = 'amlrelay'
metadata description = 'Azure ML Event Grid events to Azure DevOps pipeline runs, through an Automation runbook or a Logic App.'

targetScope = 'resourceGroup'

// ---------------------------------------------------------------- general
@description('Optional. Azure region of the amlrelay resources. Defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('Required. Short lowercase prefix for resource names (2-8 letters or digits), e.g. \'amlr\'.')
@minLength(2)
@maxLength(8)
param namePrefix string

@description('Optional. Tags applied to every resource.')
param tags object = {}

@description('Optional. Which handler receives the events: the Automation runbook (webhook) or a Consumption Logic App generated from routes.json (logicapps/workflow*.json).')
@allowed([
  'runbook'
  'logicapp'
])
param handler string = 'runbook'

// ---------------------------------------------------------------- Azure ML
@description('Required. Name of the EXISTING Azure Machine Learning workspace whose events are relayed.')
param workspaceName string

@description('Optional. Resource group of the workspace. Defaults to this resource group.')
param workspaceResourceGroupName string = resourceGroup().name

@description('Optional. Event Grid system topic name. A workspace has at most one system topic: if it already has one, give its name. The default derives from the workspace name with underscores (allowed in workspace names, not in topic names) turned into hyphens.')
param systemTopicName string = '${replace(workspaceName, '_', '-')}-amlrelay'

@description('Optional. True when the workspace already has a system topic (give its name in systemTopicName): amlrelay then only adds its subscriptions and never changes the topic (tags, identity); the topic\'s system-assigned identity must be on. scripts/deploy finds the topic by its source and sets this.')
param systemTopicExists bool = false

@description('Optional. Extra workspace resource ids the handler accepts events from (AMLRELAY_ALLOWED_WORKSPACES); the deployed workspace is always allowed.')
param additionalAllowedWorkspaceIds array = []

@description('Optional. Verify each event against AML before acting on it (AMLRELAY_VERIFY): the handler reads the run or model version back with its identity, so it gets Reader on each allowed workspace.')
param verifyEvents bool = true

@description('Optional. Tag-back (AMLRELAY_TAG_BACK): tag each AML run or model version with the ADO run it started, through the workspace\'s MLflow endpoint; the runbook handler then gets AzureML Data Scientist on each allowed workspace. The Logic App handler does not tag back.')
param tagBack bool = false

@description('Optional. Region of the AML workspaces, for their MLflow endpoint (AMLRELAY_AML_REGION); used when tagBack is on.')
param amlRegion string = location

// ---------------------------------------------------------------- Azure DevOps
@description('Required. Azure DevOps organization name, e.g. \'contoso\' (AMLRELAY_ADO_ORGANIZATION).')
param adoOrganization string

@description('Optional. Azure DevOps base URL (AMLRELAY_ADO_BASE_URL); change it for Azure DevOps Server or a sovereign cloud.')
param adoBaseUrl string = 'https://dev.azure.com'

@description('Optional. How the handler authenticates to Azure DevOps: its managed identity (recommended) or a PAT kept in Key Vault.')
@allowed([
  'managed-identity'
  'pat'
])
param auth string = 'managed-identity'

@description('Optional. Name of the Key Vault secret holding the PAT (PAT mode only).')
param patSecretName string = 'ado-pat'

@description('Optional. \'recover\' when the PAT-mode vault of an earlier deployment is soft-deleted (its name stays reserved under purge protection); scripts/deploy detects that and sets it.')
@allowed([
  'default'
  'recover'
])
param keyVaultCreateMode string = 'default'

// ---------------------------------------------------------------- delivery
@description('Optional. Event Grid delivery attempts before dead-lettering (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Optional. Minutes Event Grid retries an event before dead-lettering it (1-1440).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

// ---------------------------------------------------------------- storage
@description('Optional. Storage replication for the ledger, dead letters and packages.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_ZRS'

// ---------------------------------------------------------------- logic app handler
@description('Optional. Deprecated: logAnalyticsWorkspaceId now also receives the Logic App handler\'s run history (failed runs and actions). Still honoured when set (it then wins for the Logic App only); will be removed.')
param logicAppDiagnosticWorkspaceId string = ''

// ---------------------------------------------------------------- runbook handler
@description('Optional. Third-party wheels for the Python 3.10 runtime environment: objects with name, uri (public URL), version and sha256. See infra/env/*.bicepparam.')
param runbookPackages array = []

@description('Optional. Secure. User-delegation SAS URL of the uploaded amlrelay wheel; set by scripts/deploy in its second pass.')
@secure()
param amlrelayPackageUri string = ''

@description('Optional. Version of the uploaded amlrelay wheel; set by scripts/deploy.')
param amlrelayPackageVersion string = ''

@description('Optional. SHA-256 (hex) of the uploaded amlrelay wheel; set by scripts/deploy.')
param amlrelayPackageSha256 string = ''

@description('Optional. Secure. Automation webhook URI generated by scripts/deploy in its second pass; empty: no webhook and no event subscriptions yet.')
@secure()
param webhookUri string = ''

@description('Optional. Secure. User-delegation SAS URL of runbooks/trigger_ado_pipeline.py, uploaded by scripts/deploy: the runbook is published from it (with its hash) in the same request. Empty: the runbook is left as it is.')
@secure()
param runbookContentUri string = ''

@description('Optional. SHA-256 (hex) of the trigger runbook\'s source; set by scripts/deploy.')
param runbookContentSha256 string = ''

@description('Optional. Secure. User-delegation SAS URL of runbooks/replay_dead_letters.py, uploaded by scripts/deploy. Empty: the replay runbook is left as it is.')
@secure()
param replayRunbookContentUri string = ''

@description('Optional. SHA-256 (hex) of the replay runbook\'s source; set by scripts/deploy.')
param replayRunbookContentSha256 string = ''

@description('Optional. Webhook name; scripts/deploy sets a new one per deployment and deletes the old ones.')
param webhookName string = 'amlrelay-eventgrid'

@description('Optional. Webhook expiry (ISO 8601); re-run scripts/deploy before it.')
param webhookExpiryTime string = dateTimeAdd(utcNow(), 'P1Y')

@description('Optional. Run runbooks/replay_dead_letters.py (amlrelay replay --stale --failed) on a schedule (both handlers: with the Logic App it settles [ambiguous] failures and stale claims the workflow answers 500 for). false: no schedule; scripts/deploy removes the one it made before, and the runbook can still be started by hand.')
param replayScheduleEnabled bool = true

@description('Optional. Hours between two scheduled replay runs (1-24); only with sweepIntervalMinutes = 60.')
@minValue(1)
@maxValue(24)
param replayIntervalHours int = 1

@description('Optional. Minutes between two runs of the replay runbook, which sweeps the journal first (the runbook handler\'s; the Logic App handler has no journal): 15, 20, 30 or 60, as 60 / sweepIntervalMinutes offset hourly schedules. Worst-case recovery of a lost event: this plus AMLRELAY_JOURNAL_GRACE (10 min); see README "Across the webhook boundary".')
@allowed([
  15
  20
  30
  60
])
param sweepIntervalMinutes int = 15

@description('Optional. Replay schedule name; scripts/deploy sets a new one per deployment in its second pass (after publishing the runbook) and deletes the old ones. Empty: no schedule yet.')
param replayScheduleName string = ''

// ---------------------------------------------------------------- monitoring
@description('Optional. Resource id of a Log Analytics workspace for diagnostic settings (Automation job logs, Event Grid delivery failures, storage, Key Vault). Empty: none.')
param logAnalyticsWorkspaceId string = ''

@description('Optional. Metric alerts for dead-lettered events, delivery failures and failed handler jobs/runs.')
param alertsEnabled bool = true

@description('Optional. Resource id of the action group the alerts notify. Empty: alerts show in Azure Monitor only.')
param alertActionGroupId string = ''

// ---------------------------------------------------------------- deployer
@description('Optional. Object id of whoever runs scripts/deploy, granted upload rights on the packages container (and secret rights in PAT mode). Empty: grant nothing.')
param deployerPrincipalId string = ''

@description('Optional. Principal type of deployerPrincipalId.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param deployerPrincipalType string = 'User'

// ---------------------------------------------------------------- derived
var suffix = uniqueString(resourceGroup().id, workspaceName)
var storageAccountName = take('${namePrefix}st${suffix}', 24)
var automationAccountName = '${namePrefix}-aa-${suffix}'
var logicAppName = '${namePrefix}-la-${suffix}'
var keyVaultName = take('${namePrefix}-kv-${suffix}', 24)
var ledgerTableName = 'amlrelayledger'
var deadLetterContainerName = 'deadletters'
var packagesContainerName = 'packages'
// The journal (issue 7): Event Grid copies every routed event to this queue; the replay runbook's
// `amlrelay sweep` recovers those whose webhook job died. Only the runbook handler needs it: the webhook
// answers 202 before the job runs. The Logic App answers after its work (5xx when an event failed), so
// Event Grid's own retries and dead letters already cover it and a journal copy would only double the
// event's Event Grid operations.
var journalQueueName = 'amlrelay-journal'
var journalEnabled = handler == 'runbook'
var allTags = union(tags, {
  'amlrelay-handler': handler
})
// Generated by `python -m amlrelay.subscriptions routes.json -o infra/generated/subscriptions.json`.
var generated = loadJsonContent('generated/subscriptions.json')
var subscriptions = generated.handlers[handler]
var routesJson = string(loadJsonContent('../routes.json'))
var workspaceId = resourceId(subscription().subscriptionId, workspaceResourceGroupName, 'Microsoft.MachineLearningServices/workspaces', workspaceName)
var baseSettings = {
  AMLRELAY_ADO_ORGANIZATION: adoOrganization
  AMLRELAY_ADO_BASE_URL: adoBaseUrl
  AMLRELAY_ROUTES: routesJson
  AMLRELAY_ALLOWED_WORKSPACES: join(concat([
    workspaceId
  ], additionalAllowedWorkspaceIds), ',')
  AMLRELAY_VERIFY: verifyEvents ? 'true' : 'false'
  AMLRELAY_TAG_BACK: tagBack ? 'true' : 'false'
  AMLRELAY_AML_REGION: amlRegion
  AMLRELAY_AUTH: auth
  AMLRELAY_LEDGER_TABLE_URL: storage.outputs.tableEndpoint
  AMLRELAY_LEDGER_TABLE: ledgerTableName
  AMLRELAY_DEADLETTER_CONTAINER: deadLetterContainerName
  AMLRELAY_JOURNAL: journalEnabled ? 'true' : 'false'
  AMLRELAY_JOURNAL_QUEUE: journalQueueName
  AMLRELAY_JOURNAL_QUEUE_URL: storage.outputs.queueEndpoint
}
var patSettings = auth == 'pat' ? {
  AMLRELAY_KEY_VAULT_URL: keyVault.outputs.uri
  AMLRELAY_PAT_SECRET_NAME: patSecretName
} : {}
// The webhook's expiry, for the replay runbook's check (it reports ERROR -- a failed job, which alerts --
// within AMLRELAY_WEBHOOK_EXPIRY_WARN_DAYS, default 30): Azure Monitor has no webhook-expiry metric.
var webhookSettings = handler == 'runbook' ? {
  AMLRELAY_WEBHOOK_EXPIRES: webhookExpiryTime
} : {}
var settings = union(baseSettings, patSettings, webhookSettings)

module storage 'modules/storage/main.bicep' = {
  name: 'amlrelay-storage'
  params: {
    name: storageAccountName
    location: location
    tags: allTags
    skuName: storageSkuName
    ledgerTableName: ledgerTableName
    deadLetterContainerName: deadLetterContainerName
    packagesContainerName: packagesContainerName
    journalQueueName: journalQueueName
  }
}

module keyVault 'modules/key-vault/main.bicep' = if (auth == 'pat') {
  name: 'amlrelay-key-vault'
  params: {
    name: keyVaultName
    location: location
    tags: allTags
    createMode: keyVaultCreateMode
  }
}

// The Automation account runs the replay runbook (journal sweep, dead letters, stale claims, [ambiguous]
// failures) on a schedule for both handlers. With handler = 'logicapp' it is the workflow's recovery only:
// no trigger runbook and no webhook (their content and URI are not passed), and its own identity.
module automation 'modules/automation/main.bicep' = {
  name: 'amlrelay-automation'
  params: {
    name: automationAccountName
    location: location
    tags: allTags
    packages: runbookPackages
    amlrelayPackageUri: amlrelayPackageUri
    amlrelayPackageVersion: amlrelayPackageVersion
    amlrelayPackageSha256: amlrelayPackageSha256
    settings: settings
    webhookUri: handler == 'runbook' ? webhookUri : ''
    webhookName: webhookName
    webhookExpiryTime: webhookExpiryTime
    replayScheduleEnabled: replayScheduleEnabled
    replayScheduleName: replayScheduleName
    runbookContentUri: handler == 'runbook' ? runbookContentUri : ''
    runbookContentSha256: runbookContentSha256
    replayRunbookContentUri: replayRunbookContentUri
    replayRunbookContentSha256: replayRunbookContentSha256
    replayIntervalHours: replayIntervalHours
    sweepIntervalMinutes: sweepIntervalMinutes
  }
}

module logicApp 'modules/logic-app/main.bicep' = if (handler == 'logicapp') {
  name: 'amlrelay-logic-app'
  params: {
    name: logicAppName
    location: location
    tags: allTags
    auth: auth
    adoOrganizationUrl: '${adoBaseUrl}/${adoOrganization}'
    allowedWorkspaceIds: concat([
      workspaceId
    ], additionalAllowedWorkspaceIds)
    ledgerTableUrl: storage.outputs.tableEndpoint
    ledgerTableName: ledgerTableName
    keyVaultUri: auth == 'pat' ? keyVault.outputs.uri : ''
    patSecretName: patSecretName
    logAnalyticsWorkspaceId: empty(logicAppDiagnosticWorkspaceId) ? logAnalyticsWorkspaceId : logicAppDiagnosticWorkspaceId
    verifyEvents: verifyEvents
  }
}

var logicAppTriggerName = 'When_an_AML_event_is_received'

// Per deployment: scripts/deploy and scripts/teardown delete only subscriptions carrying this deployment's
// label, so two amlrelay deployments on one workspace's topic never delete each other's.
var subscriptionLabel = 'amlrelay:${resourceGroup().name}'

module eventGrid 'modules/event-grid/main.bicep' = {
  name: 'amlrelay-event-grid'
  scope: resourceGroup(workspaceResourceGroupName)
  params: {
    workspaceName: workspaceName
    systemTopicName: systemTopicName
    systemTopicExists: systemTopicExists
    label: subscriptionLabel
    tags: allTags
    subscriptions: subscriptions
    endpointUrl: handler == 'logicapp' ? listCallbackUrl(resourceId('Microsoft.Logic/workflows/triggers', logicAppName, logicAppTriggerName), '2019-05-01').value : webhookUri
    deadLetterStorageAccountId: storage.outputs.resourceId
    deadLetterContainerName: deadLetterContainerName
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    journalSubscriptions: journalEnabled ? generated.journal : []
    journalStorageAccountId: journalEnabled ? storage.outputs.resourceId : ''
    journalQueueName: journalQueueName
  }
  dependsOn: [
    automation
    logicApp
    roleAssignmentsForTopic
  ]
}

// The dead-letter role must exist before subscriptions use it, but needs the topic's identity: the
// topic is created first by a topic-only pass of the same module (no endpoint), then this assignment.
module eventGridTopic 'modules/event-grid/main.bicep' = {
  name: 'amlrelay-event-grid-topic'
  scope: resourceGroup(workspaceResourceGroupName)
  params: {
    workspaceName: workspaceName
    systemTopicName: systemTopicName
    systemTopicExists: systemTopicExists
    label: subscriptionLabel
    tags: allTags
    subscriptions: subscriptions
    endpointUrl: ''
    deadLetterStorageAccountId: storage.outputs.resourceId
    deadLetterContainerName: deadLetterContainerName
  }
}

// Verification reads runs and model versions of every allowed workspace: Reader on each, in its own
// resource group (and subscription, for an extra workspace given by id).
var verifiedWorkspaceIds = verifyEvents ? concat([
  workspaceId
], additionalAllowedWorkspaceIds) : []

module workspaceReaders 'modules/role-assignments/workspace-reader.bicep' = [for (id, i) in verifiedWorkspaceIds: {
  name: 'amlrelay-workspace-reader-${i}'
  scope: resourceGroup(split(id, '/')[2], split(id, '/')[4])
  params: {
    workspaceName: last(split(id, '/'))
    handlerPrincipalId: handler == 'runbook' ? automation.outputs.principalId : logicApp.outputs.principalId
  }
}]

// Tag-back writes tags on the runs and model versions of every allowed workspace (runbook handler only).
var taggedWorkspaceIds = tagBack && handler == 'runbook' ? concat([
  workspaceId
], additionalAllowedWorkspaceIds) : []

// With the Logic App handler the replay runbook (another identity) verifies what it replays too.
module replayWorkspaceReaders 'modules/role-assignments/workspace-reader.bicep' = [for (id, i) in (handler == 'logicapp' ? verifiedWorkspaceIds : []): {
  name: 'amlrelay-replay-workspace-reader-${i}'
  scope: resourceGroup(split(id, '/')[2], split(id, '/')[4])
  params: {
    workspaceName: last(split(id, '/'))
    handlerPrincipalId: automation.outputs.principalId
  }
}]

module workspaceTaggers 'modules/role-assignments/workspace-tagger.bicep' = [for (id, i) in taggedWorkspaceIds: {
  name: 'amlrelay-workspace-tagger-${i}'
  scope: resourceGroup(split(id, '/')[2], split(id, '/')[4])
  params: {
    workspaceName: last(split(id, '/'))
    handlerPrincipalId: handler == 'runbook' ? automation.outputs.principalId : logicApp.outputs.principalId
  }
}]

module roleAssignmentsForTopic 'modules/role-assignments/main.bicep' = {
  name: 'amlrelay-role-assignments'
  params: {
    storageAccountName: storage.outputs.name
    ledgerTableName: ledgerTableName
    deadLetterContainerName: deadLetterContainerName
    packagesContainerName: packagesContainerName
    handlerPrincipalId: handler == 'runbook' ? automation.outputs.principalId : logicApp.outputs.principalId
    handlerReadsDeadLetters: handler == 'runbook'
    replayPrincipalId: handler == 'logicapp' ? automation.outputs.principalId : ''
    journalQueueName: journalEnabled ? journalQueueName : ''
    eventGridPrincipalId: eventGridTopic.outputs.principalId
    keyVaultName: auth == 'pat' ? keyVault.outputs.name : ''
    deployerPrincipalId: deployerPrincipalId
    deployerPrincipalType: deployerPrincipalType
  }
}

module monitoring 'modules/monitoring/main.bicep' = {
  name: 'amlrelay-monitoring'
  params: {
    logAnalyticsWorkspaceId: logAnalyticsWorkspaceId
    alertsEnabled: alertsEnabled
    actionGroupId: alertActionGroupId
    tags: allTags
    storageAccountName: storage.outputs.name
    automationAccountName: automation.outputs.name // the replay runbook's jobs, beside a Logic App too
    logicAppName: handler == 'logicapp' ? logicApp.outputs.name : ''
    keyVaultName: auth == 'pat' ? keyVault.outputs.name : ''
    systemTopicId: eventGridTopic.outputs.systemTopicId
  }
}

module topicDiagnostics 'modules/monitoring/topic.bicep' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'amlrelay-topic-diagnostics'
  scope: resourceGroup(workspaceResourceGroupName)
  params: {
    systemTopicName: eventGridTopic.outputs.systemTopicName
    logAnalyticsWorkspaceId: logAnalyticsWorkspaceId
  }
}

@description('Which handler was deployed.')
output handler string = handler

@description('Storage account name (packages, ledger, dead letters).')
output storageAccountName string = storage.outputs.name

@description('Container scripts/deploy uploads the amlrelay wheel to.')
output packagesContainerName string = packagesContainerName

@description('Container Event Grid writes dead-lettered events to.')
output deadLetterContainerName string = deadLetterContainerName

@description('AMLRELAY_LEDGER_TABLE_URL.')
output ledgerTableUrl string = storage.outputs.tableEndpoint

@description('Automation account name: the runbook handler\'s, or the Logic App handler\'s replay account (no webhook, no trigger runbook).')
output automationAccountName string = automation.outputs.name

@description('Runbook name (runbook handler), else empty.')
output runbookName string = handler == 'runbook' ? automation.outputs.runbookName : ''

@description('Replay runbook name (both handlers).')
output replayRunbookName string = automation.outputs.replayRunbookName

@description('Replay schedule name (schedule on and second pass, both handlers), else empty.')
output replayScheduleName string = automation.outputs.replayScheduleName

@description('Object id of the identity that runs the replay runbook: the handler\'s own with the runbook handler, the Automation account\'s beside the Logic App (add it to Azure DevOps too: scripts/grant-ado-access grants both).')
output replayPrincipalId string = automation.outputs.principalId

@description('Logic App name (logicapp handler), else empty.')
output logicAppName string = handler == 'logicapp' ? logicApp.outputs.name : ''

@description('Object id of the handler\'s managed identity: the identity to add to Azure DevOps (scripts/grant-ado-access).')
output handlerPrincipalId string = handler == 'runbook' ? automation.outputs.principalId : logicApp.outputs.principalId

@description('Key Vault name (PAT mode), else empty. Set the PAT as secret patSecretName.')
output keyVaultName string = auth == 'pat' ? keyVault.outputs.name : ''

@description('Event Grid system topic name (in workspaceResourceGroupName).')
output systemTopicName string = eventGrid.outputs.systemTopicName

@description('Resource group of the system topic and its subscriptions.')
output systemTopicResourceGroup string = workspaceResourceGroupName

@description('Label on every event subscription of this deployment (scripts/deploy and scripts/teardown delete only subscriptions carrying it).')
output subscriptionLabel string = subscriptionLabel

@description('Names of the event subscriptions generated from routes.json, the journal\'s included (scripts/deploy keeps these and deletes other amlrelay-labelled ones).')
output subscriptionNames array = concat(eventGrid.outputs.subscriptionNames, eventGrid.outputs.journalSubscriptionNames)

@description('The replay (and, with the runbook handler, trigger) runbooks\' Python runtime environment (scripts/deploy waits for its packages).')
output runtimeEnvironmentName string = automation.outputs.runtimeEnvironmentName

@description('Object id of the handler\'s system-assigned identity (AVM name; same as handlerPrincipalId).')
output systemAssignedMIPrincipalId string = handler == 'runbook' ? automation.outputs.principalId : logicApp.outputs.principalId

@description('The resource group amlrelay was deployed to.')
output resourceGroupName string = resourceGroup().name

@description('The AMLRELAY_* settings (no secrets), e.g. for the Logic App workflow\'s parameters.')
output settings object = settings

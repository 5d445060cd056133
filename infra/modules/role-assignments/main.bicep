// Least-privilege role assignments, each on the narrowest scope that works (see the table in
// infra/README.md): the handler writes the ledger table only, Event Grid writes the dead-letter container
// only, the runbook handler's replay reads and marks blobs of the dead-letter container only, the deployer
// uploads to the packages container only, and in PAT mode the handler reads secrets of the amlrelay vault
// only. With the journal: Event Grid sends messages to the journal queue only (Message Sender), and the
// handler's sweeper receives, hides (update) and deletes messages of the journal queue and its poison
// queue only (Queue Data Contributor: Message Processor has no messages/write, which hiding needs).
metadata name = 'amlrelay role assignments'
metadata description = 'Data-plane role assignments for the handler, Event Grid and the deployer.'

@description('Required. Name of the amlrelay storage account (in this resource group).')
param storageAccountName string

@description('Optional. Ledger table name.')
param ledgerTableName string = 'amlrelayledger'

@description('Optional. Dead-letter container name.')
param deadLetterContainerName string = 'deadletters'

@description('Optional. Packages container name.')
param packagesContainerName string = 'packages'

@description('Required. Object id of the handler\'s managed identity (Automation account or Logic App).')
param handlerPrincipalId string

@description('Optional. Whether the handler replays dead letters (the runbook handler\'s replay runbook): it then lists, reads and sets metadata on blobs of the dead-letter container, and nothing else of the account.')
param handlerReadsDeadLetters bool = false

@description('Optional. Object id of a separate replay identity (the Automation account beside the Logic App handler, which runs `amlrelay replay` on a schedule): the ledger table, the dead-letter container and, in PAT mode, the vault\'s secrets. Empty: the handler replays itself (or nothing).')
param replayPrincipalId string = ''

@description('Optional. Journal queue name; empty: no journal, no queue roles.')
param journalQueueName string = ''

@description('Required. Object id of the Event Grid system topic\'s managed identity.')
param eventGridPrincipalId string

@description('Optional. Name of the PAT-mode key vault; empty when AMLRELAY_AUTH is managed-identity.')
param keyVaultName string = ''

@description('Optional. Object id of the person or pipeline running scripts/deploy; empty: grant nothing (give it the roles yourself).')
param deployerPrincipalId string = ''

@description('Optional. Principal type of the deployer.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param deployerPrincipalType string = 'User'

// Built-in role definition ids (the same in every cloud).
var roles = {
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDelegator: 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageQueueDataMessageSender: 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
}

resource account 'Microsoft.Storage/storageAccounts@2026-09-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2026-09-01' existing = {
  parent: account
  name: 'default'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2026-09-01' existing = {
  parent: blobService
  name: deadLetterContainerName
}

resource packagesContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2026-09-01' existing = {
  parent: blobService
  name: packagesContainerName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2026-09-01' existing = {
  parent: account
  name: 'default'
}

resource ledgerTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2026-09-01' existing = {
  parent: tableService
  name: ledgerTableName
}

var journal = !empty(journalQueueName)

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2026-09-01' existing = {
  parent: account
  name: 'default'
}

resource journalQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2026-09-01' existing = {
  parent: queueService
  name: journal ? journalQueueName : 'unused'
}

resource journalPoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2026-09-01' existing = {
  parent: queueService
  name: journal ? '${journalQueueName}-poison' : 'unused-poison'
}

resource eventGridJournal 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (journal) {
  name: guid(journalQueue.id, eventGridPrincipalId, roles.storageQueueDataMessageSender)
  scope: journalQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageSender)
    principalId: eventGridPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay Event Grid system topic: copy every routed event to the journal queue.'
  }
}

resource handlerJournal 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (journal) {
  name: guid(journalQueue.id, handlerPrincipalId, roles.storageQueueDataContributor)
  scope: journalQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: handlerPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay handler (amlrelay sweep): receive, hide and delete journal messages.'
  }
}

resource handlerJournalPoison 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (journal) {
  name: guid(journalPoisonQueue.id, handlerPrincipalId, roles.storageQueueDataContributor)
  scope: journalPoisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: handlerPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay handler (amlrelay sweep): move failing journal messages aside, and drain them with --poison.'
  }
}

resource vault 'Microsoft.KeyVault/vaults@2026-05-15' existing = if (!empty(keyVaultName)) {
  name: empty(keyVaultName) ? 'unused' : keyVaultName
}

resource handlerLedger 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(ledgerTable.id, handlerPrincipalId, roles.storageTableDataContributor)
  scope: ledgerTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: handlerPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay handler: read and write exactly-once ledger records.'
  }
}

resource eventGridDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, eventGridPrincipalId, roles.storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: eventGridPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay Event Grid system topic: write undeliverable events to the dead-letter container.'
  }
}

// Blob Data Reader cannot set the `amlrelayreplayed` metadata (blobs/write), so Contributor, on the container.
resource handlerDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (handlerReadsDeadLetters) {
  name: guid(deadLetterContainer.id, handlerPrincipalId, roles.storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: handlerPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay handler (replay runbook): read dead-lettered events and mark the blobs it replayed.'
  }
}

resource handlerSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(keyVaultName)) {
  name: guid(resourceGroup().id, keyVaultName, handlerPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: handlerPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay handler (PAT mode): read the Azure DevOps PAT.'
  }
}

var replayer = !empty(replayPrincipalId)

resource replayLedger 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (replayer) {
  name: guid(ledgerTable.id, replayPrincipalId, roles.storageTableDataContributor)
  scope: ledgerTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: replayPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay replay runbook: settle failed and stale ledger records.'
  }
}

resource replayDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (replayer) {
  name: guid(deadLetterContainer.id, replayPrincipalId, roles.storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: replayPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay replay runbook: read dead-lettered events and mark the blobs it replayed.'
  }
}

resource replaySecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (replayer && !empty(keyVaultName)) {
  name: guid(resourceGroup().id, keyVaultName, replayPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: replayPrincipalId
    principalType: 'ServicePrincipal'
    description: 'amlrelay replay runbook (PAT mode): read the Azure DevOps PAT.'
  }
}

resource deployerPackages 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(packagesContainer.id, deployerPrincipalId, roles.storageBlobDataContributor)
  scope: packagesContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    description: 'amlrelay deployer: upload the amlrelay wheel.'
  }
}

resource deployerDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(account.id, deployerPrincipalId, roles.storageBlobDelegator)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDelegator)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    description: 'amlrelay deployer: sign the short-lived user-delegation SAS Automation downloads the wheel with.'
  }
}

resource deployerSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(keyVaultName) && !empty(deployerPrincipalId)) {
  name: guid(resourceGroup().id, keyVaultName, deployerPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    description: 'amlrelay deployer (PAT mode): set and rotate the Azure DevOps PAT secret.'
  }
}

@description('Resource ids of the role assignments made.')
output roleAssignmentIds array = concat([
  handlerLedger.id
  eventGridDeadLetters.id
], handlerReadsDeadLetters ? [
  handlerDeadLetters.id
] : [], replayer ? [
  replayLedger.id
  replayDeadLetters.id
] : [], journal ? [
  eventGridJournal.id
  handlerJournal.id
  handlerJournalPoison.id
] : [])

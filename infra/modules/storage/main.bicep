// Storage for amlrelay: the exactly-once ledger table, the Event Grid dead-letter container, the
// container the deploy script uploads the amlrelay wheel to, and the journal queue (plus its poison queue)
// that Event Grid copies every routed event to and `amlrelay sweep` drains. No public blob access, TLS 1.2 minimum,
// HTTPS only, shared-key access off by default (every amlrelay identity uses Entra ID).
metadata name = 'amlrelay storage'
metadata description = 'Storage account with the ledger table, the dead-letter container and the packages container.'

@description('Required. Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Optional. Azure region. Defaults to the resource group\'s.')
param location string = resourceGroup().location

@description('Optional. Tags applied to every resource of this module.')
param tags object = {}

@description('Optional. Replication. Zone- or geo-redundant SKUs keep the ledger through a zone outage.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_ZRS'

@description('Optional. Allow shared-key (account key and service SAS) access. Keep false: amlrelay uses managed identities and user-delegation SAS only.')
param allowSharedKeyAccess bool = false

@description('Optional. Public network access. Automation cloud jobs and Event Grid dead-lettering reach the account over its public endpoint unless you add private endpoints and a Hybrid Runbook Worker.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

@description('Optional. Name of the ledger table (the runbook setting AMLRELAY_LEDGER_TABLE).')
@minLength(3)
@maxLength(63)
param ledgerTableName string = 'amlrelayledger'

@description('Optional. Name of the blob container Event Grid writes undeliverable events to.')
@minLength(3)
@maxLength(63)
param deadLetterContainerName string = 'deadletters'

@description('Optional. Name of the blob container the deploy script uploads the amlrelay wheel to.')
@minLength(3)
@maxLength(63)
param packagesContainerName string = 'packages'

@description('Optional. Name of the journal queue Event Grid writes every routed event to (AMLRELAY_JOURNAL_QUEUE); its poison queue is this name plus \'-poison\'.')
@minLength(3)
@maxLength(56)
param journalQueueName string = 'amlrelay-journal'

@description('Optional. Days a deleted blob or container can be restored.')
@minValue(1)
@maxValue(365)
param deleteRetentionDays int = 7

resource account 'Microsoft.Storage/storageAccounts@2026-09-01' = {
  //checkov:skip=CKV_AZURE_35:Automation cloud jobs have no fixed egress IPs and are not a trusted service, so the ledger must be reachable publicly; every request is Entra-authenticated (shared key off).
  //checkov:skip=CKV_AZURE_59:Same reason; anonymous blob access is off (allowBlobPublicAccess false) and publicNetworkAccess is a parameter for private deployments with a Hybrid Runbook Worker.
  //checkov:skip=CKV_AZURE_206:Replication is the skuName parameter (default Standard_ZRS; dev chooses LRS on purpose).
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: publicNetworkAccess
    allowCrossTenantReplication: false
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2026-09-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionDays
    }
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2026-09-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource packagesContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2026-09-01' = {
  parent: blobService
  name: packagesContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2026-09-01' = {
  parent: account
  name: 'default'
}

resource ledgerTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2026-09-01' = {
  parent: tableService
  name: ledgerTableName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2026-09-01' = {
  parent: account
  name: 'default'
}

// Messages never expire on their own (Event Grid is told queueMessageTimeToLiveInSeconds -1): only the
// sweeper deletes a journal message, once its event reached a final outcome.
resource journalQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2026-09-01' = {
  parent: queueService
  name: journalQueueName
  properties: {
    metadata: {
      purpose: 'amlrelay journal: every routed event, until amlrelay sweep has handled it'
    }
  }
}

resource journalPoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2026-09-01' = {
  parent: queueService
  name: '${journalQueueName}-poison'
  properties: {
    metadata: {
      purpose: 'amlrelay journal messages that kept failing, moved aside with the reason'
    }
  }
}

@description('The storage account\'s resource id.')
output resourceId string = account.id

@description('The storage account\'s name.')
output name string = account.name

@description('Blob endpoint, e.g. https://<account>.blob.core.windows.net/ (cloud-specific suffix).')
output blobEndpoint string = account.properties.primaryEndpoints.blob

@description('Table endpoint without the trailing slash: the runbook setting AMLRELAY_LEDGER_TABLE_URL.')
output tableEndpoint string = take(account.properties.primaryEndpoints.table, length(account.properties.primaryEndpoints.table) - 1)

@description('The ledger table\'s name (AMLRELAY_LEDGER_TABLE).')
output ledgerTableName string = ledgerTable.name

@description('The dead-letter container\'s name.')
output deadLetterContainerName string = deadLetterContainer.name

@description('Queue endpoint without the trailing slash: the runbook setting AMLRELAY_JOURNAL_QUEUE_URL.')
output queueEndpoint string = take(account.properties.primaryEndpoints.queue, length(account.properties.primaryEndpoints.queue) - 1)

@description('The journal queue\'s name (AMLRELAY_JOURNAL_QUEUE).')
output journalQueueName string = journalQueue.name

@description('The journal\'s poison queue name.')
output journalPoisonQueueName string = journalPoisonQueue.name

@description('The packages container\'s name (the deploy script uploads the wheel here).')
output packagesContainerName string = packagesContainer.name

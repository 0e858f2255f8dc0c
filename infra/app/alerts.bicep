// Azure Monitor alerts for photo-sync: log search alert rules on the structured log records the app
// writes to Application Insights, one metric alert for an app that stopped altogether
// (docs/deploy.md, "Alerts", says what each reads and why it is a log search or a metric alert), and
// an optional e-mail action group.
//
// Log search alert rules (Microsoft.Insights/scheduledQueryRules, Azure Verified Module
// avm/res/insights/scheduled-query-rule): frequency 1 minute to 1 day, query time range at most two
// days, ago() only with timespan literals (azure-monitor-docs articles/azure-monitor/alerts/
// alerts-create-log-alert-rule.md). The queries below only use literals built at deployment time.
// Every rule counts the rows its query returns and fires when there is at least one; it resolves by
// itself when the query returns none again (autoMitigate).
param appInsightsName string
param location string
param tags object = {}
param resourceToken string
@description('E-mail address for notifications; empty: no action group, the rules fire without actions.')
param alertEmail string = ''
@minValue(1)
@maxValue(48)
@description('Hours without a completed reconciliation before the alert fires (twice RECONCILE_INTERVAL, in whole hours).')
param reconcileAlertAfterHours int
@minValue(1)
param failedAlertThreshold int
@description('The sync queue, whose poison queues the health record counts (for the alert text).')
param syncQueueName string
@description('The Function App, for the metric alert that notices when nothing runs at all.')
param functionAppName string

// Metric alert windows are a fixed set (PT1M ... PT12H, P1D); the reconcile timer ticks every minute
// and a pass runs at least once in reconcileAlertAfterHours / 2 hours, so either window sees runs of
// a healthy app.
var silentWindow = reconcileAlertAfterHours <= 12 ? 'PT12H' : 'P1D'

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

module actionGroup 'br/public:avm/res/insights/action-group:0.8.0' = if (!empty(alertEmail)) {
  name: 'alerts-action-group'
  params: {
    name: 'ag-photosync-${resourceToken}'
    groupShortName: 'photosync' // at most 12 characters, shown in the e-mails
    location: 'global'
    tags: tags
    emailReceivers: [
      {
        name: 'photo-sync admin'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actions = !empty(alertEmail) ? { actionGroupResourceIds: [actionGroup.outputs.resourceId] } : {}
var hours = '${reconcileAlertAfterHours}h'

// The latest "photo-sync health" record of the last `hours` (the timer logs one after each run):
// its fields are strings in customDimensions, booleans as "True" or "true".
var latestHealth = 'traces | where timestamp > ago(${hours}) | where message == "photo-sync health" | summarize arg_max(timestamp, *)'

// Every rule aggregates over one hour (windowSize, one of the portal's aggregation granularities);
// the rules that need a longer view look further back with queryTimeRange (at most two days) and
// their queries bound themselves with ago() literals.
var lookBack = 'P2D'

var rules = [
  {
    name: 'poison-messages'
    displayName: 'photo-sync: messages in the poison queue'
    description: 'Messages are in ${syncQueueName}-poison or ${syncQueueName}-control-poison (the latest health record counts both), or a sync message failed its last attempt in the past hour and is going there. Look at the "sync message failed" records, fix the cause, then run `python -m shared replay-poison --app NAME` (docs/troubleshooting.md).'
    severity: 2
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    queryTimeRange: lookBack
    query: 'let health = ${latestHealth} | where toint(customDimensions.poison_messages) > 0 | project timestamp, reason = strcat(tostring(customDimensions.poison_messages), " messages in the poison queue"); let last_attempts = traces | where timestamp > ago(1h) | where message == "sync message failed" and tostring(customDimensions.final_attempt) =~ "true" | project timestamp, reason = strcat("message ", tostring(customDimensions.message_id), " failed its last attempt: ", tostring(customDimensions.error_type)); union health, last_attempts'
  }
  {
    name: 'subscription'
    displayName: 'photo-sync: Graph subscription expiring or missing'
    description: 'NOTIFICATION_URL is set but the Graph change-notification subscription is missing or expires within 24 hours (latest health record). The timer renews it; check the "timer run finished" records and `python -m shared subscription show`, then `python -m shared subscription ensure --app NAME`. Not raised while PHOTO_SYNC_PAUSED.'
    severity: 2
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    queryTimeRange: lookBack
    query: '${latestHealth} | where tostring(customDimensions.paused) !~ "true" and tostring(customDimensions.notification_url_set) =~ "true" | extend present = tostring(customDimensions.subscription_present) =~ "true", hours_left = todouble(customDimensions.subscription_hours_left) | where not(present) or hours_left < 24 | project timestamp, present, hours_left'
  }
  {
    name: 'reconcile-stale'
    displayName: 'photo-sync: no completed reconciliation'
    description: 'No reconciliation completed in the last ${reconcileAlertAfterHours} hours (twice RECONCILE_INTERVAL, at least 2 hours), by the latest health record; or none ever completed although the app has reported for that long. Photo changes are not being picked up: check the "timer run finished" and "reconcile finished" records. (A stopped app writes no records: the app-silent rule covers that.)'
    severity: 1
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    queryTimeRange: lookBack
    query: 'let first_health = toscalar(traces | where message == "photo-sync health" | summarize min(timestamp)); ${latestHealth} | where tostring(customDimensions.paused) !~ "true" | extend hours = todouble(customDimensions.hours_since_reconcile_completed) | where hours > ${reconcileAlertAfterHours} or (hours < 0 and first_health < ago(${hours})) | project timestamp, hours_since_reconcile_completed = hours'
  }
  {
    name: 'verify-stale'
    displayName: 'photo-sync: people see stale or broken pictures'
    description: 'The daily verify found users whose people card shows a different picture than their Microsoft 365 photo (stale) or a missing file (broken_link) in two runs in a row (the latest "photo-sync verify" record: verify_bad_runs_in_a_row). Run `python -m shared verify --output csv` to list them with what each shows; docs/operations.md, "Verify what people see", says what to do for each state.'
    severity: 2
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    queryTimeRange: lookBack
    query: 'traces | where timestamp > ago(48h) | where message == "photo-sync verify" | summarize arg_max(timestamp, *) | extend runs = toint(customDimensions.verify_bad_runs_in_a_row), stale = toint(customDimensions.verify_stale), broken_link = toint(customDimensions.verify_broken_link) | where runs >= 2 and stale + broken_link > 0 | project timestamp, stale, broken_link, runs'
  }
  {
    name: 'waiting-for-link'
    displayName: 'photo-sync: users wait over 24 hours for a profile link'
    description: 'Users have waited more than 24 hours for their profile to be linked to their photo (needs_profile_link; the latest health record\'s oldest_waiting_hours). SharePoint refuses this app the profile write: a SharePoint administrator runs `python -m shared link-profiles` (docs/operations.md, "When profile writes are refused").'
    severity: 3
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    queryTimeRange: lookBack
    query: '${latestHealth} | extend oldest_hours = todouble(customDimensions.oldest_waiting_hours), waiting = toint(customDimensions.needs_profile_link_users) | where oldest_hours > 24 and waiting > 0 | project timestamp, waiting, oldest_hours, oldest_since = tostring(customDimensions.oldest_waiting_since)'
  }
  {
    name: 'failed-syncs'
    displayName: 'photo-sync: failed syncs above threshold'
    description: 'More than ${failedAlertThreshold} syncs ended `failed` in the last hour. The "sync finished" records carry reason_code; docs/troubleshooting.md says what to do for each.'
    severity: 2
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    query: 'traces | where message == "sync finished" and tostring(customDimensions.outcome) == "failed" | summarize failed = count(), reasons = make_set(tostring(customDimensions.reason_code), 10) | where failed > ${failedAlertThreshold}'
  }
]

module alertRules 'br/public:avm/res/insights/scheduled-query-rule:0.6.0' = [
  for rule in rules: {
    name: 'alert-${rule.name}'
    params: {
      name: 'photosync-${rule.name}-${resourceToken}'
      alertDisplayName: rule.displayName
      alertDescription: rule.description
      location: location
      tags: tags
      kind: 'LogAlert'
      enabled: true
      autoMitigate: true
      severity: rule.severity
      evaluationFrequency: rule.evaluationFrequency
      windowSize: rule.windowSize
      queryTimeRange: rule.?queryTimeRange
      scopes: [
        applicationInsights.id
      ]
      criterias: {
        allOf: [
          {
            query: rule.query
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: 0
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      actions: actions
    }
  }
]

// A stopped app writes no log records, and log search alerts are poor at noticing missing data; Azure
// Monitor's guidance is a metric alert for that (azure-monitor-docs articles/azure-monitor/alerts/
// alerts-types.md, "Log search alerts", note). The timer and queue functions run on on-demand
// instances (per-function scaling), so OnDemandFunctionExecutionCount (Microsoft.Web/sites, Flex
// Consumption; azure-docs monitor-functions-reference.md) stays at 0 only when nothing ran at all,
// not even the reconcile timer.
resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

module silentAlert 'br/public:avm/res/insights/metric-alert:0.4.1' = {
  name: 'alert-app-silent'
  params: {
    name: 'photosync-app-silent-${resourceToken}'
    alertDescription: 'No function of photo-sync ran on demand in ${silentWindow == 'P1D' ? '24' : '12'} hours, not even the reconcile timer (it ticks every minute). Check that the Function App is running and its last deployment succeeded.'
    location: 'global'
    tags: tags
    severity: 1
    evaluationFrequency: 'PT1H'
    windowSize: silentWindow
    autoMitigate: true
    scopes: [
      functionApp.id
    ]
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allof: [
        {
          name: 'no executions'
          metricNamespace: 'Microsoft.Web/sites'
          metricName: 'OnDemandFunctionExecutionCount'
          operator: 'LessThan'
          threshold: 1
          timeAggregation: 'Total'
          criterionType: 'StaticThresholdCriterion'
        }
      ]
    }
    actions: !empty(alertEmail) ? [actionGroup.outputs.resourceId] : []
  }
}

output actionGroupCreated bool = !empty(alertEmail)
output logAlertRuleNames array = [for (rule, i) in rules: alertRules[i].outputs.name]
output metricAlertRuleName string = silentAlert.outputs.name

//! DynamoDB adapter for deployment state. One table, partition key `pk` (string). Each item holds the record as
//! a JSON document (`doc`), its `version` for the conditional write, and for deployment records `expires_at`,
//! the table's TTL attribute. A write of version n is accepted only over version n - 1 (or no item for n = 1).

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::errors::aws_error;
use crate::domain::{
    Admission, BindingRecord, Census, CensusEntry, DeploymentRecord, FollowerLease, Lane, StoredBinding,
};
use crate::ports::{Claim, Coordination, Saved, StateStore};
use crate::{Error, Result};

const SERVICE: &str = "dynamodb";
pub const PARTITION_KEY: &str = "pk";
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// The item of the bindings due for the next sweep, and its one attribute, a string set of their labels.
const DUE_KEY: &str = "sweep#due";
const DUE_LABELS: &str = "labels";
/// The census item's attribute of one follower: this prefix and its owner.
const CENSUS_PREFIX: &str = "follower:";

/// The lane item's key and its one attribute, the lane's TAT in ms since the epoch.
const LANE_KEY: &str = "lane#elb-reads";
const LANE_TAT: &str = "tat_ms";

/// The installation's ELB read lane, one item of the state table (see [`crate::domain::lane`]).
#[derive(Debug, Clone)]
pub struct ReadLane {
    client: Client,
    table: String,
    lane: Lane,
}

impl ReadLane {
    /// An UpdateItem on the lane's item, its TAT named `#tat`.
    fn update_lane(&self) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(LANE_KEY.into()))
            .expression_attribute_names("#tat", LANE_TAT)
    }

    /// Reserves `reads` reads at `now_ms`: one UpdateItem adding their cost to the lane's TAT and reading the sum
    /// back; after a quiet spell, a second, conditional one moving the TAT up to now (lost to a concurrent
    /// catch-up, which did the same, without harm). Returns how long the reads wait.
    pub async fn reserve(&self, reads: u32, now_ms: u64) -> Result<std::time::Duration> {
        let cost = self.lane.cost_ms(reads);
        let out = self
            .update_lane()
            .update_expression("SET #kind = :kind ADD #tat :cost")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_values(":kind", AttributeValue::S("lane".into()))
            .expression_attribute_values(":cost", AttributeValue::N(cost.to_string()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "UpdateItem", &format!("table {}", self.table), e))?;
        let tat = out
            .attributes()
            .and_then(|a| a.get(LANE_TAT))
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| Error::Misconfigured(format!("the read lane in table {} has no {LANE_TAT}", self.table)))?;
        let Admission { wait, catch_up_ms } = self.lane.admit(tat, cost, now_ms);
        if let Some(delta) = catch_up_ms {
            let caught_up = self
                .update_lane()
                .update_expression("SET #tat = #tat + :delta")
                .condition_expression("#tat < :now")
                .expression_attribute_values(":delta", AttributeValue::N(delta.to_string()))
                .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
                .send()
                .await;
            match caught_up {
                Err(e) if !e.as_service_error().is_some_and(UpdateItemError::is_conditional_check_failed_exception) => {
                    return Err(aws_error(SERVICE, "UpdateItem", &format!("table {}", self.table), e));
                }
                _ => {}
            }
        }
        Ok(wait)
    }

    /// Gives back `reads` reads reserved and not to be made: an atomic add of their cost taken away, so that the
    /// lane's time goes to the reads that will be made.
    pub async fn give_back(&self, reads: u32) -> Result<()> {
        let cost = i64::try_from(self.lane.cost_ms(reads)).unwrap_or(i64::MAX);
        self.update_lane()
            .update_expression("ADD #tat :back")
            .expression_attribute_values(":back", AttributeValue::N((-cost).to_string()))
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "UpdateItem", &format!("table {}", self.table), e))?;
        Ok(())
    }
}

/// [`StateStore`] over one DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoState {
    client: Client,
    table: String,
}

impl DynamoState {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    /// The installation's read lane ([`crate::domain::lane`]) over this table.
    pub fn read_lane(&self, lane: Lane) -> ReadLane {
        ReadLane { client: self.client.clone(), table: self.table.clone(), lane }
    }

    async fn get<T: DeserializeOwned>(&self, key: String) -> Result<Option<T>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(key.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "GetItem", &format!("table {}", self.table), e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        self.decode(&key, item).map(Some)
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, item: &HashMap<String, AttributeValue>) -> Result<T> {
        let doc = item.get("doc").and_then(|v| v.as_s().ok()).ok_or_else(|| {
            Error::Misconfigured(format!("state item {key} in table {} has no `doc` attribute", self.table))
        })?;
        serde_json::from_str(doc).map_err(|source| Error::Decode { what: format!("state item {key}"), source })
    }

    async fn put(&self, w: VersionedWrite) -> Result<Saved> {
        let req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(w.item))
            .condition_expression(w.condition)
            .set_expression_attribute_names(Some(w.names))
            .set_expression_attribute_values(w.values);
        conditional(req.send().await, "PutItem", &self.table, PutItemError::is_conditional_check_failed_exception)
    }
}

/// One record's versioned write: the item, and the condition that it is the first version or one above the
/// stored one.
struct VersionedWrite {
    item: HashMap<String, AttributeValue>,
    condition: &'static str,
    names: HashMap<String, String>,
    values: Option<HashMap<String, AttributeValue>>,
}

impl VersionedWrite {
    fn new<T: Serialize>(key: String, kind: &str, version: u64, expires_at: Option<u64>, record: &T) -> Result<Self> {
        let doc = serde_json::to_string(record)
            .map_err(|source| Error::Decode { what: format!("state item {key}"), source })?;
        let mut item: HashMap<String, AttributeValue> = HashMap::from([
            (PARTITION_KEY.to_string(), AttributeValue::S(key)),
            ("kind".to_string(), AttributeValue::S(kind.to_string())),
            ("version".to_string(), AttributeValue::N(version.to_string())),
            ("doc".to_string(), AttributeValue::S(doc)),
        ]);
        if let Some(ttl) = expires_at {
            item.insert(TTL_ATTRIBUTE.to_string(), AttributeValue::N(ttl.to_string()));
        }
        Ok(if version <= 1 {
            Self {
                item,
                condition: "attribute_not_exists(#pk)",
                names: HashMap::from([("#pk".to_string(), PARTITION_KEY.to_string())]),
                values: None,
            }
        } else {
            Self {
                item,
                condition: "#v = :prev",
                names: HashMap::from([("#v".to_string(), "version".to_string())]),
                values: Some(HashMap::from([(":prev".to_string(), AttributeValue::N((version - 1).to_string()))])),
            }
        })
    }

    fn of_deployment(record: &DeploymentRecord) -> Result<Self> {
        let key = DeploymentRecord::key(&record.deployment_id);
        Self::new(key, "deployment", record.version, Some(record.expires_at), record)
    }

    fn of_binding(record: &BindingRecord) -> Result<Self> {
        let key = BindingRecord::key(&record.application, &record.deployment_group);
        Self::new(key, "binding", record.version, None, record)
    }

    /// The same write as one action of a transaction.
    fn into_transaction_item(self, table: &str) -> Result<TransactWriteItem> {
        let put = Put::builder()
            .table_name(table)
            .set_item(Some(self.item))
            .condition_expression(self.condition)
            .set_expression_attribute_names(Some(self.names))
            .set_expression_attribute_values(self.values)
            .build()
            .map_err(|e| Error::Aws {
                service: SERVICE,
                operation: "TransactWriteItems",
                kind: crate::AwsErrorKind::Invalid,
                message: format!("could not build the write of a record: {e}"),
                source: Some(Box::new(e)),
            })?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}

/// A conditional write's outcome: written, lost to another writer (`lost`: its condition failed), or an error.
fn conditional<O, E, R>(
    out: std::result::Result<O, SdkError<E, R>>,
    operation: &'static str,
    table: &str,
    lost: impl Fn(&E) -> bool,
) -> Result<Saved>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match out {
        Ok(_) => Ok(Saved::Written),
        Err(e) if e.as_service_error().is_some_and(&lost) => Ok(Saved::Conflict),
        Err(e) => Err(aws_error(SERVICE, operation, &format!("table {table}"), e)),
    }
}

impl StateStore for DynamoState {
    async fn deployment(&self, deployment_id: &str) -> Result<Option<DeploymentRecord>> {
        self.get(DeploymentRecord::key(deployment_id)).await
    }

    async fn put_deployment(&self, record: &DeploymentRecord) -> Result<Saved> {
        self.put(VersionedWrite::of_deployment(record)?).await
    }

    async fn binding(&self, application: &str, group: &str) -> Result<Option<BindingRecord>> {
        self.get(BindingRecord::key(application, group)).await
    }

    /// One TransactWriteItems of the two versioned Puts: one round trip instead of two, and on a process's first
    /// invocation no second connection to DynamoDB. Each Put is authorised as a PutItem.
    async fn put_deployment_and_binding(
        &self,
        deployment: &DeploymentRecord,
        binding: &BindingRecord,
    ) -> Result<Saved> {
        let writes = [VersionedWrite::of_deployment(deployment)?, VersionedWrite::of_binding(binding)?];
        let items = writes.into_iter().map(|w| w.into_transaction_item(&self.table)).collect::<Result<Vec<_>>>()?;
        let out = self.client.transact_write_items().set_transact_items(Some(items)).send().await;
        // Cancelled: a version check failed (or another transaction held an item); neither record was written.
        conditional(out, "TransactWriteItems", &self.table, TransactWriteItemsError::is_transaction_canceled_exception)
    }

    async fn put_binding(&self, record: &BindingRecord) -> Result<Saved> {
        self.put(VersionedWrite::of_binding(record)?).await
    }

    async fn follower(&self, application: &str, group: &str) -> Result<Option<FollowerLease>> {
        self.get(FollowerLease::key(application, group)).await
    }

    async fn put_follower(&self, lease: &FollowerLease) -> Result<Saved> {
        let key = FollowerLease::key(&lease.application, &lease.deployment_group);
        self.put(VersionedWrite::new(key, "follower", lease.version, None, lease)?).await
    }

    async fn stored_binding(&self, application: &str, group: &str) -> Result<Option<StoredBinding>> {
        self.get(StoredBinding::key(application, group)).await
    }

    /// A Scan filtered on the item kind: the table has no sort key, and holds few items besides deployment
    /// records (which expire). Read page by page; each page is one read of the table's capacity.
    async fn stored_bindings(&self) -> Result<Vec<Result<StoredBinding>>> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("#k = :kind")
                .expression_attribute_names("#k", "kind")
                .expression_attribute_values(":kind", AttributeValue::S(StoredBinding::KIND.to_string()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_error(SERVICE, "Scan", &format!("table {}", self.table), e))?;
            for item in page.items() {
                let key = item.get(PARTITION_KEY).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                out.push(self.decode(&key, item));
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn put_stored_binding(&self, stored: &StoredBinding) -> Result<Saved> {
        let key = StoredBinding::key(&stored.application, &stored.deployment_group);
        self.put(VersionedWrite::new(key, StoredBinding::KIND, stored.version, None, stored)?).await
    }

    async fn remove_stored_binding(&self, application: &str, group: &str, version: u64) -> Result<Saved> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(StoredBinding::key(application, group)))
            .condition_expression("#v = :v")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
            .send()
            .await;
        conditional(out, "DeleteItem", &self.table, DeleteItemError::is_conditional_check_failed_exception)
    }
}

impl Coordination for DynamoState {
    /// One UpdateItem on the census item: the follower's own attribute (`follower:<owner>`, its heartbeat in ms)
    /// set or removed, long-gone ones removed, the whole item returned. Each follower writes only its own
    /// attribute, so no write is conditional and none is lost to another's.
    async fn census(&self, entry: &CensusEntry) -> Result<Census> {
        let mut names = HashMap::from([("#kind".to_string(), "kind".to_string())]);
        let mut values = HashMap::from([(":kind".to_string(), AttributeValue::S("census".into()))]);
        let mut set = vec!["#kind = :kind".to_string()];
        let mut remove = Vec::new();
        names.insert("#me".into(), format!("{CENSUS_PREFIX}{}", entry.owner));
        match entry.heartbeat_ms {
            Some(at) => {
                set.push("#me = :at".into());
                values.insert(":at".into(), AttributeValue::N(at.to_string()));
            }
            None => remove.push("#me".to_string()),
        }
        for (i, gone) in entry.forget.iter().filter(|g| **g != entry.owner).enumerate() {
            names.insert(format!("#gone{i}"), format!("{CENSUS_PREFIX}{gone}"));
            remove.push(format!("#gone{i}"));
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(Census::KEY.into()))
            .update_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "UpdateItem", &format!("table {}", self.table), e))?;
        let heartbeats = out
            .attributes()
            .into_iter()
            .flatten()
            .filter_map(|(name, v)| {
                let owner = name.strip_prefix(CENSUS_PREFIX)?;
                Some((owner.to_string(), v.as_n().ok()?.parse().ok()?))
            })
            .collect();
        Ok(Census { heartbeats })
    }

    /// One conditional UpdateItem on the item `read#<what>`: its `read_at_ms` and owner set if no read is pending
    /// (absent, already started before now, or claimed by this same invocation: Lambda retries a crashed attempt
    /// with its request id, and that retry must not defer to its own dead claim). The item expires a day later
    /// through the table's TTL.
    async fn claim_read(&self, what: &str, owner: &str, now_ms: u64, read_at_ms: u64) -> Result<Claim> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(format!("read#{what}")))
            .update_expression("SET #kind = :kind, #at = :at, #owner = :me, #ttl = :ttl")
            .condition_expression("attribute_not_exists(#at) OR #at < :now OR #owner = :me")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#at", "read_at_ms")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":kind", AttributeValue::S("read".into()))
            .expression_attribute_values(":at", AttributeValue::N(read_at_ms.to_string()))
            .expression_attribute_values(":me", AttributeValue::S(owner.into()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
            .expression_attribute_values(":ttl", AttributeValue::N((now_ms / 1000 + 86_400).to_string()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match out {
            Ok(out) => {
                let was_mine = out.attributes().and_then(|a| a.get("owner")).and_then(|v| v.as_s().ok())
                    == Some(&owner.to_string());
                Ok(if was_mine { Claim::TakenBack } else { Claim::Taken })
            }
            Err(e) if e.as_service_error().is_some_and(UpdateItemError::is_conditional_check_failed_exception) => {
                Ok(Claim::Pending)
            }
            Err(e) => Err(aws_error(SERVICE, "UpdateItem", &format!("table {}", self.table), e)),
        }
    }

    /// One UpdateItem adding the labels to the due item's string set (a set: marking one twice keeps it once).
    async fn mark_due(&self, labels: &[String]) -> Result<()> {
        let labels: std::collections::BTreeSet<&String> = labels.iter().collect();
        if labels.is_empty() {
            return Ok(());
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(DUE_KEY.into()))
            .update_expression("SET #kind = :kind ADD #labels :labels")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#labels", DUE_LABELS)
            .expression_attribute_values(":kind", AttributeValue::S("due".into()))
            .expression_attribute_values(":labels", AttributeValue::Ss(labels.into_iter().cloned().collect()))
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "UpdateItem", &format!("table {}", self.table), e))?;
        Ok(())
    }

    /// One UpdateItem removing the set and returning it: taking and reading in one call, so that two sweeps never
    /// take the same binding. Nothing due (no set) fails its condition, answered as an empty set.
    async fn take_due(&self) -> Result<std::collections::BTreeSet<String>> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(DUE_KEY.into()))
            .update_expression("REMOVE #labels")
            .condition_expression("attribute_exists(#labels)")
            .expression_attribute_names("#labels", DUE_LABELS)
            .return_values(ReturnValue::UpdatedOld)
            .send()
            .await;
        match out {
            Ok(out) => Ok(out
                .attributes()
                .and_then(|a| a.get(DUE_LABELS))
                .and_then(|v| v.as_ss().ok())
                .into_iter()
                .flatten()
                .cloned()
                .collect()),
            Err(e) if e.as_service_error().is_some_and(UpdateItemError::is_conditional_check_failed_exception) => {
                Ok(std::collections::BTreeSet::new())
            }
            Err(e) => Err(aws_error(SERVICE, "UpdateItem", &format!("table {}", self.table), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::operation::delete_item::{DeleteItemError, DeleteItemOutput};
    use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
    use aws_sdk_dynamodb::operation::put_item::{PutItemError, PutItemOutput};
    use aws_sdk_dynamodb::operation::scan::ScanOutput;
    use aws_sdk_dynamodb::types::error::ConditionalCheckFailedException;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    use super::*;

    fn record(version: u64) -> DeploymentRecord {
        let mut r = DeploymentRecord::new("d-1", "web", "web-bg", 1_700_000_000_000);
        r.version = version;
        r
    }

    #[tokio::test]
    async fn first_write_requires_no_item_and_later_writes_the_previous_version() {
        let first = mock!(Client::put_item)
            .match_requests(|r| {
                r.table_name() == Some("state")
                    && r.condition_expression() == Some("attribute_not_exists(#pk)")
                    && r.item().and_then(|i| i.get("pk")).and_then(|v| v.as_s().ok()).map(String::as_str)
                        == Some("deployment#d-1")
                    && r.item().and_then(|i| i.get(TTL_ATTRIBUTE)).is_some()
            })
            .then_output(|| PutItemOutput::builder().build());
        let later = mock!(Client::put_item)
            .match_requests(|r| {
                r.condition_expression() == Some("#v = :prev")
                    && r.expression_attribute_values().and_then(|v| v.get(":prev")).and_then(|v| v.as_n().ok())
                        == Some(&"2".to_string())
                    && r.item().and_then(|i| i.get("version")).and_then(|v| v.as_n().ok()) == Some(&"3".to_string())
            })
            .then_output(|| PutItemOutput::builder().build());
        let lost = mock!(Client::put_item).then_error(|| {
            PutItemError::ConditionalCheckFailedException(ConditionalCheckFailedException::builder().build())
        });
        let db = DynamoState::new(
            mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&first, &later, &lost]),
            "state".into(),
        );
        assert_eq!(db.put_deployment(&record(1)).await.unwrap(), Saved::Written);
        assert_eq!(db.put_deployment(&record(3)).await.unwrap(), Saved::Written);
        assert_eq!(db.put_deployment(&record(4)).await.unwrap(), Saved::Conflict);
    }

    #[tokio::test]
    async fn both_records_go_in_one_transaction_each_under_its_version_check_and_a_cancellation_is_a_conflict() {
        use aws_sdk_dynamodb::operation::transact_write_items::{TransactWriteItemsError, TransactWriteItemsOutput};
        use aws_sdk_dynamodb::types::error::TransactionCanceledException;
        let put_of = |i: &TransactWriteItem| {
            let p = i.put()?;
            let key = p.item().get("pk")?.as_s().ok()?.clone();
            let prev =
                p.expression_attribute_values().and_then(|v| v.get(":prev")).and_then(|v| v.as_n().ok()).cloned();
            Some((p.table_name().to_string(), key, p.condition_expression().map(str::to_string), prev))
        };
        let together = mock!(Client::transact_write_items)
            .match_requests(move |r| {
                let puts: Vec<_> = r.transact_items().iter().map(put_of).collect();
                puts == vec![
                    Some(("state".into(), "deployment#d-1".into(), Some("#v = :prev".into()), Some("2".into()))),
                    Some(("state".into(), "binding#web#web-bg".into(), Some("attribute_not_exists(#pk)".into()), None)),
                ]
            })
            .then_output(|| TransactWriteItemsOutput::builder().build());
        let cancelled = mock!(Client::transact_write_items).then_error(|| {
            TransactWriteItemsError::TransactionCanceledException(TransactionCanceledException::builder().build())
        });
        let db = DynamoState::new(
            mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&together, &cancelled]),
            "state".into(),
        );
        let binding = BindingRecord {
            application: "web".into(),
            deployment_group: "web-bg".into(),
            version: 1,
            ..BindingRecord::default()
        };
        assert_eq!(db.put_deployment_and_binding(&record(3), &binding).await.unwrap(), Saved::Written);
        assert_eq!(db.put_deployment_and_binding(&record(3), &binding).await.unwrap(), Saved::Conflict);
    }

    #[tokio::test]
    async fn items_round_trip_and_a_missing_item_is_none() {
        let doc = serde_json::to_string(&record(2)).unwrap();
        let found = mock!(Client::get_item)
            .match_requests(|r| {
                r.consistent_read() == Some(true)
                    && r.key().and_then(|k| k.get("pk")).and_then(|v| v.as_s().ok()).map(String::as_str)
                        == Some("deployment#d-1")
            })
            .then_output(move || GetItemOutput::builder().item("doc", AttributeValue::S(doc.clone())).build());
        let missing = mock!(Client::get_item).then_output(|| GetItemOutput::builder().build());
        let garbled = mock!(Client::get_item)
            .then_output(|| GetItemOutput::builder().item("doc", AttributeValue::S("{".into())).build());
        let db = DynamoState::new(
            mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&found, &missing, &garbled]),
            "state".into(),
        );
        assert_eq!(db.deployment("d-1").await.unwrap(), Some(record(2)));
        assert_eq!(db.deployment("d-1").await.unwrap(), None);
        assert!(matches!(db.deployment("d-1").await, Err(Error::Decode { .. })));
    }

    #[tokio::test]
    async fn the_read_lane_adds_its_cost_and_catches_up_only_after_a_quiet_spell() {
        let n = |r: &aws_sdk_dynamodb::operation::update_item::UpdateItemInput, k: &str| {
            r.expression_attribute_values().and_then(|v| v.get(k)).and_then(|v| v.as_n().ok()).cloned()
        };
        let lane = Lane::new(2.0, 10.0);
        // Busy: the lane's TAT is 10 s ahead of now; five reads cost 2.5 s and wait 12.5 - 5 s.
        let busy = mock!(Client::update_item)
            .match_requests(move |r| {
                r.key().and_then(|k| k.get("pk")).and_then(|v| v.as_s().ok()).map(String::as_str) == Some(LANE_KEY)
                    && r.update_expression() == Some("SET #kind = :kind ADD #tat :cost")
                    && r.return_values() == Some(&ReturnValue::UpdatedNew)
                    && n(r, ":cost") == Some("2500".into())
            })
            .then_output(|| {
                aws_sdk_dynamodb::operation::update_item::UpdateItemOutput::builder()
                    .attributes(LANE_TAT, AttributeValue::N("1012500".into()))
                    .build()
            });
        // Quiet: the add left the TAT behind now; one conditional write moves it up, and a lost race is no error.
        let quiet = mock!(Client::update_item).then_output(|| {
            aws_sdk_dynamodb::operation::update_item::UpdateItemOutput::builder()
                .attributes(LANE_TAT, AttributeValue::N("502500".into()))
                .build()
        });
        let catch_up = mock!(Client::update_item)
            .match_requests(move |r| {
                r.condition_expression() == Some("#tat < :now")
                    && n(r, ":delta") == Some("500000".into())
                    && n(r, ":now") == Some("1000000".into())
            })
            .then_error(|| {
                UpdateItemError::ConditionalCheckFailedException(ConditionalCheckFailedException::builder().build())
            });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&busy, &quiet, &catch_up]);
        let lane = DynamoState::new(client, "state".into()).read_lane(lane);
        assert_eq!(lane.reserve(5, 1_000_000).await.unwrap(), std::time::Duration::from_millis(7500));
        assert_eq!(lane.reserve(5, 1_000_000).await.unwrap(), std::time::Duration::ZERO);
        assert_eq!(catch_up.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_read_is_claimed_for_its_owner_and_a_pending_claim_of_anothers_is_left() {
        let claim = mock!(Client::update_item)
            .match_requests(|r| {
                let v = |k: &str| r.expression_attribute_values().and_then(|v| v.get(k)).cloned();
                r.key().and_then(|k| k.get("pk")).and_then(|v| v.as_s().ok()).map(String::as_str)
                    == Some("read#membership#web/web-bg")
                    && r.condition_expression() == Some("attribute_not_exists(#at) OR #at < :now OR #owner = :me")
                    && v(":me") == Some(AttributeValue::S("req-1".into()))
                    && v(":at") == Some(AttributeValue::N("1300".into()))
                    && v(":now") == Some(AttributeValue::N("1000".into()))
                    && r.return_values() == Some(&ReturnValue::AllOld)
            })
            .then_output(|| aws_sdk_dynamodb::operation::update_item::UpdateItemOutput::builder().build());
        let pending = mock!(Client::update_item).then_error(|| {
            UpdateItemError::ConditionalCheckFailedException(ConditionalCheckFailedException::builder().build())
        });
        // A retry of req-1 finds its own claim in the item it replaced.
        let taken_back = mock!(Client::update_item).then_output(|| {
            aws_sdk_dynamodb::operation::update_item::UpdateItemOutput::builder()
                .attributes("owner", AttributeValue::S("req-1".into()))
                .attributes("read_at_ms", AttributeValue::N("1300".into()))
                .build()
        });
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&claim, &pending, &taken_back]);
        let state = DynamoState::new(client, "state".into());
        let what = "membership#web/web-bg";
        assert_eq!(state.claim_read(what, "req-1", 1000, 1300).await.unwrap(), Claim::Taken);
        assert_eq!(state.claim_read(what, "req-2", 1000, 1300).await.unwrap(), Claim::Pending);
        assert_eq!(state.claim_read(what, "req-1", 1100, 1400).await.unwrap(), Claim::TakenBack);
        assert_eq!(claim.num_calls(), 1);
    }

    fn stored_item(group: &str, version: u64) -> HashMap<String, AttributeValue> {
        let doc = serde_json::json!({"application": "web", "deployment_group": group, "version": version,
                                     "binding": {"application": "web", "deployment_group": group}});
        HashMap::from([
            ("pk".to_string(), AttributeValue::S(StoredBinding::key("web", group))),
            ("doc".to_string(), AttributeValue::S(doc.to_string())),
        ])
    }

    #[tokio::test]
    async fn stored_bindings_are_read_page_by_page_and_a_bad_item_fails_alone() {
        let first = mock!(Client::scan)
            .match_requests(|r| {
                r.filter_expression() == Some("#k = :kind")
                    && r.expression_attribute_values().and_then(|v| v.get(":kind")).and_then(|v| v.as_s().ok())
                        == Some(&"config".to_string())
                    && r.exclusive_start_key().is_none()
            })
            .then_output(|| {
                ScanOutput::builder()
                    .items(stored_item("a-bg", 1))
                    .items(HashMap::from([("pk".to_string(), AttributeValue::S("config#web#bad".into()))]))
                    .last_evaluated_key("pk", AttributeValue::S("config#web#bad".into()))
                    .build()
            });
        let second = mock!(Client::scan)
            .match_requests(|r| {
                r.exclusive_start_key().and_then(|k| k.get("pk")).and_then(|v| v.as_s().ok())
                    == Some(&"config#web#bad".to_string())
            })
            .then_output(|| ScanOutput::builder().items(stored_item("b-bg", 3)).build());
        let db =
            DynamoState::new(mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&first, &second]), "state".into());
        let items = db.stored_bindings().await.unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().map(|s| s.deployment_group.as_str()).ok(), Some("a-bg"));
        assert!(items[1].as_ref().is_err_and(|e| e.to_string().contains("config#web#bad")));
        assert_eq!(items[2].as_ref().map(|s| s.version).ok(), Some(3));
    }

    #[tokio::test]
    async fn a_stored_binding_is_removed_only_at_the_version_read() {
        let removed = mock!(Client::delete_item)
            .match_requests(|r| {
                r.condition_expression() == Some("#v = :v")
                    && r.expression_attribute_values().and_then(|v| v.get(":v")).and_then(|v| v.as_n().ok())
                        == Some(&"2".to_string())
                    && r.key().and_then(|k| k.get("pk")).and_then(|v| v.as_s().ok())
                        == Some(&"config#web#web-bg".to_string())
            })
            .then_output(|| DeleteItemOutput::builder().build());
        let lost = mock!(Client::delete_item).then_error(|| {
            DeleteItemError::ConditionalCheckFailedException(ConditionalCheckFailedException::builder().build())
        });
        let db =
            DynamoState::new(mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&removed, &lost]), "state".into());
        assert_eq!(db.remove_stored_binding("web", "web-bg", 2).await.unwrap(), Saved::Written);
        assert_eq!(db.remove_stored_binding("web", "web-bg", 2).await.unwrap(), Saved::Conflict);
    }
    #[tokio::test]
    async fn due_bindings_are_added_to_one_set_and_taken_with_the_write_that_removes_them() {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
        let key_is_due = |r: &aws_sdk_dynamodb::operation::update_item::UpdateItemInput| {
            r.table_name() == Some("state")
                && r.key().and_then(|k| k.get("pk")).and_then(|v| v.as_s().ok()).map(String::as_str) == Some(DUE_KEY)
        };
        let marked = mock!(Client::update_item)
            .match_requests(move |r| {
                let labels =
                    r.expression_attribute_values().and_then(|v| v.get(":labels")).and_then(|v| v.as_ss().ok());
                key_is_due(r)
                    && r.update_expression() == Some("SET #kind = :kind ADD #labels :labels")
                    && labels == Some(&vec!["web/a-bg".to_string(), "web/b-bg".to_string()])
            })
            .then_output(|| UpdateItemOutput::builder().build());
        let taken = mock!(Client::update_item)
            .match_requests(move |r| {
                key_is_due(r)
                    && r.update_expression() == Some("REMOVE #labels")
                    && r.condition_expression() == Some("attribute_exists(#labels)")
                    && r.return_values() == Some(&ReturnValue::UpdatedOld)
            })
            .then_output(|| {
                UpdateItemOutput::builder()
                    .attributes(DUE_LABELS, AttributeValue::Ss(vec!["web/a-bg".into(), "web/b-bg".into()]))
                    .build()
            });
        let none = mock!(Client::update_item).then_error(|| {
            UpdateItemError::ConditionalCheckFailedException(ConditionalCheckFailedException::builder().build())
        });
        let db = DynamoState::new(
            mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&marked, &taken, &none]),
            "state".into(),
        );
        // A string set holds each once: the label given twice is sent once.
        db.mark_due(&["web/b-bg".into(), "web/a-bg".into(), "web/b-bg".into()]).await.unwrap();
        // Nothing to mark sends nothing (the mock client would answer a fourth call with an error).
        db.mark_due(&[]).await.unwrap();
        let due = db.take_due().await.unwrap();
        assert_eq!(due.into_iter().collect::<Vec<_>>(), ["web/a-bg", "web/b-bg"]);
        assert!(db.take_due().await.unwrap().is_empty(), "nothing due is not an error");
        assert_eq!(marked.num_calls() + taken.num_calls() + none.num_calls(), 3);
    }
}

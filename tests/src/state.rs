//! The state table in memory (records, bindings, the follower's lease and the coordination items), and
//! Lambda's asynchronous invoke of the follower, recorded.

use super::*;

/// DynamoDB in memory, with the same version rule as the real adapter.
#[derive(Clone, Default)]
pub struct FakeState {
    pub(crate) deployments: Arc<Mutex<BTreeMap<String, DeploymentRecord>>>,
    pub(crate) bindings: Arc<Mutex<BTreeMap<String, BindingRecord>>>,
    pub(crate) followers: Arc<Mutex<BTreeMap<String, FollowerLease>>>,
    /// Stored bindings by key; a `String` is an item that does not decode.
    pub(crate) stored: Arc<Mutex<BTreeMap<String, std::result::Result<StoredBinding, String>>>>,
    pub(crate) census: Arc<Mutex<Census>>,
    /// Pending reads claimed (`StateStore::claim_read`), by what they read.
    pub(crate) claims: Arc<Mutex<BTreeMap<String, (u64, String)>>>,
    /// Bindings due for the next sweep (`StateStore::mark_due`), by label.
    pub(crate) due: Arc<Mutex<BTreeSet<String>>>,
    pub(crate) calls: Arc<Calls>,
}

impl FakeState {
    /// The followers' census as it stands.
    pub fn census_now(&self) -> Census {
        self.census.lock().unwrap().clone()
    }

    /// The bindings due for the next sweep, as stored.
    pub fn due_now(&self) -> BTreeSet<String> {
        self.due.lock().unwrap().clone()
    }

    /// Another follower's heartbeat in the census (a deployment of another service being followed).
    pub fn count_in(&self, owner: &str, at_ms: u64) {
        self.census.lock().unwrap().heartbeats.insert(owner.to_string(), at_ms);
    }

    pub fn record(&self, id: &str) -> Option<DeploymentRecord> {
        self.deployments.lock().unwrap().get(id).cloned()
    }

    /// Stores a binding as `bluegreen-mirror bindings apply` would.
    pub fn store_binding(&self, binding: &bluegreen_mirror::config::Binding) {
        let key = StoredBinding::key(&binding.application, &binding.deployment_group);
        let mut m = self.stored.lock().unwrap();
        let version = m.get(&key).and_then(|s| s.as_ref().ok()).map_or(0, |s| s.version) + 1;
        m.insert(
            key,
            Ok(StoredBinding {
                application: binding.application.clone(),
                deployment_group: binding.deployment_group.clone(),
                version,
                binding: serde_json::to_value(binding).unwrap(),
                ..Default::default()
            }),
        );
    }

    pub fn stored_binding_of(&self, app: &str, group: &str) -> Option<StoredBinding> {
        self.stored.lock().unwrap().get(&StoredBinding::key(app, group)).and_then(|s| s.clone().ok())
    }

    /// Stores an item under `key` as it is, usable or not.
    pub fn store_raw(&self, key: &str, item: std::result::Result<StoredBinding, String>) {
        self.stored.lock().unwrap().insert(key.to_string(), item);
    }

    pub fn binding_record(&self, app: &str, group: &str) -> Option<BindingRecord> {
        self.bindings.lock().unwrap().get(&BindingRecord::key(app, group)).cloned()
    }

    pub fn lease(&self, app: &str, group: &str) -> Option<FollowerLease> {
        self.followers.lock().unwrap().get(&FollowerLease::key(app, group)).cloned()
    }

    pub fn forget(&self, id: &str) {
        self.deployments.lock().unwrap().remove(id);
    }
}

fn versioned_put<T: Clone>(
    map: &Mutex<BTreeMap<String, T>>,
    key: String,
    version: u64,
    stored: impl Fn(&T) -> u64,
    rec: &T,
) -> Saved {
    let mut m = map.lock().unwrap();
    let current = m.get(&key).map(&stored).unwrap_or(0);
    if current + 1 != version {
        return Saved::Conflict;
    }
    m.insert(key, rec.clone());
    Saved::Written
}

impl StateStore for FakeState {
    async fn deployment(&self, deployment_id: &str) -> Result<Option<DeploymentRecord>> {
        self.calls.enter("dynamodb:GetItem")?;
        self.calls.stall("dynamodb:GetItem").await;
        Ok(self.record(deployment_id))
    }

    async fn put_deployment(&self, record: &DeploymentRecord) -> Result<Saved> {
        self.calls.enter("dynamodb:PutItem")?;
        Ok(versioned_put(&self.deployments, record.deployment_id.clone(), record.version, |r| r.version, record))
    }

    async fn put_deployment_and_binding(
        &self,
        deployment: &DeploymentRecord,
        binding: &BindingRecord,
    ) -> Result<Saved> {
        self.calls.enter("dynamodb:TransactWriteItems")?;
        self.calls.stall("dynamodb:TransactWriteItems").await;
        let mut deployments = self.deployments.lock().unwrap();
        let mut bindings = self.bindings.lock().unwrap();
        let key = BindingRecord::key(&binding.application, &binding.deployment_group);
        let current = (
            deployments.get(&deployment.deployment_id).map_or(0, |r| r.version),
            bindings.get(&key).map_or(0, |r| r.version),
        );
        if current != (deployment.version.saturating_sub(1), binding.version.saturating_sub(1)) {
            return Ok(Saved::Conflict);
        }
        deployments.insert(deployment.deployment_id.clone(), deployment.clone());
        bindings.insert(key, binding.clone());
        Ok(Saved::Written)
    }

    async fn binding(&self, application: &str, group: &str) -> Result<Option<BindingRecord>> {
        self.calls.enter("dynamodb:GetItem")?;
        self.calls.stall("dynamodb:GetItem").await;
        Ok(self.binding_record(application, group))
    }

    async fn put_binding(&self, record: &BindingRecord) -> Result<Saved> {
        self.calls.enter("dynamodb:PutItem")?;
        let key = BindingRecord::key(&record.application, &record.deployment_group);
        Ok(versioned_put(&self.bindings, key, record.version, |r| r.version, record))
    }

    async fn follower(&self, application: &str, group: &str) -> Result<Option<FollowerLease>> {
        self.calls.enter("dynamodb:GetItem")?;
        Ok(self.lease(application, group))
    }

    async fn put_follower(&self, lease: &FollowerLease) -> Result<Saved> {
        self.calls.enter("dynamodb:PutItem")?;
        let key = FollowerLease::key(&lease.application, &lease.deployment_group);
        Ok(versioned_put(&self.followers, key, lease.version, |r| r.version, lease))
    }

    async fn stored_binding(&self, application: &str, group: &str) -> Result<Option<StoredBinding>> {
        self.calls.enter("dynamodb:GetItem")?;
        match self.stored.lock().unwrap().get(&StoredBinding::key(application, group)) {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(s.clone())),
            Some(Err(why)) => Err(Error::Misconfigured(why.clone())),
        }
    }

    async fn stored_bindings(&self) -> Result<Vec<Result<StoredBinding>>> {
        self.calls.enter("dynamodb:Scan")?;
        Ok(self.stored.lock().unwrap().values().map(|s| s.clone().map_err(Error::Misconfigured)).collect())
    }

    async fn put_stored_binding(&self, stored: &StoredBinding) -> Result<Saved> {
        self.calls.enter("dynamodb:PutItem")?;
        let key = StoredBinding::key(&stored.application, &stored.deployment_group);
        let mut m = self.stored.lock().unwrap();
        let current = m.get(&key).and_then(|s| s.as_ref().ok()).map_or(0, |s| s.version);
        if current + 1 != stored.version {
            return Ok(Saved::Conflict);
        }
        m.insert(key, Ok(stored.clone()));
        Ok(Saved::Written)
    }

    async fn remove_stored_binding(&self, application: &str, group: &str, version: u64) -> Result<Saved> {
        self.calls.enter("dynamodb:DeleteItem")?;
        let key = StoredBinding::key(application, group);
        let mut m = self.stored.lock().unwrap();
        if m.get(&key).and_then(|s| s.as_ref().ok()).map(|s| s.version) != Some(version) {
            return Ok(Saved::Conflict);
        }
        m.remove(&key);
        Ok(Saved::Written)
    }
}

impl Coordination for FakeState {
    async fn claim_read(&self, what: &str, owner: &str, now_ms: u64, read_at_ms: u64) -> Result<Claim> {
        self.calls.enter("dynamodb:UpdateItem")?;
        let mut claims = self.claims.lock().unwrap();
        let was = claims.get(what).cloned();
        if was.as_ref().is_some_and(|(at, by)| *at >= now_ms && by != owner) {
            return Ok(Claim::Pending);
        }
        claims.insert(what.to_string(), (read_at_ms, owner.to_string()));
        Ok(if was.is_some_and(|(_, by)| by == owner) { Claim::TakenBack } else { Claim::Taken })
    }

    async fn census(&self, entry: &CensusEntry) -> Result<Census> {
        self.calls.enter("dynamodb:UpdateItem")?;
        let mut census = self.census.lock().unwrap();
        match entry.heartbeat_ms {
            Some(at) => census.heartbeats.insert(entry.owner.clone(), at),
            None => census.heartbeats.remove(&entry.owner),
        };
        for gone in entry.forget.iter().filter(|g| **g != entry.owner) {
            census.heartbeats.remove(gone);
        }
        Ok(census.clone())
    }

    async fn mark_due(&self, labels: &[String]) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        self.calls.enter("dynamodb:UpdateItem")?;
        self.due.lock().unwrap().extend(labels.iter().cloned());
        Ok(())
    }

    async fn take_due(&self) -> Result<BTreeSet<String>> {
        self.calls.enter("dynamodb:UpdateItem")?;
        Ok(std::mem::take(&mut *self.due.lock().unwrap()))
    }
}

/// Lambda's asynchronous invoke of the follower, recorded.
#[derive(Clone, Default)]
pub struct FakeFollowers {
    started: Arc<Mutex<Vec<FollowRequest>>>,
}

impl FakeFollowers {
    pub fn started(&self) -> Vec<FollowRequest> {
        self.started.lock().unwrap().clone()
    }
}

impl Followers for FakeFollowers {
    async fn start(&self, request: &FollowRequest) -> Result<bool> {
        self.started.lock().unwrap().push(request.clone());
        Ok(true)
    }
}

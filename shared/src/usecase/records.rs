//! The records in the state table: a deployment's phases and flips, and a binding's live group, each written
//! under its version check; a write lost to another writer reads again and retries, and a record that cannot be
//! written never fails a deployment (the truth is re-readable from ELB).

use super::{Engine, Tracker};
use crate::clock::now_ms;
use crate::config::Binding;
use crate::domain::{BindingRecord, DeploymentRecord, WouldBe};
use crate::ports::{Coordination, Deployments, Followers, LoadBalancers, Saved, StateStore};
use crate::{Error, Result};

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// Read-modify-write of the deployment record with the version check, retried on conflict. State is a
    /// record, not the truth: a failure here is noted and never fails the hook.
    pub(super) async fn record<U>(&self, b: &Binding, deployment_id: &str, t: &Tracker, update: U)
    where
        U: Fn(&mut DeploymentRecord) + Send + Sync,
    {
        self.record_over(b, deployment_id, None, t, update).await;
    }

    /// [`Self::record`] over a record read earlier in the invocation: its first write needs no read, and a
    /// write lost to another writer reads the record again.
    pub(super) async fn record_over<U>(
        &self,
        b: &Binding,
        deployment_id: &str,
        known: Option<DeploymentRecord>,
        t: &Tracker,
        update: U,
    ) where
        U: Fn(&mut DeploymentRecord) + Send + Sync,
    {
        let id = deployment_id.to_string();
        let (app, group) = (b.application.clone(), b.deployment_group.clone());
        let fresh = || Some(DeploymentRecord::new(&id, &app, &group, now_ms()));
        let outcome = self.update_record(&id, &update, fresh, known).await;
        if let Err(e) = outcome {
            t.note(format!("warning: deployment state not recorded: {e}"));
        }
    }

    /// Like [`Self::record`] but only when a record exists (no binding known to create one).
    pub(super) async fn record_existing<U>(&self, deployment_id: &str, t: &Tracker, update: U)
    where
        U: Fn(&mut DeploymentRecord) + Send + Sync,
    {
        if let Err(e) = self.update_record(deployment_id, &update, || None, None).await {
            t.note(format!("warning: deployment state not recorded: {e}"));
        }
    }

    pub(super) async fn update_record<U>(
        &self,
        deployment_id: &str,
        update: &U,
        fresh: impl Fn() -> Option<DeploymentRecord>,
        mut known: Option<DeploymentRecord>,
    ) -> Result<()>
    where
        U: Fn(&mut DeploymentRecord) + Send + Sync,
    {
        for _ in 0..5 {
            let read = match known.take() {
                Some(rec) => Some(rec),
                None => self.state.deployment(deployment_id).await?,
            };
            let Some(mut rec) = read.or_else(&fresh) else {
                return Ok(());
            };
            update(&mut rec);
            rec.version += 1;
            if self.state.put_deployment(&rec).await? == Saved::Written {
                return Ok(());
            }
        }
        Err(Error::Conflict(format!(
            "deployment record {deployment_id} kept changing under five attempts to update it"
        )))
    }

    /// What shadow mode found since the last call, `by` the function named: noted in `t`, and kept on the
    /// deployment's record (when there is one) with the follower's public moves and what an enforcing hook would
    /// have failed with. Nothing found, nothing written.
    pub(super) async fn keep_would_be(
        &self,
        deployment_id: Option<&str>,
        by: &str,
        failure: Option<String>,
        t: &Tracker,
    ) {
        let found: Vec<WouldBe> =
            self.lb.take_actions().into_iter().map(|w| WouldBe { by: by.to_string(), ..w }).collect();
        t.would_be(&found);
        let public = t.take_public_moves();
        if found.is_empty() && public.is_empty() && failure.is_none() {
            return;
        }
        let Some(deployment_id) = deployment_id else { return };
        self.record_existing(deployment_id, t, |r| {
            r.observed = true;
            r.add_would_be(found.iter().cloned());
            r.add_public_moves(public.iter().cloned());
            if failure.is_some() {
                r.would_be_failure.clone_from(&failure);
            }
        })
        .await;
    }

    /// The binding record's view after a completed flip (best effort, version-checked), written over `known`
    /// (the binding's record as read earlier: no read first) when given. `deployment_id` is `None` when the reconciler
    /// moved the route outside a deployment's hooks.
    pub(super) async fn record_binding_live(
        &self,
        b: &Binding,
        live: &str,
        deployment_id: Option<&str>,
        mut known: Option<BindingRecord>,
        t: &Tracker,
    ) {
        // An observed binding's private side did not move: its record keeps naming the group that is live.
        if self.observes(b) {
            return;
        }
        let result: Result<()> = async {
            for _ in 0..5 {
                let read = match known.take() {
                    Some(rec) => Some(rec),
                    None => self.state.binding(&b.application, &b.deployment_group).await?,
                };
                let mut rec = read.unwrap_or_else(|| BindingRecord::new(&b.application, &b.deployment_group));
                if rec.live_private_target_group.as_deref() == Some(live) {
                    return Ok(());
                }
                rec.live_private_target_group = Some(live.to_string());
                if let Some(id) = deployment_id {
                    rec.last_deployment = Some(id.to_string());
                }
                rec.updated_at_ms = now_ms();
                rec.version += 1;
                if self.state.put_binding(&rec).await? == Saved::Written {
                    return Ok(());
                }
            }
            Err(Error::Conflict(format!("binding record {} kept changing", b.label())))
        }
        .await;
        if let Err(e) = result {
            t.note(format!("warning: binding state not recorded: {e}"));
        }
    }
}

//! What an operator asks of a binding without changing anything: `check` (its resources against the live
//! account) and `status` (both sides, and what a reconcile would change).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Engine, SidePass, Tracker};
use crate::config::{Binding, RouteRef, MANAGED_TAG};
use crate::domain::{plan_reconcile, Route, DEFAULT_BATCH};
use crate::ports::{Coordination, DeploymentGroupFacts, Deployments, Followers, LoadBalancers, StateStore};
use crate::{Error, Result};

/// What a reconcile would change, in words (for operators and `--dry-run`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanSummary {
    /// Private target group name → targets to register / deregister.
    pub register: BTreeMap<String, Vec<String>>,
    pub deregister: BTreeMap<String, Vec<String>>,
    pub production: Option<String>,
    pub test: Option<String>,
    pub held_back: Vec<String>,
}

impl PlanSummary {
    pub fn is_empty(&self) -> bool {
        self.register.is_empty() && self.deregister.is_empty() && self.production.is_none() && self.test.is_none()
    }
}

/// One binding as an operator sees it: both sides, and what a reconcile would change.
#[derive(Debug, Clone, Serialize)]
pub struct BindingStatus {
    pub binding: String,
    /// `enforce`, or `observe` (shadow mode: `pending` is what the functions would do and do not).
    pub mode: &'static str,
    pub public_production: Option<String>,
    pub public_test: Option<String>,
    pub private_production: Option<String>,
    pub private_test: Option<String>,
    /// Target group name → `ip:port health` of each target.
    pub targets: BTreeMap<String, Vec<String>>,
    /// I1–I3 hold when a reconcile would change nothing.
    pub in_sync: bool,
    pub pending: PlanSummary,
    pub warnings: Vec<String>,
}

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// Checks a binding against the live account without changing anything: its deployment group uses the
    /// binding's public target groups, every resource passes the preflight, the state table answers. Returns
    /// the warnings.
    pub async fn check(&self, b: &Binding, group: &DeploymentGroupFacts, t: &Tracker) -> Result<Vec<String>> {
        super::preflight::uses_only_bound_groups(b, &group.target_group_names)?;
        if group.production_listeners.is_empty() {
            return Err(Error::Misconfigured(format!(
                "deployment group {} has no production listener (is it an ECS blue/green group with a load balancer?)",
                b.deployment_group
            )));
        }
        self.preflight_and_state(b, t).await?;
        if self.config.stored {
            self.check_managed_tag(b).await?;
        }
        super::preflight::warn_nlb_timing(b, group.termination_wait, t);
        self.check_drains(b, t).await?;
        Ok(t.snapshot().notes.into_iter().filter(|n| n.starts_with("warning")).collect())
    }

    /// Each private group drains a stopped task for at least as long as its public mirror (one read of each
    /// group's attributes: `check` only, the hooks never pay for it).
    async fn check_drains(&self, b: &Binding, t: &Tracker) -> Result<()> {
        let mut arns = b.public_target_groups();
        arns.extend(b.all_private_target_groups());
        let delays = self.lb.deregistration_delays(&arns).await?;
        for side in b.sides() {
            for p in &side.pairs {
                let (Some(public), Some(private)) =
                    (delays.get(&p.public_target_group), delays.get(&p.private_target_group))
                else {
                    continue;
                };
                if let Some(w) = crate::domain::shorter_drain_warning(
                    (super::name(&p.private_target_group), &p.private_target_group, *private),
                    (super::name(&p.public_target_group), *public),
                ) {
                    t.note(w);
                }
            }
        }
        Ok(())
    }

    /// A stored binding is served by the fleet installation, whose roles may change only private resources
    /// tagged [`MANAGED_TAG`]`=true`: an untagged one would fail its first deployment with AccessDenied.
    async fn check_managed_tag(&self, b: &Binding) -> Result<()> {
        let mut arns = b.all_private_target_groups();
        arns.extend(b.all_private_routes().into_iter().map(RouteRef::arn));
        let tags = self.lb.tags(&arns).await?;
        let untagged: Vec<&str> = arns
            .iter()
            .copied()
            .filter(|a| tags.get(*a).and_then(|t| t.get(MANAGED_TAG)).map(String::as_str) != Some("true"))
            .collect();
        if untagged.is_empty() {
            return Ok(());
        }
        Err(Error::Misconfigured(format!(
            "binding {}: {} not tagged {MANAGED_TAG}=true, which the fleet installation's roles require before they \
             change anything; tag them: aws elbv2 add-tags --resource-arns {} --tags Key={MANAGED_TAG},Value=true",
            b.label(),
            untagged.join(", "),
            untagged.join(" ")
        )))
    }

    /// The public side and every private side of a binding (one status per private side), and what a reconcile
    /// would change, without changing anything.
    pub async fn status(&self, b: &Binding, group: &DeploymentGroupFacts, t: &Tracker) -> Result<Vec<BindingStatus>> {
        let pass = &self.sides_pass(b, t).await?;
        futures_util::future::try_join_all(
            b.sides().iter().map(|side| self.status_side(side, group, pass.side(side.side), t)),
        )
        .await
    }

    async fn status_side(
        &self,
        b: &Binding,
        group: &DeploymentGroupFacts,
        pass: SidePass<'_, '_, super::Shadow<L>>,
        t: &Tracker,
    ) -> Result<BindingStatus> {
        let SidePass { reads, preflight } = pass;
        let pre = self.preflight_or_own(b, preflight, t).await?;
        let (public_prod, public_test) = super::sweep::public_routes(group);
        let seen = self.observe(b, reads, public_prod.as_ref(), public_test.as_ref(), pre.production, pre.test).await?;
        let plan = plan_reconcile(&b.pair_arns(), b.style(), &seen, DEFAULT_BATCH)
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.side_label())))?;
        let name = |tg: &str| crate::domain::arn::target_group_name(tg).unwrap_or(tg).to_string();
        let mut pending = PlanSummary { held_back: plan.held_back.clone(), ..Default::default() };
        for (tg, m) in &plan.mirrors {
            if m.registered() > 0 {
                pending.register.insert(name(tg), m.register.iter().flatten().map(|t| t.key.to_string()).collect());
            }
            if m.deregistered() > 0 {
                pending.deregister.insert(name(tg), m.deregister.iter().flatten().map(ToString::to_string).collect());
            }
        }
        let show = |r: &Option<Route>| r.as_ref().map(Route::to_string);
        pending.production = plan
            .production
            .as_ref()
            .map(|to| format!("{} -> {to}", show(&seen.private_production).unwrap_or_default()));
        pending.test = plan.test.as_ref().map(|to| format!("{} -> {to}", show(&seen.private_test).unwrap_or_default()));
        Ok(BindingStatus {
            binding: b.side_label(),
            mode: self.config.mode_of(b).as_str(),
            public_production: show(&seen.public_production),
            public_test: show(&seen.public_test),
            private_production: show(&seen.private_production),
            private_test: show(&seen.private_test),
            targets: seen
                .targets
                .iter()
                .map(|(tg, ts)| (name(tg), ts.iter().map(|t| format!("{} {}", t.key(), t.health.as_str())).collect()))
                .collect(),
            in_sync: plan.is_empty(),
            pending,
            warnings: t.snapshot().notes.into_iter().filter(|n| n.starts_with("warning")).collect(),
        })
    }
}

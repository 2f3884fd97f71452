//! AfterInstall: the replacement task set exists and ECS is registering it into the green public target group.
//! Mirror it into the green private target group (full diff: stale IPs of an earlier deployment go), keep the
//! private production route on blue's mirror, point the private test route at green's mirror, record.

use super::{now_ms, Engine, Tracker};
use crate::domain::Phase;
use crate::harness::Budget;
use crate::ports::{Deployments, Followers, LoadBalancers, StateStore};
use crate::Result;

impl<L: LoadBalancers, D: Deployments, S: StateStore, F: Followers> Engine<L, D, S, F> {
    pub async fn after_install(&self, deployment_id: &str, budget: Budget, t: &Tracker) -> Result<()> {
        let r = self.resolve(deployment_id, t).await?;
        let b: &crate::config::Binding = &r.binding;
        let pre = self.preflight_and_state(b, t).await?;
        let g = self.green(&r, t).await?;

        // Blue's mirror first: it is what the private production route serves until AfterAllowTraffic.
        self.mirror_pair(&g.blue_public, &g.blue_private, t).await?;
        self.converge_production(&r, &pre.production, t).await?;

        let source = self.wait_for_public_green(&g, budget).await?;
        let plan = self.mirror_from(&source, &g.private, t).await?;
        self.test_route_to_green(b, pre.test.as_ref(), &g, t).await?;

        let facts = &r.facts;
        self.record(b, deployment_id, t, |rec| {
            rec.phases.insert(Phase::AfterInstall.to_string(), now_ms());
            rec.public_production_listener = facts.production_listeners.first().cloned();
            rec.public_test_listener = facts.test_listeners.first().cloned();
            rec.green_public_target_group = Some(g.public.clone());
            rec.green_private_target_group = Some(g.private.clone());
            rec.blue_private_target_group = Some(g.blue_private.clone());
            rec.targets_mirrored = plan.desired.len();
        })
        .await;
        Ok(())
    }
}

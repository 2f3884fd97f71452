//! AfterInstall: the replacement task set exists and ECS is registering it into the green public target group.
//! On every private side: mirror it into the green private target group (full diff: stale IPs of an earlier
//! deployment go), keep the private production route on blue's mirror, point the private test route at green's
//! mirror; then record.

use futures_util::future::try_join_all;

use super::{Engine, Tracker};
use crate::clock::now_ms;
use crate::domain::Phase;
use crate::harness::Budget;
use crate::ports::{Coordination, Deployments, Followers, LoadBalancers, StateStore};
use crate::Result;

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    pub async fn after_install(&self, deployment_id: &str, budget: Budget, t: &Tracker) -> Result<()> {
        // Checks, each taking one turn in the read lane for its rounds of reads: the setup (preflight, green, blue's
        // mirror), each poll for green's tasks, and green's mirror with the test route.
        let super::Setup { r, sides, green: g, .. } = self.setup(deployment_id, budget, t).await?;
        let b: &crate::config::Binding = &r.binding;
        // Said before any traffic moves, in the first hook's log.
        super::preflight::warn_nlb_timing(b, r.facts.termination_wait, t);

        let source = self.wait_for_public_green(&g, budget).await?;
        let _check = crate::reads::check();
        let plans = try_join_all(sides.iter().map(|(side, pre)| {
            let (g, source) = (g.on(side), &source);
            async move {
                let plan = self.mirror_green(source, &g, t).await?;
                self.test_route_to_green(side, pre.test.as_ref(), &g, t).await?;
                Ok::<_, crate::Error>(plan)
            }
        }))
        .await?;

        let facts = &r.facts;
        self.record(b, deployment_id, t, |rec| {
            rec.phases.insert(Phase::AfterInstall.to_string(), now_ms());
            rec.public_production_listener = facts.production_listeners.first().cloned();
            rec.public_test_listener = facts.test_listeners.first().cloned();
            rec.green_public_target_group = Some(g.public.clone());
            for (side, _) in &sides {
                let kept = rec.side(side.side).unwrap_or_default();
                rec.set_side(side.side, g.on(side).recorded(side, kept));
            }
            rec.targets_mirrored = plans.first().map_or(0, |p| p.desired.len());
        })
        .await;
        Ok(())
    }
}

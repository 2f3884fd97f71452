//! Shadow mode: the load balancers as the use cases see them when a binding observes. Writes to an observed
//! binding's private target groups and routes are recorded as would-be actions instead of made; reads of them
//! answer as if the functions had made every write so far, so that the use cases read, plan, gate and verify
//! exactly as they do in enforce mode. Everything else passes through untouched.
//!
//! A private group of an observed binding reads as its public mirror would leave it: the members its mirror
//! would register (with the health the public group reports for them, the closest the functions can know
//! without registering them), those it would deregister as draining, the rest as ELB reports them. A route reads
//! as the functions last set it in this invocation, else as ELB has it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::now_ms;
use crate::config::{Binding, RouteRef};
use crate::domain::{arn, plan_mirror, HealthState, ObservedTarget, Route, Target, TargetKey, WouldBe, DEFAULT_BATCH};
use crate::ports::{LoadBalancers, TargetGroupFacts};
use crate::Result;

/// A public group's read younger than this stands in for reading it again beside its private mirror: the use
/// cases read a pair's two groups together.
const PUBLIC_READ_FRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Overlay {
    /// Observed private target groups → their public mirror.
    groups: BTreeMap<String, String>,
    /// Observed private routes → which they are (`production`, `test 2`, ...).
    routes: BTreeMap<String, String>,
    /// Routes as the functions would have set them in this invocation.
    set: BTreeMap<String, Route>,
    /// The last read of each target group that passed through, and when it answered.
    seen: BTreeMap<String, (Instant, Vec<ObservedTarget>)>,
    /// Would-be actions not yet taken by [`Shadow::take_actions`].
    actions: Vec<WouldBe>,
    /// Reads answer as ELB has it (an operator's view); writes to observed resources are still only recorded.
    revealed: bool,
}

impl Overlay {
    fn would(&mut self, action: String) {
        self.would_route(action, None);
    }

    fn would_route(&mut self, action: String, route: Option<(String, Route)>) {
        let (route, to) = route.map_or((None, None), |(which, to)| (Some(which), Some(to)));
        let found = WouldBe { at_ms: now_ms(), by: String::new(), action, route, to };
        if !found.repeats(&self.actions) {
            tracing::info!(would_be = %found.action);
            self.actions.push(found);
        }
    }
}

/// [`LoadBalancers`] with shadow mode over it (see the module's header). Clones share what they observe.
#[derive(Debug, Clone)]
pub struct Shadow<L> {
    inner: L,
    overlay: Arc<Mutex<Overlay>>,
}

fn keys<'a>(ks: impl Iterator<Item = &'a TargetKey>) -> String {
    ks.map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn name(tg: &str) -> &str {
    arn::target_group_name(tg).unwrap_or(tg)
}

impl<L: LoadBalancers> Shadow<L> {
    pub fn new(inner: L) -> Self {
        Self { inner, overlay: Arc::default() }
    }

    /// The load balancers underneath, for what must see ELB as it is.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    fn with<R>(&self, f: impl FnOnce(&mut Overlay) -> R) -> R {
        f(&mut self.overlay.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Observes `b`'s private side (every side's groups and routes) when `observe`, else lets its writes through
    /// (and forgets what this invocation would have set on it).
    pub fn scope(&self, b: &Binding, observe: bool) {
        let sides = b.sides();
        self.with(|o| {
            for side in &sides {
                for p in &side.pairs {
                    match observe {
                        true => o.groups.insert(p.private_target_group.clone(), p.public_target_group.clone()),
                        false => o.groups.remove(&p.private_target_group),
                    };
                }
                let routes =
                    [("production", Some(&side.private_production_route)), ("test", side.private_test_route.as_ref())];
                for (kind, r) in routes.into_iter().filter_map(|(k, r)| Some((k, r?))) {
                    if observe {
                        let label = if side.side == 0 { kind.to_string() } else { format!("{kind} {}", side.side + 1) };
                        o.routes.insert(r.arn().to_string(), label);
                    } else {
                        o.set.remove(r.arn());
                        o.routes.remove(r.arn());
                    }
                }
            }
        });
    }

    /// An invocation begins: it starts from the private side as ELB has it. What an earlier invocation of this
    /// process would have set is forgotten, so that a warm process and a cold one find the same (an observed
    /// binding's drift is what enforcing would change now, not what it would have changed before).
    pub fn begin(&self) {
        self.with(|o| {
            o.set.clear();
            o.seen.clear();
            o.actions.clear();
        });
    }

    /// From now on reads show ELB as it is, for an operator's `status` and `report`: what a reconcile would
    /// change on an observed binding is then its drift. Writes to observed resources are still only recorded.
    pub fn reveal(&self) {
        self.with(|o| o.revealed = true);
    }

    /// The would-be actions since the last call, in the order they were found.
    pub fn take_actions(&self) -> Vec<WouldBe> {
        self.with(|o| std::mem::take(&mut o.actions))
    }

    async fn read_targets(&self, tg: &str) -> Result<Vec<ObservedTarget>> {
        let read = self.inner.targets(tg).await?;
        self.with(|o| {
            if o.groups.values().any(|public| public == tg) {
                o.seen.insert(tg.to_string(), (Instant::now(), read.clone()));
            }
        });
        Ok(read)
    }

    /// A public group's members, from a read made beside this one when there is one.
    async fn public_targets(&self, tg: &str) -> Result<Vec<ObservedTarget>> {
        let fresh = self
            .with(|o| o.seen.get(tg).filter(|(at, _)| at.elapsed() <= PUBLIC_READ_FRESH).map(|(_, read)| read.clone()));
        match fresh {
            Some(read) => Ok(read),
            None => self.read_targets(tg).await,
        }
    }

    /// An observed private group as the mirror would leave it, noting what the mirror would change.
    async fn observed_targets(&self, private: &str, public: &str) -> Result<Vec<ObservedTarget>> {
        // The private group first: a use case reads a pair's two groups together, and its read of the public one
        // has then most likely answered, to stand in for reading it again.
        let real = self.read_targets(private).await?;
        let source = self.public_targets(public).await?;
        let plan = plan_mirror(&source, &real, DEFAULT_BATCH);
        let register: Vec<&Target> = plan.register.iter().flatten().collect();
        let deregister: BTreeSet<TargetKey> = plan.deregister.iter().flatten().copied().collect();
        self.with(|o| {
            if !register.is_empty() {
                o.would(format!("register {} into {}", keys(register.iter().map(|t| &t.key)), name(private)));
            }
            if !deregister.is_empty() {
                o.would(format!("deregister {} from {}", keys(deregister.iter()), name(private)));
            }
        });
        let mut out: Vec<ObservedTarget> = real
            .into_iter()
            .map(|mut t| {
                if deregister.contains(&t.key()) {
                    t.health = HealthState::Draining;
                    t.reason = None;
                }
                t
            })
            .collect();
        let added: BTreeSet<TargetKey> = register.iter().map(|t| t.key).collect();
        out.extend(source.into_iter().filter(|t| added.contains(&t.key())));
        Ok(out)
    }

    fn observed_group(&self, tg: &str) -> Option<String> {
        self.with(|o| o.groups.get(tg).cloned())
    }

    /// `route` as the functions would have it: as set in this invocation when observed, else as read.
    fn overlaid(&self, which: &RouteRef, read: Route) -> Route {
        self.with(|o| o.set.get(which.arn()).filter(|_| !o.revealed).cloned()).unwrap_or(read)
    }
}

impl<L: LoadBalancers> LoadBalancers for Shadow<L> {
    async fn target_groups(&self, arns: &[&str]) -> Result<Vec<TargetGroupFacts>> {
        self.inner.target_groups(arns).await
    }

    async fn targets(&self, target_group: &str) -> Result<Vec<ObservedTarget>> {
        match self.observed_group(target_group).filter(|_| !self.with(|o| o.revealed)) {
            Some(public) => self.observed_targets(target_group, &public).await,
            None => self.read_targets(target_group).await,
        }
    }

    async fn register(&self, target_group: &str, targets: &[Target]) -> Result<()> {
        if self.observed_group(target_group).is_none() {
            return self.inner.register(target_group, targets).await;
        }
        self.with(|o| {
            o.would(format!("register {} into {}", keys(targets.iter().map(|t| &t.key)), name(target_group)))
        });
        Ok(())
    }

    async fn deregister(&self, target_group: &str, targets: &[TargetKey]) -> Result<()> {
        if self.observed_group(target_group).is_none() {
            return self.inner.deregister(target_group, targets).await;
        }
        self.with(|o| o.would(format!("deregister {} from {}", keys(targets.iter()), name(target_group))));
        Ok(())
    }

    async fn route(&self, route: &RouteRef) -> Result<Route> {
        let read = self.inner.route(route).await?;
        Ok(self.overlaid(route, read))
    }

    async fn routes(&self, routes: &[RouteRef]) -> Result<Vec<Route>> {
        let read = self.inner.routes(routes).await?;
        Ok(routes.iter().zip(read).map(|(which, r)| self.overlaid(which, r)).collect())
    }

    async fn set_route(&self, route: &RouteRef, to: &Route) -> Result<()> {
        let Some(which) = self.with(|o| o.routes.get(route.arn()).cloned()) else {
            return self.inner.set_route(route, to).await;
        };
        self.with(|o| {
            o.would_route(format!("set {route} to {to}"), Some((which, to.clone())));
            o.set.insert(route.arn().to_string(), to.clone());
        });
        Ok(())
    }

    async fn deregistration_delays(&self, target_groups: &[&str]) -> Result<BTreeMap<String, Duration>> {
        self.inner.deregistration_delays(target_groups).await
    }

    async fn tags(&self, arns: &[&str]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        self.inner.tags(arns).await
    }

    fn at_once(&self) -> Self {
        Self { inner: self.inner.at_once(), overlay: Arc::clone(&self.overlay) }
    }
}

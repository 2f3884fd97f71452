//! Where the engine finds bindings: the environment form (`BLUEGREEN_MIRROR_BINDINGS`, read at cold start) or the
//! state table (`bluegreen-mirror bindings apply`). A function reads only what it needs: a hook the one binding
//! of its deployment group (one GetItem, kept for [`BINDING_CACHE_TTL`]), the schedule and ECS task events the
//! whole list. A stored binding that does not parse or validate fails its own binding, never the others.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Engine;
use crate::config::Binding;
use crate::ports::{Coordination, Deployments, Followers, LoadBalancers, StateStore};
use crate::{Error, Result};

/// How long a stored binding read by a function is trusted. An operator's `bindings apply` reaches every warm
/// function within this time; a deployment's hooks, minutes apart, mostly read it afresh.
pub const BINDING_CACHE_TTL: Duration = Duration::from_secs(60);

/// A binding as read at a moment; `None` remembers that there is none.
type Read = (Instant, Option<Binding>);

/// The whole stored list as last read: each binding, or why it cannot be used.
type List = (Instant, Vec<(String, std::result::Result<Binding, String>)>);

/// Stored bindings as last read, one by one per `(application, group)`, and the whole list.
#[derive(Debug, Default)]
pub(crate) struct BindingCache(std::sync::Mutex<HashMap<(String, String), Read>>, std::sync::Mutex<Option<List>>);

impl BindingCache {
    fn list(&self) -> Option<Vec<(String, std::result::Result<Binding, String>)>> {
        let list = self.1.lock().ok()?;
        let (at, items) = list.as_ref()?;
        (at.elapsed() < BINDING_CACHE_TTL).then(|| items.clone())
    }

    fn put_list(&self, items: Vec<(String, std::result::Result<Binding, String>)>) {
        if let Ok(mut list) = self.1.lock() {
            *list = Some((Instant::now(), items));
        }
    }

    fn get(&self, application: &str, group: &str) -> Option<Option<Binding>> {
        let map = self.0.lock().ok()?;
        let (at, b) = map.get(&(application.to_string(), group.to_string()))?;
        (at.elapsed() < BINDING_CACHE_TTL).then(|| b.clone())
    }

    fn put(&self, application: &str, group: &str, b: Option<&Binding>) {
        if let Ok(mut map) = self.0.lock() {
            map.insert((application.to_string(), group.to_string()), (Instant::now(), b.cloned()));
        }
    }
}

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// The binding of a deployment group, or `None` when there is none. A stored binding that cannot be used is
    /// an error that says what to fix.
    pub async fn binding_of(&self, application: &str, group: &str) -> Result<Option<Cow<'_, Binding>>> {
        if !self.config.stored {
            if let Some(b) = self.config.binding(application, group) {
                return Ok(Some(Cow::Borrowed(b)));
            }
            // Not in the environment: say so if the operator stored it instead (a miss costs one read).
            return match self.state.stored_binding(application, group).await {
                Ok(Some(_)) => Err(Error::Misconfigured(format!(
                    "binding {application}/{group} is stored in the table {}, but this installation reads its \
                     bindings from BLUEGREEN_MIRROR_BINDINGS: use one form, not both (remove the variable from \
                     the functions to use the stored bindings, or `bluegreen-mirror bindings remove` the stored one)",
                    self.config.table
                ))),
                _ => Ok(None),
            };
        }
        if let Some(cached) = self.bindings.get(application, group) {
            cached.iter().for_each(|b| self.scope(b));
            return Ok(cached.map(Cow::Owned));
        }
        let stored = self.state.stored_binding(application, group).await?;
        let b = stored.as_ref().map(Binding::from_stored).transpose()?;
        self.bindings.put(application, group, b.as_ref());
        b.iter().for_each(|b| self.scope(b));
        Ok(b.map(Cow::Owned))
    }

    /// Every binding, each one usable or the reason it is not (labelled `application/group`).
    pub async fn every_binding(&self) -> Result<Vec<(String, Result<Cow<'_, Binding>>)>> {
        if !self.config.stored {
            return Ok(self.config.bindings.iter().map(|b| (b.label(), Ok(Cow::Borrowed(b)))).collect());
        }
        let mut out: Vec<(String, Result<Cow<'_, Binding>>)> = Vec::new();
        for item in self.state.stored_bindings().await? {
            match item {
                Ok(stored) => {
                    let b = Binding::from_stored(&stored);
                    if let Ok(b) = &b {
                        self.bindings.put(&stored.application, &stored.deployment_group, Some(b));
                        self.scope(b);
                    }
                    out.push((stored.label(), b.map(Cow::Owned)));
                }
                Err(e) => out.push(("(undecodable item)".to_string(), Err(e))),
            }
        }
        // The order the sweep slices by: stable whatever order the table's pages come in.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        self.bindings.put_list(
            out.iter()
                .map(|(l, b)| (l.clone(), b.as_ref().map(|b| b.clone().into_owned()).map_err(ToString::to_string)))
                .collect(),
        );
        Ok(out)
    }

    /// The whole list, as read within [`BINDING_CACHE_TTL`] (by the schedule, or an earlier event), else read
    /// afresh: an ECS task event concerns one service, and a deployment that replaces ten tasks sends twenty.
    pub async fn every_binding_cached(&self) -> Result<Vec<(String, Result<Cow<'_, Binding>>)>> {
        match self.bindings.list() {
            Some(items) if self.config.stored => {
                items.iter().filter_map(|(_, b)| b.as_ref().ok()).for_each(|b| self.scope(b));
                Ok(items.into_iter().map(|(l, b)| (l, b.map(Cow::Owned).map_err(Error::Misconfigured))).collect())
            }
            _ => self.every_binding().await,
        }
    }

    /// Puts `b`'s private side in or out of shadow mode, by its mode (see [`super::Shadow`]).
    pub(crate) fn scope(&self, b: &Binding) {
        self.lb.scope(b, self.config.mode_of(b) == crate::config::Mode::Observe);
    }

    /// Whether `b` observes (shadow mode) rather than enforces.
    pub fn observes(&self, b: &Binding) -> bool {
        self.config.mode_of(b) == crate::config::Mode::Observe
    }

    /// What to tell an operator whose deployment group has no binding.
    pub(crate) fn no_binding(&self, application: &str, group: &str) -> Error {
        if self.config.stored {
            Error::Misconfigured(format!(
                "no binding for application {application:?}, deployment group {group:?}: store one with \
                 `bluegreen-mirror bindings apply FILE` (table {})",
                self.config.table
            ))
        } else {
            let known: Vec<String> = self.config.bindings.iter().map(Binding::label).collect();
            Error::Misconfigured(format!(
                "no binding for application {application:?}, deployment group {group:?}: add one to \
                 BLUEGREEN_MIRROR_BINDINGS (bindings configured: {})",
                known.join(", ")
            ))
        }
    }
}

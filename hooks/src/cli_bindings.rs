//! `bluegreen-mirror bindings`: the bindings stored in the state table, for installations that outgrow the
//! environment form (Lambda caps a function's environment at 4 KB, about three bindings).
//!
//! - `apply FILE [--dry-run]`: FILE is a bindings document (`{"bindings": [...]}`, the environment form's JSON).
//!   Every binding is checked as `check` checks it (deployment group, target groups, routes, table) and against
//!   the bindings already stored (one owner per private target group); the changes are shown; then each one is
//!   written under its version, so that two operators applying at once cannot overwrite each other: the second
//!   is told to run again. Bindings stored but absent from FILE are left alone (`remove` removes).
//! - `list [--json]`: every stored binding, its version, when it was applied, and whether it is usable.
//! - `remove APPLICATION GROUP`: removes one, under its version.
//!
//! Exit codes as for every command (`crate::cli`): 0 done (or nothing to do); 1 AWS failed after retries; 2 usage,
//! or a file that is not a bindings document; 3 a binding refused, a write that lost a race, nothing to remove.

use std::fmt::Write as _;

use bluegreen_mirror::config::{Binding, Config};
use bluegreen_mirror::domain::StoredBinding;
use bluegreen_mirror::harness::{error_chain, Tracker};
use bluegreen_mirror::ports::{Coordination, Deployments, Followers, LoadBalancers, Saved, StateStore};
use bluegreen_mirror::usecase::Engine;
use serde_json::{json, Value};

use crate::cli::{exit_code_of, worse, EXIT_FOUND, EXIT_OK, EXIT_USAGE};

/// A `bindings` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingsCommand {
    Apply { file: String, dry_run: bool },
    List,
    Remove { application: String, group: String },
}

/// Runs a `bindings` subcommand; returns the exit code.
pub async fn run<L, D, S, F>(engine: &Engine<L, D, S, F>, command: &BindingsCommand, as_json: bool) -> i32
where
    L: LoadBalancers,
    D: Deployments,
    S: StateStore + Coordination,
    F: Followers,
{
    if !engine.config.stored {
        eprintln!(
            "this installation reads its bindings from BLUEGREEN_MIRROR_BINDINGS: stored bindings would be a second, \
             conflicting source. Unset it (here and on the functions) to manage bindings in the table {}",
            engine.config.table
        );
        return EXIT_USAGE;
    }
    let (code, report) = match command {
        BindingsCommand::Apply { file, dry_run } => apply(engine, file, *dry_run).await,
        BindingsCommand::List => list(engine).await,
        BindingsCommand::Remove { application, group } => remove(engine, application, group).await,
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else if let Some(text) = report.get("text").and_then(Value::as_str) {
        // What was found is the result; a command that could not run says why on stderr.
        match code {
            EXIT_OK | EXIT_FOUND => print!("{text}"),
            _ => eprint!("{text}"),
        }
    }
    code
}

async fn apply<L, D, S, F>(engine: &Engine<L, D, S, F>, file: &str, dry_run: bool) -> (i32, Value)
where
    L: LoadBalancers,
    D: Deployments,
    S: StateStore + Coordination,
    F: Followers,
{
    let mut text = String::new();
    let refuse =
        |code: i32, message: String| (code, json!({"ok": false, "error": message, "text": format!("{message}\n")}));
    let doc = match std::fs::read_to_string(file) {
        Ok(d) => d,
        Err(e) => return refuse(2, format!("cannot read {file}: {e}")),
    };
    let wanted = match Config::parse_bindings(&doc) {
        Ok(b) => b,
        Err(e) => return refuse(EXIT_USAGE, format!("{file}: {e}")),
    };
    let stored = match engine.state.stored_bindings().await {
        Ok(s) => s,
        Err(e) => return refuse(exit_code_of(&e), format!("cannot read the stored bindings: {}", error_chain(&e))),
    };
    let stored: Vec<StoredBinding> = stored.into_iter().filter_map(|s| s.ok()).collect();
    let find = |b: &Binding| {
        stored.iter().find(|s| s.application == b.application && s.deployment_group == b.deployment_group)
    };
    // One owner per private target group across the whole installation, as in the environment form.
    let kept: Vec<Value> = stored
        .iter()
        .filter(|s| !wanted.iter().any(|b| b.application == s.application && b.deployment_group == s.deployment_group))
        .map(|s| s.binding.clone())
        .collect();
    let all: Vec<Value> = kept.into_iter().chain(wanted.iter().filter_map(|b| serde_json::to_value(b).ok())).collect();
    if let Err(e) = Config::parse_bindings(&json!({ "bindings": all }).to_string()) {
        return refuse(EXIT_FOUND, format!("{file} conflicts with the stored bindings: {e}"));
    }
    // Every binding against the live account, as `check` does; nothing is written unless all pass.
    let mut rows = Vec::new();
    let mut refused = false;
    let mut code = EXIT_FOUND;
    for b in &wanted {
        let t = Tracker::default();
        let checked = async {
            let group = engine.group(b).await?;
            engine.check(b, &group, &t).await
        }
        .await;
        let change = match find(b) {
            None => "add",
            Some(s) if serde_json::to_value(b).ok().as_ref() == Some(&s.binding) => "unchanged",
            Some(_) => "change",
        };
        let (ok, detail) = match &checked {
            Ok(warnings) => (true, warnings.clone()),
            Err(e) => {
                code = worse(code, exit_code_of(e));
                (false, vec![error_chain(e)])
            }
        };
        refused |= !ok;
        let _ = writeln!(text, "{:<10} {}", if ok { change } else { "REFUSED" }, b.label());
        for d in &detail {
            let _ = writeln!(text, "           {d}");
        }
        rows.push(json!({"binding": b.label(), "change": change, "ok": ok, "notes": detail}));
    }
    if refused {
        let _ = writeln!(text, "nothing written: fix the refused bindings and apply again");
        return (code, json!({"ok": false, "bindings": rows, "written": 0, "text": text}));
    }
    if dry_run {
        let _ = writeln!(text, "dry run: nothing written");
        return (EXIT_OK, json!({"ok": true, "dry_run": true, "bindings": rows, "written": 0, "text": text}));
    }
    let mut written = 0;
    let mut lost = Vec::new();
    let mut code = EXIT_OK;
    for b in &wanted {
        let previous = find(b);
        let value = serde_json::to_value(b).unwrap_or(Value::Null);
        if previous.is_some_and(|s| s.binding == value) {
            continue;
        }
        let record = StoredBinding {
            application: b.application.clone(),
            deployment_group: b.deployment_group.clone(),
            version: previous.map_or(1, |s| s.version + 1),
            binding: value,
            updated_at_ms: bluegreen_mirror::clock::now_ms(),
            updated_by: std::env::var("USER").ok(),
        };
        match engine.state.put_stored_binding(&record).await {
            Ok(Saved::Written) => written += 1,
            Ok(Saved::Conflict) => {
                code = worse(code, EXIT_FOUND);
                lost.push(format!("{}: changed by someone else since it was read", b.label()))
            }
            Err(e) => {
                code = worse(code, exit_code_of(&e));
                lost.push(format!("{}: {}", b.label(), error_chain(&e)))
            }
        }
    }
    let _ = writeln!(text, "{written} written");
    for l in &lost {
        let _ = writeln!(text, "NOT WRITTEN {l}; run apply again");
    }
    (code, json!({"ok": lost.is_empty(), "bindings": rows, "written": written, "not_written": lost, "text": text}))
}

async fn list<L, D, S, F>(engine: &Engine<L, D, S, F>) -> (i32, Value)
where
    L: LoadBalancers,
    D: Deployments,
    S: StateStore + Coordination,
    F: Followers,
{
    let items = match engine.state.stored_bindings().await {
        Ok(items) => items,
        Err(e) => {
            let m = format!("cannot read the stored bindings: {}", error_chain(&e));
            return (exit_code_of(&e), json!({"ok": false, "error": m, "text": format!("{m}\n")}));
        }
    };
    let mut rows = Vec::new();
    let mut text = format!("{:<40} {:>7}  {:<24} {}\n", "BINDING", "VERSION", "APPLIED BY", "USABLE");
    for item in items {
        let row = match item {
            Ok(s) => {
                let usable = Binding::from_stored(&s).map(|_| "yes".to_string()).unwrap_or_else(|e| e.to_string());
                let _ = writeln!(
                    text,
                    "{:<40} {:>7}  {:<24} {usable}",
                    s.label(),
                    s.version,
                    s.updated_by.clone().unwrap_or_else(|| "-".into())
                );
                json!({"binding": s.label(), "version": s.version, "updated_at_ms": s.updated_at_ms,
                       "updated_by": s.updated_by, "usable": usable == "yes", "problem": (usable != "yes").then_some(usable),
                       "definition": s.binding})
            }
            Err(e) => {
                let _ = writeln!(text, "{:<40} {:>7}  {:<24} {}", "(undecodable item)", "-", "-", error_chain(&e));
                json!({"binding": null, "usable": false, "problem": error_chain(&e)})
            }
        };
        rows.push(row);
    }
    (0, json!({"ok": true, "bindings": rows, "text": text}))
}

async fn remove<L, D, S, F>(engine: &Engine<L, D, S, F>, application: &str, group: &str) -> (i32, Value)
where
    L: LoadBalancers,
    D: Deployments,
    S: StateStore + Coordination,
    F: Followers,
{
    let fail = |code: i32, m: String| (code, json!({"ok": false, "error": m, "text": format!("{m}\n")}));
    let stored = match engine.state.stored_binding(application, group).await {
        Ok(Some(s)) => s,
        Ok(None) => return fail(EXIT_FOUND, format!("no stored binding {application}/{group}")),
        Err(e) => return fail(exit_code_of(&e), format!("cannot read {application}/{group}: {}", error_chain(&e))),
    };
    match engine.state.remove_stored_binding(application, group, stored.version).await {
        Ok(Saved::Written) => {
            let m = format!("removed {application}/{group} (version {})", stored.version);
            (0, json!({"ok": true, "removed": stored.label(), "text": format!("{m}\n")}))
        }
        Ok(Saved::Conflict) => {
            fail(EXIT_FOUND, format!("{application}/{group} changed since it was read; run remove again"))
        }
        Err(e) => fail(exit_code_of(&e), format!("cannot remove {application}/{group}: {}", error_chain(&e))),
    }
}

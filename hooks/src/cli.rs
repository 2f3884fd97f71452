//! `bluegreen-mirror`, the operator CLI: `check` (every binding against the live account, before any deployment),
//! `status` (both sides of each binding, and whether I1–I3 hold), `reconcile [--dry-run]` (show or apply what the
//! reconciler would change), `bindings apply|list|remove` (the bindings stored in the state table; see
//! `cli_bindings`). It reads the same environment as the functions (`BLUEGREEN_MIRROR_TABLE`,
//! `BLUEGREEN_MIRROR_BINDINGS` when the bindings are not stored) and the standard AWS credential and region chain.
//!
//! Exit codes: 0 all good; 1 a binding is misconfigured (`check`), out of sync (`status`) or could not be
//! reconciled; 2 usage or configuration error.

use std::fmt::Write as _;

use bluegreen_mirror::aws::Aws;
use bluegreen_mirror::config::Config;
use bluegreen_mirror::harness::{error_chain, Tracker};
use bluegreen_mirror::usecase::Engine;
use serde_json::{json, Value};

pub const USAGE: &str = "usage: bluegreen-mirror <check|status|reconcile [--dry-run]> [--json]\n       \
bluegreen-mirror bindings <apply FILE [--dry-run]|list|remove APPLICATION GROUP> [--json]";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Check,
    Status,
    Reconcile { dry_run: bool },
    Bindings(crate::cli_bindings::BindingsCommand),
}

/// Parses the arguments after the program name into a command and the `--json` flag.
pub fn parse_args(args: &[String]) -> Result<(Command, bool), String> {
    if args.first().map(String::as_str) == Some("bindings") {
        return crate::cli_bindings::parse_args(&args[1..]).map(|(c, json)| (Command::Bindings(c), json));
    }
    let mut json = false;
    let mut dry_run = false;
    let mut command = None;
    for a in args {
        match a.as_str() {
            "--json" => json = true,
            "--dry-run" => dry_run = true,
            "check" | "status" | "reconcile" if command.is_none() => command = Some(a.as_str()),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    let command = match command {
        Some("check") => Command::Check,
        Some("status") => Command::Status,
        Some("reconcile") => Command::Reconcile { dry_run },
        _ => return Err(USAGE.to_string()),
    };
    if dry_run && !matches!(command, Command::Reconcile { .. }) {
        return Err(format!("--dry-run goes with reconcile\n{USAGE}"));
    }
    Ok((command, json))
}

/// Runs the CLI; returns the exit code.
pub async fn main(args: Vec<String>) -> i32 {
    let (command, as_json) = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let aws = Aws::load(&config).await;
    // Checking a fleet's bindings reads ELB nine times each: paced like the functions, so that an operator's
    // command does not drain the account's bucket (BLUEGREEN_MIRROR_ELB_READS_PER_S sets the pace).
    let elb = aws.elb.with_paced_reads(config.elb_reads_per_s, bluegreen_mirror::aws::ReadBurst::Reconcile);
    // The CLI starts no follower: it builds no Lambda client.
    let engine = Engine::new(elb, aws.codedeploy, aws.state, bluegreen_mirror::ports::NoFollowers, config);
    if let Command::Bindings(c) = &command {
        return crate::cli_bindings::run(&engine, c, as_json).await;
    }
    let bindings = match engine.every_binding().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read the stored bindings: {}", error_chain(&e));
            return 1;
        }
    };
    if bindings.is_empty() {
        eprintln!("no binding: store some with `bluegreen-mirror bindings apply FILE`");
        return 1;
    }
    let mut rows = Vec::new();
    let mut text = String::new();
    let mut ok = true;
    for (label, b) in &bindings {
        let t = Tracker::default();
        // One row per binding; `status` gives one per private side.
        let result: bluegreen_mirror::Result<Vec<Value>> = async {
            let b: &bluegreen_mirror::config::Binding = b.as_ref().map_err(clone_error)?;
            let group = engine.group(b).await?;
            match command {
                Command::Check => {
                    let warnings = engine.check(b, &group, &t).await?;
                    Ok(vec![json!({"binding": b.label(), "ok": true, "warnings": warnings})])
                }
                Command::Status | Command::Reconcile { dry_run: true } => {
                    let sides = engine.status(b, &group, &t).await?;
                    Ok(sides.iter().map(|s| serde_json::to_value(s).unwrap_or(Value::Null)).collect())
                }
                Command::Reconcile { dry_run: false } => {
                    let r = engine.reconcile(b, &group, &t).await?;
                    Ok(vec![serde_json::to_value(&r).unwrap_or(Value::Null)])
                }
                // Handled before the loop.
                Command::Bindings(_) => Ok(Vec::new()),
            }
        }
        .await;
        let these = match result {
            Ok(v) => v,
            Err(e) => vec![json!({"binding": label, "ok": false, "error": error_chain(&e)})],
        };
        for row in these {
            let good = row.get("error").is_none()
                && (!matches!(command, Command::Status) || row.get("in_sync").and_then(Value::as_bool) == Some(true));
            ok &= good;
            describe(&mut text, &command, &row);
            rows.push(row);
        }
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"command": format!("{command:?}"), "ok": ok, "bindings": rows}))
                .unwrap_or_default()
        );
    } else {
        print!("{text}");
    }
    i32::from(!ok)
}

/// A stored binding's problem, for its row.
fn clone_error(e: &bluegreen_mirror::Error) -> bluegreen_mirror::Error {
    bluegreen_mirror::Error::Misconfigured(error_chain(e))
}

fn describe(out: &mut String, command: &Command, row: &Value) {
    let s = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let _ = writeln!(out, "{}", s("binding"));
    if let Some(e) = row.get("error").and_then(Value::as_str) {
        let _ = writeln!(out, "  PROBLEM: {e}");
        return;
    }
    let lines = |k: &str| -> Vec<String> {
        row.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    match command {
        Command::Bindings(_) => {}
        Command::Check => {
            let _ = writeln!(
                out,
                "  ok: deployment group, target groups, routes and state table are as the hooks need them"
            );
        }
        Command::Reconcile { dry_run: false } => {
            let n = |k: &str| row.get(k).and_then(Value::as_u64).unwrap_or(0);
            let _ = writeln!(
                out,
                "  registered {} deregistered {}; production {}; test {}",
                n("registered"),
                n("deregistered"),
                s("production"),
                s("test")
            );
            for h in lines("held_back") {
                let _ = writeln!(out, "  held back: {h}");
            }
        }
        Command::Status | Command::Reconcile { dry_run: true } => {
            let _ = writeln!(out, "  public  production {}  test {}", s("public_production"), s("public_test"));
            let _ = writeln!(out, "  private production {}  test {}", s("private_production"), s("private_test"));
            if let Some(targets) = row.get("targets").and_then(Value::as_object) {
                for (tg, ts) in targets {
                    let list: Vec<&str> =
                        ts.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "  {tg:<24} {}",
                        if list.is_empty() { "(empty)".to_string() } else { list.join(", ") }
                    );
                }
            }
            let in_sync = row.get("in_sync").and_then(Value::as_bool) == Some(true);
            let _ =
                writeln!(out, "  {}", if in_sync { "in sync: I1-I3 hold" } else { "OUT OF SYNC; a reconcile would:" });
            if let Some(p) = row.get("pending") {
                for (verb, key) in [("register", "register"), ("deregister", "deregister")] {
                    if let Some(m) = p.get(key).and_then(Value::as_object) {
                        for (tg, ts) in m {
                            let _ = writeln!(out, "    {verb} in {tg}: {}", ts.as_array().map_or(0, Vec::len));
                        }
                    }
                }
                for k in ["production", "test"] {
                    if let Some(c) = p.get(k).and_then(Value::as_str) {
                        let _ = writeln!(out, "    {k} route: {c}");
                    }
                }
            }
        }
    }
    for w in lines("warnings") {
        let _ = writeln!(out, "  {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_the_three_commands() {
        assert_eq!(parse_args(&args(&["check"])), Ok((Command::Check, false)));
        assert_eq!(parse_args(&args(&["status", "--json"])), Ok((Command::Status, true)));
        assert_eq!(parse_args(&args(&["--dry-run", "reconcile"])), Ok((Command::Reconcile { dry_run: true }, false)));
        assert!(matches!(parse_args(&args(&["bindings", "list"])), Ok((Command::Bindings(_), false))));
        for bad in [&[][..], &["status", "--dry-run"], &["frobnicate"], &["check", "status"], &["--help"]] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
    }
}

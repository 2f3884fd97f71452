//! `bluegreen-mirror`, the operator CLI: `check` (every binding against the live account, before any deployment),
//! `status` (both sides of each binding, and whether I1–I3 hold), `reconcile [--dry-run]` (show or apply what the
//! reconciler would change), `bindings apply|list|remove` (the bindings stored in the state table; see
//! `cli_bindings`). It reads the same environment as the functions (`BLUEGREEN_MIRROR_TABLE`,
//! `BLUEGREEN_MIRROR_BINDINGS` when the bindings are not stored) and the standard AWS credential and region chain.
//!
//! Results go to stdout, diagnostics to stderr. Exit codes, the same for every command (docs/operations.md):
//! [`EXIT_OK`], [`EXIT_AWS`], [`EXIT_USAGE`], [`EXIT_FOUND`].

use std::fmt::Write as _;

use bluegreen_mirror::aws::Aws;
use bluegreen_mirror::config::Config;
use bluegreen_mirror::harness::{error_chain, Tracker};
use bluegreen_mirror::usecase::Engine;
use serde_json::{json, Value};

/// The release and the commit it was built from, as `--version` prints them.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BLUEGREEN_MIRROR_COMMIT"), ")");

/// Everything asked was done and found right.
pub const EXIT_OK: i32 = 0;
/// AWS could not be asked or answered with an error after the retries (unreachable, throttled, no credentials):
/// nothing is known to be wrong with the bindings; run again.
pub const EXIT_AWS: i32 = 1;
/// The command line, the environment or a bindings file is wrong: nothing was asked of AWS.
pub const EXIT_USAGE: i32 = 2;
/// The command ran and found problems: a binding misconfigured, out of sync, refused, or not there.
pub const EXIT_FOUND: i32 = 3;

/// The exit code an error stands for.
pub fn exit_code_of(e: &bluegreen_mirror::Error) -> i32 {
    use bluegreen_mirror::Error;
    match e {
        Error::Config(_) | Error::Event(_) => EXIT_USAGE,
        e if e.is_transient() => EXIT_AWS,
        _ => EXIT_FOUND,
    }
}

/// The worse of two exit codes: AWS failing outranks a problem found (the checks did not all run), which
/// outranks success.
pub fn worse(a: i32, b: i32) -> i32 {
    let rank = |c: i32| match c {
        EXIT_OK => 0,
        EXIT_FOUND => 1,
        EXIT_AWS => 2,
        _ => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Check,
    Status,
    Reconcile {
        dry_run: bool,
    },
    Bindings(crate::cli_bindings::BindingsCommand),
    Completions(clap_complete::Shell),
    /// One deployment's picture: from its record (`deployment_id`), or from a timeline document (`data`).
    Report {
        deployment_id: Option<String>,
        data: Option<String>,
    },
}

/// The command line as clap reads it: `--help`/`-h` (also per subcommand) and `--version` print to stdout and exit
/// 0; a usage error prints to stderr and exits 2.
#[derive(Debug, clap::Parser)]
#[command(
    name = "bluegreen-mirror",
    version = VERSION,
    about = "Operate bluegreen-mirror: check bindings, see both sides, reconcile, manage stored bindings",
    long_about = "Operate bluegreen-mirror: check bindings, see both sides of each, reconcile, manage stored bindings.\n\n\
        Reads the functions' environment (BLUEGREEN_MIRROR_TABLE; BLUEGREEN_MIRROR_BINDINGS when the bindings are not \
        stored) and the standard AWS credential and region chain.\n\n\
        Exit codes: 0 all good; 1 AWS could not be reached or failed after retries; 2 usage or configuration error; \
        3 problems found (a binding misconfigured, out of sync, refused or not there)."
)]
struct Cli {
    /// Print the result as JSON on stdout
    #[arg(long, global = true)]
    json: bool,
    /// The AWS region (else AWS_REGION, then the profile's)
    #[arg(long, global = true, value_name = "REGION")]
    region: Option<String>,
    /// The AWS profile for credentials and region (else AWS_PROFILE)
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,
    /// The state table (else BLUEGREEN_MIRROR_TABLE)
    #[arg(long, global = true, value_name = "TABLE")]
    table: Option<String>,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Check every binding against the live account (deployment group, target groups, routes, state table),
    /// before any deployment
    Check,
    /// Both sides of each binding: routes and weights, targets and their health, what a reconcile would change
    Status,
    /// Make every binding's private side mirror its public side now (with --dry-run, only show what would change)
    Reconcile {
        /// Show what would change; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// The bindings stored in the state table
    #[command(subcommand)]
    Bindings(BindingsSub),
    /// Draw one deployment as a self-contained HTML page on stdout (weights, hooks, the flip), from its record in
    /// the state table and the routes as they are now
    Report {
        /// The CodeDeploy deployment (d-XXXXXXXXX)
        #[arg(required_unless_present = "data")]
        deployment_id: Option<String>,
        /// Draw a timeline document instead (JSON, as `scripts/rehearse --report` writes it)
        #[arg(long, value_name = "FILE", conflicts_with = "deployment_id")]
        data: Option<String>,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell) on stdout
    Completions {
        /// The shell to complete in
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Subcommand)]
enum BindingsSub {
    /// Check the bindings in FILE ({"bindings": [...]}) against the account and the stored ones, then store them
    Apply {
        /// A bindings document, as BLUEGREEN_MIRROR_BINDINGS holds it
        file: String,
        /// Check and show the changes; store nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Every stored binding, its version, when it was applied, and whether it is usable
    List,
    /// Remove one stored binding
    Remove {
        /// The CodeDeploy application
        application: String,
        /// The CodeDeploy deployment group
        group: String,
    },
}

/// Where the CLI finds AWS and its table, when the command line says so rather than the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub table: Option<String>,
}

impl Command {
    /// The command's stable name in `--json` output.
    pub fn name(&self) -> &'static str {
        use crate::cli_bindings::BindingsCommand;
        match self {
            Command::Check => "check",
            Command::Status => "status",
            Command::Reconcile { dry_run: true } => "reconcile --dry-run",
            Command::Reconcile { dry_run: false } => "reconcile",
            Command::Bindings(BindingsCommand::Apply { dry_run: true, .. }) => "bindings apply --dry-run",
            Command::Bindings(BindingsCommand::Apply { dry_run: false, .. }) => "bindings apply",
            Command::Bindings(BindingsCommand::List) => "bindings list",
            Command::Bindings(BindingsCommand::Remove { .. }) => "bindings remove",
            Command::Completions(_) => "completions",
            Command::Report { .. } => "report",
        }
    }
}

/// Parses the arguments after the program name into a command and the `--json` flag. The error is clap's: it
/// knows whether it is help (stdout, 0) or a usage error (stderr, 2).
pub fn parse_args(args: &[String]) -> Result<(Command, bool), clap::Error> {
    parse(args).map(|(command, json, _)| (command, json))
}

/// [`parse_args`], with where to find AWS and the table.
pub fn parse(args: &[String]) -> Result<(Command, bool, Target), clap::Error> {
    use crate::cli_bindings::BindingsCommand;
    let cli = <Cli as clap::Parser>::try_parse_from(
        std::iter::once("bluegreen-mirror".to_string()).chain(args.iter().cloned()),
    )?;
    let command = match cli.command {
        Sub::Check => Command::Check,
        Sub::Status => Command::Status,
        Sub::Reconcile { dry_run } => Command::Reconcile { dry_run },
        Sub::Bindings(BindingsSub::Apply { file, dry_run }) => {
            Command::Bindings(BindingsCommand::Apply { file, dry_run })
        }
        Sub::Bindings(BindingsSub::List) => Command::Bindings(BindingsCommand::List),
        Sub::Bindings(BindingsSub::Remove { application, group }) => {
            Command::Bindings(BindingsCommand::Remove { application, group })
        }
        Sub::Completions { shell } => Command::Completions(shell),
        Sub::Report { deployment_id, data } => Command::Report { deployment_id, data },
    };
    Ok((command, cli.json, Target { region: cli.region, profile: cli.profile, table: cli.table }))
}

/// Runs the CLI; returns the exit code.
pub async fn main(args: Vec<String>) -> i32 {
    let (command, as_json, target) = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            // Help and the version go to stdout with 0; a usage error to stderr with 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    if let Command::Completions(shell) = command {
        let mut cli = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cli, "bluegreen-mirror", &mut std::io::stdout());
        return 0;
    }
    if let Command::Report { data: Some(path), .. } = &command {
        let picture = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {path}: {e}"))
            .and_then(|doc| serde_json::from_str::<crate::report::Picture>(&doc).map_err(|e| format!("{path}: {e}")));
        return match picture {
            Ok(p) => {
                print!("{}", p.render());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                EXIT_USAGE
            }
        };
    }
    let config = match Config::from_env_with_table(target.table.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    let aws = Aws::load_for_operator(&config, target.region.as_deref(), target.profile.as_deref()).await;
    if aws.region().is_none() {
        eprintln!("no AWS region: set AWS_REGION, pass --region, or choose a profile that has one (--profile)");
        return EXIT_USAGE;
    }
    // Checking a fleet's bindings reads ELB nine times each: paced like the functions, so that an operator's
    // command does not drain the account's bucket (BLUEGREEN_MIRROR_ELB_READS_PER_S sets the pace).
    let elb = aws.elb.with_paced_reads(config.elb_reads_per_s, bluegreen_mirror::aws::ReadBurst::Reconcile);
    // The CLI starts no follower: it builds no Lambda client.
    let engine = Engine::new(elb, aws.codedeploy, aws.state, bluegreen_mirror::ports::NoFollowers, config);
    // An operator sees ELB as it is; an observed binding's reconcile still writes nothing.
    engine.lb.reveal();
    if let Command::Bindings(c) = &command {
        return crate::cli_bindings::run(&engine, c, as_json).await;
    }
    if let Command::Report { deployment_id: Some(id), .. } = &command {
        return report(&engine, id).await;
    }
    let bindings = match engine.every_binding().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read the stored bindings: {}", error_chain(&e));
            return exit_code_of(&e);
        }
    };
    if bindings.is_empty() {
        eprintln!("no binding: store some with `bluegreen-mirror bindings apply FILE`");
        return EXIT_FOUND;
    }
    let mut rows = Vec::new();
    let mut text = String::new();
    let mut ok = true;
    let mut code = EXIT_OK;
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
                    let mut row = serde_json::to_value(&r).unwrap_or(Value::Null);
                    if engine.observes(b) {
                        let would: Vec<String> =
                            engine.lb.take_actions().into_iter().map(|w| format!("would have: {}", w.action)).collect();
                        row["mode"] = json!("observe");
                        row["warnings"] = json!(would);
                    }
                    Ok(vec![row])
                }
                // Handled before the loop.
                Command::Bindings(_) | Command::Completions(_) | Command::Report { .. } => Ok(Vec::new()),
            }
        }
        .await;
        let these = match result {
            Ok(v) => v,
            Err(e) => {
                code = worse(code, exit_code_of(&e));
                vec![json!({"binding": label, "ok": false, "error": error_chain(&e)})]
            }
        };
        for row in these {
            let good = row.get("error").is_none()
                && (!matches!(command, Command::Status) || row.get("in_sync").and_then(Value::as_bool) == Some(true));
            ok &= good;
            if !good {
                code = worse(code, EXIT_FOUND);
            }
            describe(&mut text, &command, &row);
            rows.push(row);
        }
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"command": command.name(), "ok": ok, "bindings": rows}))
                .unwrap_or_default()
        );
    } else {
        print!("{text}");
    }
    code
}

/// `report DEPLOYMENT_ID`: the record, and the routes of its binding as they are now.
async fn report<L, D, S, F>(engine: &Engine<L, D, S, F>, deployment_id: &str) -> i32
where
    L: bluegreen_mirror::ports::LoadBalancers,
    D: bluegreen_mirror::ports::Deployments,
    S: bluegreen_mirror::ports::StateStore + bluegreen_mirror::ports::Coordination,
    F: bluegreen_mirror::ports::Followers,
{
    use bluegreen_mirror::config::RouteRef;
    let rec = match engine.state.deployment(deployment_id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            eprintln!(
                "no record of deployment {deployment_id} in {} (records are kept 30 days, and only for deployments of a bound group)",
                engine.config.table
            );
            return EXIT_FOUND;
        }
        Err(e) => {
            eprintln!("cannot read deployment {deployment_id}: {}", error_chain(&e));
            return exit_code_of(&e);
        }
    };
    let mut live = Vec::new();
    if let Some(arn) = &rec.public_production_listener {
        if let Ok(r) = engine.lb.inner().route(&RouteRef::Listener(arn.clone())).await {
            live.push(("public production".to_string(), r));
        }
    }
    if let Ok(bindings) = engine.every_binding().await {
        let mine = bindings
            .iter()
            .filter_map(|(_, b)| b.as_ref().ok())
            .find(|b| b.application == rec.application && b.deployment_group == rec.deployment_group);
        if let Some(b) = mine {
            for side in b.sides() {
                if let Ok(r) = engine.lb.inner().route(&side.private_production_route).await {
                    live.push((format!("{} production", side.side_label()), r));
                }
            }
        }
    }
    print!("{}", crate::report::from_record(&rec, &live, bluegreen_mirror::clock::now_ms()).render());
    0
}

/// A stored binding's problem, for its row.
fn clone_error(e: &bluegreen_mirror::Error) -> bluegreen_mirror::Error {
    bluegreen_mirror::Error::Misconfigured(error_chain(e))
}

fn describe(out: &mut String, command: &Command, row: &Value) {
    let s = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    if matches!(command, Command::Status | Command::Reconcile { dry_run: true }) && row.get("error").is_none() {
        let in_sync = row.get("in_sync").and_then(Value::as_bool) == Some(true);
        let observed = if s("mode") == "observe" { "  (observe: nothing is written)" } else { "" };
        let state = if in_sync { "IN SYNC (I1-I3 hold)" } else { "OUT OF SYNC" };
        let _ = writeln!(out, "{}  {state}{observed}", s("binding"));
    } else {
        let _ = writeln!(out, "{}", s("binding"));
    }
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
        Command::Bindings(_) | Command::Completions(_) | Command::Report { .. } => {}
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
        Command::Status | Command::Reconcile { dry_run: true } => status_table(out, row),
    }
    for w in lines("warnings") {
        let _ = writeln!(out, "  {w}");
    }
}

/// One side of a binding as `status` shows it: its routes beside the public ones, each target group's targets and
/// health, and what a reconcile would change, in aligned columns.
fn status_table(out: &mut String, row: &Value) {
    let s = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let mut routes = vec![vec!["  ROUTE".to_string(), "PUBLIC".to_string(), "PRIVATE".to_string()]];
    routes.push(vec!["  production".into(), s("public_production"), s("private_production")]);
    if row.get("public_test").is_some_and(|v| !v.is_null()) || row.get("private_test").is_some_and(|v| !v.is_null()) {
        routes.push(vec!["  test".into(), s("public_test"), s("private_test")]);
    }
    out.push_str(&columns(&routes));
    let mut groups = vec![vec!["  TARGET GROUP".to_string(), "HEALTHY".to_string(), "TARGETS".to_string()]];
    if let Some(targets) = row.get("targets").and_then(Value::as_object) {
        for (tg, ts) in targets {
            let list: Vec<&str> =
                ts.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let healthy = list.iter().filter(|t| t.ends_with(" healthy")).count();
            let shown = if list.is_empty() { "(none)".to_string() } else { list.join(", ") };
            groups.push(vec![format!("  {tg}"), format!("{healthy}/{}", list.len()), shown]);
        }
    }
    out.push_str(&columns(&groups));
    let mut pending = Vec::new();
    if let Some(p) = row.get("pending") {
        for key in ["register", "deregister"] {
            if let Some(m) = p.get(key).and_then(Value::as_object) {
                for (tg, ts) in m {
                    let n = ts.as_array().map_or(0, Vec::len);
                    if n > 0 {
                        pending.push(vec!["  PENDING".to_string(), format!("{key} {n}"), format!("in {tg}")]);
                    }
                }
            }
        }
        for k in ["production", "test"] {
            if let Some(c) = p.get(k).and_then(Value::as_str) {
                pending.push(vec!["  PENDING".to_string(), format!("{k} route"), c.to_string()]);
            }
        }
    }
    out.push_str(&columns(&pending));
}

/// Rows padded to aligned columns (the last column is not padded).
fn columns(rows: &[Vec<String>]) -> String {
    let width = |i: usize| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0)).map(width).collect();
    let mut out = String::new();
    for r in rows {
        let last = r.len().saturating_sub(1);
        for (i, c) in r.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn status_is_an_aligned_table_of_both_sides() {
        let row = serde_json::json!({
            "binding": "web/web-bg", "in_sync": false,
            "public_production": "[pub-blue=90,pub-green=10]", "private_production": "[priv-blue=100,priv-green=0]",
            "public_test": "[pub-green=1]", "private_test": "[priv-green=1]",
            "targets": {"priv-blue": ["10.0.0.1:80 healthy", "10.0.0.2:80 draining"], "priv-green": []},
            "pending": {"register": {"priv-green": ["10.0.1.1:80"]}, "production": "[priv-blue=90,priv-green=10]"},
        });
        let mut out = String::new();
        describe(&mut out, &Command::Status, &row);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "web/web-bg  OUT OF SYNC");
        // Columns line up: each route's private route starts where the header's PRIVATE does.
        let col = lines[1].find("PRIVATE").unwrap_or(0);
        assert!(
            col > 0 && lines[2][col..].starts_with("[priv-blue=100") && lines[3][col..].starts_with("[priv-green=1]"),
            "{out}"
        );
        assert!(out.contains("priv-blue     1/2      10.0.0.1:80 healthy, 10.0.0.2:80 draining"), "{out}");
        assert!(out.contains("priv-green    0/0      (none)"), "{out}");
        assert!(out.contains("PENDING  register 1        in priv-green"), "{out}");
        assert!(out.contains("PENDING  production route  [priv-blue=90,priv-green=10]"), "{out}");
    }

    #[test]
    fn parses_the_commands() {
        assert_eq!(parse_args(&args(&["check"])).ok(), Some((Command::Check, false)));
        assert_eq!(parse_args(&args(&["status", "--json"])).ok(), Some((Command::Status, true)));
        assert_eq!(parse_args(&args(&["--json", "status"])).ok(), Some((Command::Status, true)));
        assert_eq!(
            parse_args(&args(&["reconcile", "--dry-run"])).ok(),
            Some((Command::Reconcile { dry_run: true }, false))
        );
        assert!(matches!(parse_args(&args(&["bindings", "list"])), Ok((Command::Bindings(_), false))));
        assert!(matches!(parse_args(&args(&["completions", "bash"])), Ok((Command::Completions(_), false))));
    }

    #[test]
    fn usage_errors_exit_2_on_stderr() {
        for bad in [&[][..], &["status", "--dry-run"], &["frobnicate"], &["check", "status"], &["completions", "tcsh"]]
        {
            let e = parse_args(&args(bad)).err();
            assert!(e.as_ref().is_some_and(|e| e.use_stderr() && e.exit_code() == 2), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn help_and_version_exit_0_on_stdout() {
        for ask in [&["--help"][..], &["-h"], &["status", "--help"], &["bindings", "apply", "-h"], &["--version"]] {
            let e = parse_args(&args(ask)).err();
            assert!(e.as_ref().is_some_and(|e| !e.use_stderr() && e.exit_code() == 0), "{ask:?}: {e:?}");
        }
        let help = parse_args(&args(&["bindings", "--help"])).err().map(|e| e.render().to_string()).unwrap_or_default();
        assert!(help.contains("apply") && help.contains("remove"), "{help}");
    }
}

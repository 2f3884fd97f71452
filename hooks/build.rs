//! Names the commit the CLI was built from, for `--version`: `BLUEGREEN_MIRROR_COMMIT` when the build sets it (a
//! source archive has no git), else git's HEAD, else "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BLUEGREEN_MIRROR_COMMIT");
    let git = Path::new("..").join(".git");
    // A new commit or a branch switch changes one of these; the build then names the new HEAD.
    for watched in ["HEAD", "packed-refs"] {
        if git.join(watched).exists() {
            println!("cargo:rerun-if-changed={}", git.join(watched).display());
        }
    }
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        if let Some(reference) = head.strip_prefix("ref: ") {
            let path = git.join(reference.trim());
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let commit = std::env::var("BLUEGREEN_MIRROR_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
            let sha = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (out.status.success() && !sha.is_empty()).then_some(sha)
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=BLUEGREEN_MIRROR_COMMIT={commit}");
}

//! The operator CLI (see `bluegreen_mirror_hooks::cli`).

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(bluegreen_mirror_hooks::cli::main(args).await);
}

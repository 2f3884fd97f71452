//! The reconciler: keeps the private side in lockstep between hooks (EventBridge: CodeDeploy state changes, ECS
//! task state changes, a schedule) and follows traffic shifting step by step (see `bluegreen_mirror::usecase`).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    bluegreen_mirror_hooks::serve_reconciler().await
}

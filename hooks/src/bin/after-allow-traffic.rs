//! The `AfterAllowTraffic` CodeDeploy lifecycle hook (see `bluegreen_mirror::usecase`).

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    bluegreen_mirror_hooks::serve::<bluegreen_mirror_hooks::AfterAllowTrafficHook>().await
}

//! placeholder

/// Flags of `keysmith run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {}

pub async fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("the controller is not built yet")
}

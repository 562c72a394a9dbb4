//! placeholder

/// Flags of `keysmith render`.
#[derive(clap::Args, Debug, Clone)]
pub struct RenderArgs {}

pub fn run(_args: RenderArgs) -> anyhow::Result<()> {
    anyhow::bail!("render is not built yet")
}

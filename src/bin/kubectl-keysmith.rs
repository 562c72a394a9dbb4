//! `kubectl-keysmith`: the kubectl plugin (`kubectl keysmith …`). See docs/kubectl-plugin.md.

#[path = "../plugin/mod.rs"]
mod plugin;

use clap::Parser;

fn main() {
    // One TLS crypto provider (ring), as the operator binary installs it.
    // (rustls 0.23.48 deprecates ring's provider: no post-quantum key exchange; ring stays
    // the one provider, see src/main.rs)
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = plugin::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(3);
        }
    };
    let code = rt.block_on(plugin::run(cli));
    std::process::exit(code);
}

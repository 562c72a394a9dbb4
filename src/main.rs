use std::net::SocketAddr;

use clap::{Parser, Subcommand};

/// keysmith: API keys at AI and compute providers, delivered into Kubernetes Secrets.
#[derive(Parser, Debug)]
#[command(name = "keysmith", version, about, long_about = None)]
struct Cli {
    /// Log format: `text` or `json`.
    #[arg(
        long,
        global = true,
        default_value = "text",
        env = "KEYSMITH_LOG_FORMAT"
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (in-cluster config or KUBECONFIG).
    Run(keysmith::controller::RunArgs),
    /// Print the CustomResourceDefinitions as YAML (the source of crds/).
    Crds {
        /// Write one file per CRD (`<plural>.<group>.yaml`) into this directory instead of
        /// printing the stream.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<std::path::PathBuf>,
    },
    /// Run a stateful emulator of a provider's key API.
    Emulate {
        /// Address to listen on (port 0 picks a free port; the bound address is printed). The
        /// default differs from `keysmith run --metrics-addr` (8080), so both run side by side.
        #[arg(long, default_value = "127.0.0.1:8787", global = true)]
        listen: SocketAddr,
        #[command(flatten)]
        tls: keysmith::emulators::TlsArgs,
        #[command(subcommand)]
        provider: keysmith::emulators::EmulateCommand,
    },
    /// GET each URL and fail unless it answers 2xx (and, for `URL=TEXT`, its body contains
    /// TEXT): the chart's `helm test` hook, from the operator's own image (no shell, no curl).
    Probe {
        /// `http://host:port/path`, optionally `=TEXT` the body must contain.
        #[arg(required = true)]
        urls: Vec<String>,
        /// Per-request timeout.
        #[arg(long, default_value = "10s", value_parser = parse_timeout)]
        timeout: std::time::Duration,
    },
    /// Print the Secret (value redacted) and the provider calls an ApiKey would cause, without a cluster.
    Render(keysmith::render::RenderArgs),
}

/// Logs go to stderr; colour codes only when stderr is a terminal (never into log files).
fn init_logging(format: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The one TLS crypto provider (ring), chosen explicitly: rustls cannot pick one by itself
    // when a build compiles in more than one, and every Kubernetes and provider client needs it.
    // rustls 0.23.48 deprecates ring's provider for want of post-quantum key exchange (only its
    // aws-lc-rs provider has X25519MLKEM768); kube's `ring` feature and a C-free build keep ring
    // here: switching to aws-lc-rs (cmake, a C toolchain, a slower cold build) is its own change.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    if provider.install_default().is_err() {
        anyhow::bail!("a TLS crypto provider was already installed");
    }
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Command::Run(args) => keysmith::controller::run(args).await,
        Command::Crds { output_dir: None } => {
            print!("{}", keysmith::api::crds_yaml());
            Ok(())
        }
        Command::Crds {
            output_dir: Some(dir),
        } => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in keysmith::api::crd_files() {
                let path = dir.join(file);
                std::fs::write(&path, yaml)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Emulate {
            listen,
            tls,
            provider,
        } => keysmith::emulators::run(listen, tls, provider).await,
        Command::Render(args) => keysmith::render::run(args),
        Command::Probe { urls, timeout } => probe(&urls, timeout).await,
    }
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    keysmith::providers::parse_duration(s)
}

/// `keysmith probe`: every URL answers 2xx (and holds its expected text).
async fn probe(urls: &[String], timeout: std::time::Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    for spec in urls {
        let (url, needle) = match spec.split_once('=') {
            Some((u, n)) if !u.contains('?') => (u, Some(n)),
            _ => (spec.as_str(), None),
        };
        let mut resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        let status = resp.status();
        // bounded: a probe reads the first MiB at most
        let mut bytes = Vec::new();
        while bytes.len() < 1 << 20 {
            match resp.chunk().await {
                Ok(Some(c)) => bytes.extend_from_slice(&c),
                _ => break,
            }
        }
        let body = String::from_utf8_lossy(&bytes);
        anyhow::ensure!(status.is_success(), "GET {url}: {status}");
        if let Some(n) = needle {
            anyhow::ensure!(
                body.contains(n),
                "GET {url}: {status}, but no {n:?} in the body"
            );
        }
        println!(
            "GET {url}: {status}{}",
            needle.map(|n| format!(", holds {n:?}")).unwrap_or_default()
        );
    }
    Ok(())
}

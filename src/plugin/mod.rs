//! `kubectl keysmith`: every key end to end, rotation by selector, and the leak runbook in one
//! command. It speaks to the API server with the user's own kubeconfig and RBAC, and needs
//! nothing from the operator but what the API server holds. Secrets are read as metadata only.
//! See docs/kubectl-plugin.md.

pub mod gather;
mod render;
mod rotate;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kube::{Client, ResourceExt};

use gather::Scope;

/// Exit codes: 0 healthy / done, 1 something is wrong (a problem reported, a wait that timed
/// out), 2 usage error (clap), 3 the cluster could not be asked (not found, forbidden, no
/// connection).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Usage(String),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-keysmith",
    bin_name = "kubectl keysmith",
    about = "See every keysmith key end to end, rotate by selector, respond to a leak in one command",
    long_about = "See every keysmith ApiKey end to end (provider → Secret → workloads → key), rotate keys by name or selector, and revoke a leaked key in one command.\n\nUses your kubeconfig (KUBECONFIG, current context) and your RBAC; reads Secrets' metadata only, never their data.\n\nExit codes: 0 healthy/done, 1 something is wrong or a wait timed out, 2 usage error, 3 the cluster could not be asked (not found, forbidden, unreachable).",
    version
)]
pub struct Cli {
    /// Namespace (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long = "all-namespaces", global = true)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A tree per ApiKey: provider → Secret → workloads using it → the key → what is wrong.
    #[command(
        after_help = "Examples:\n  kubectl keysmith status chat-backend -n team-a\n  kubectl keysmith status -A\n  kubectl keysmith status -l team=payments -o json\n\nExit code 1 when any ApiKey shown has a problem (usable in scripts)."
    )]
    Status {
        /// ApiKey names (default: every ApiKey in the namespace).
        names: Vec<String>,
        /// Label selector.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Only ApiKeys of this provider object (spec.providerRef.name).
        #[arg(long)]
        provider: Option<String>,
    },
    /// Rotate keys now (sets the keysmith.dev/rotate annotation).
    #[command(
        after_help = "Examples:\n  kubectl keysmith rotate chat-backend -n team-a --wait\n  kubectl keysmith rotate -A -l team=payments\n  kubectl keysmith rotate --provider openrouter -A --grace 5m\n\nThere is no per-request grace period in keysmith: --grace sets spec.rotation.gracePeriod\n(it stays set after the rotation; a GitOps tool may revert it)."
    )]
    Rotate {
        /// ApiKey names.
        names: Vec<String>,
        /// Label selector.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Only ApiKeys of this provider object (spec.providerRef.name).
        #[arg(long)]
        provider: Option<String>,
        /// Set spec.rotation.gracePeriod to this (Go duration, 0s..720h) with the request.
        #[arg(long)]
        grace: Option<String>,
        /// Follow progress: new key written, restarts rolled out, old key revoked.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Leak runbook: rotate with zero grace, restart workloads, wait until the old key is revoked.
    #[command(
        after_help = "Examples:\n  kubectl keysmith revoke-now chat-backend -n team-a\n  kubectl keysmith revoke-now -A --key-hint sk-or-v1-3f9\n\nSets spec.rotation.gracePeriod=0s and the rotate annotation, waits for the new key, the\nrestarts and the revocation of the old key, then puts the previous gracePeriod back\n(--keep-zero-grace leaves 0s)."
    )]
    RevokeNow {
        /// ApiKey names.
        names: Vec<String>,
        /// Find the ApiKey(s) whose status.keyHint, status.keyID or Secret key-id matches.
        #[arg(long)]
        key_hint: Option<String>,
        /// How long to wait for the old key to be revoked (a restart target whose rollout does
        /// not complete holds the revocation up to 10m).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Leave spec.rotation.gracePeriod at 0s afterwards.
        #[arg(long)]
        keep_zero_grace: bool,
    },
    /// Keys that expire soon (status.expiresAt).
    #[command(
        after_help = "Examples:\n  kubectl keysmith expiring -A\n  kubectl keysmith expiring --within 30d -n team-a\n\nExit code 1 when a key listed has already expired."
    )]
    Expiring {
        /// Window (e.g. 7d, 48h).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        within: Duration,
    },
    /// Workloads that use a Secret, or the Secret of an ApiKey.
    #[command(
        after_help = "Examples:\n  kubectl keysmith who-uses chat-backend -n team-a\n  kubectl keysmith who-uses apikey/chat-backend\n  kubectl keysmith who-uses secret/openrouter-key"
    )]
    WhoUses {
        /// SECRET, APIKEY, secret/NAME or apikey/NAME (a bare name is an ApiKey if one exists).
        target: String,
    },
    /// Spend from status.usage, highest first.
    #[command(
        after_help = "Examples:\n  kubectl keysmith top -A\n  kubectl keysmith top -A --by provider"
    )]
    Top {
        #[arg(long, value_enum, default_value = "apikey")]
        by: TopBy,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TopBy {
    Apikey,
    Namespace,
    Provider,
}

/// Run a parsed command; the exit code.
pub async fn run(cli: Cli) -> i32 {
    let style = render::Style::detect();
    match run_inner(cli, &style).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{} {e}", style.red("error:"));
            match e {
                PluginError::Usage(_) => 2,
                _ => 3,
            }
        }
    }
}

async fn client() -> Result<Client, PluginError> {
    Client::try_default()
        .await
        .map_err(|e| PluginError::Api(format!("no cluster: {}", gather::bounded(&e.to_string()))))
}

fn scope(
    cli: &Cli,
    client: &Client,
    names: &[String],
    selector: &Option<String>,
    provider: &Option<String>,
) -> Result<Scope, PluginError> {
    if cli.all_namespaces && !names.is_empty() {
        return Err(PluginError::Usage(
            "name ApiKeys with -n NAMESPACE, not with -A".into(),
        ));
    }
    let namespace = if cli.all_namespaces {
        None
    } else {
        Some(
            cli.namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string()),
        )
    };
    Ok(Scope {
        namespace,
        names: names.to_vec(),
        selector: selector.clone(),
        provider: provider.clone(),
    })
}

async fn run_inner(cli: Cli, style: &render::Style) -> Result<i32, PluginError> {
    let client = client().await?;
    let out = cli.output;
    match &cli.command {
        Command::Status {
            names,
            selector,
            provider,
        } => {
            let sc = scope(&cli, &client, names, selector, provider)?;
            let keys = gather::apikeys(&client, &sc).await?;
            let reports = gather::reports(&client, &keys).await;
            if reports.is_empty() && out == Output::Table {
                println!("No ApiKeys found{}.", render::where_(&sc));
                return Ok(0);
            }
            render::emit(out, &reports, || render::status(&reports, style))?;
            Ok(i32::from(reports.iter().any(|r| !r.problems.is_empty())))
        }
        Command::Rotate {
            names,
            selector,
            provider,
            grace,
            wait,
            timeout,
        } => {
            if names.is_empty() && selector.is_none() && provider.is_none() && !cli.all_namespaces {
                return Err(PluginError::Usage(
                    "say which keys: NAME..., -l SELECTOR, --provider P, or --all-namespaces"
                        .into(),
                ));
            }
            let sc = scope(&cli, &client, names, selector, provider)?;
            let keys = gather::apikeys(&client, &sc).await?;
            if keys.is_empty() {
                return Err(PluginError::NotFound(format!(
                    "no ApiKeys match{}",
                    render::where_(&sc)
                )));
            }
            rotate::rotate(&client, keys, grace.clone(), *wait, *timeout, out, style).await
        }
        Command::RevokeNow {
            names,
            key_hint,
            timeout,
            keep_zero_grace,
        } => {
            let keys = match key_hint {
                Some(h) => {
                    if !names.is_empty() {
                        return Err(PluginError::Usage(
                            "give NAME... or --key-hint, not both".into(),
                        ));
                    }
                    let sc = scope(&cli, &client, &[], &None, &None)?;
                    let found = rotate::by_hint(&client, &sc, h).await?;
                    if found.is_empty() {
                        return Err(PluginError::NotFound(format!(
                            "no ApiKey holds a key matching hint {h:?}{}",
                            render::where_(&sc)
                        )));
                    }
                    found
                }
                None => {
                    if names.is_empty() {
                        return Err(PluginError::Usage(
                            "name the ApiKeys, or give --key-hint HINT".into(),
                        ));
                    }
                    let sc = scope(&cli, &client, names, &None, &None)?;
                    gather::apikeys(&client, &sc).await?
                }
            };
            rotate::revoke_now(&client, keys, *timeout, *keep_zero_grace, out, style).await
        }
        Command::Expiring { within } => {
            let sc = scope(&cli, &client, &[], &None, &None)?;
            let keys = gather::apikeys(&client, &sc).await?;
            let rows = render::expiring_rows(&keys, *within);
            let expired = rows.iter().any(|r| r.expired);
            render::emit(out, &rows, || render::expiring(&rows, style))?;
            Ok(i32::from(expired))
        }
        Command::WhoUses { target } => {
            let (kind, name) = match target.split_once('/') {
                Some((k, n)) => (Some(k.to_ascii_lowercase()), n.to_string()),
                None => (None, target.clone()),
            };
            let sc = scope(&cli, &client, &[], &None, &None)?;
            let ns = sc.namespace.clone().ok_or_else(|| {
                PluginError::Usage("who-uses looks in one namespace: use -n, not -A".into())
            })?;
            let secret = match kind.as_deref() {
                Some("secret" | "secrets") => name.clone(),
                Some("apikey" | "apikeys" | "ak") | None => {
                    let api: kube::Api<keysmith::api::ApiKey> =
                        kube::Api::namespaced(client.clone(), &ns);
                    match api.get_opt(&name).await {
                        Ok(Some(ak)) => ak
                            .status
                            .as_ref()
                            .and_then(|s| s.secret_name.clone())
                            .unwrap_or_else(|| ak.secret_name()),
                        Ok(None) if kind.is_none() => name.clone(),
                        Ok(None) => {
                            return Err(PluginError::NotFound(format!(
                                "not found: apikey {name:?} in namespace {ns}"
                            )))
                        }
                        Err(e) => {
                            return Err(gather::api_err(
                                "get",
                                "apikeys.keysmith.dev",
                                Some(&ns),
                                e,
                            ))
                        }
                    }
                }
                Some(other) => {
                    return Err(PluginError::Usage(format!(
                        "who-uses takes secret/NAME or apikey/NAME, not {other}/"
                    )))
                }
            };
            let wl = gather::Workloads::list(&client, &ns).await;
            for u in &wl.unreadable {
                eprintln!("{} {u}", style.yellow("warning:"));
            }
            let users = wl.for_secret(&secret, &[]);
            // Which ApiKeys write this Secret.
            let keys = gather::apikeys(&client, &sc).await.unwrap_or_default();
            let owners: Vec<String> = keys
                .iter()
                .filter(|ak| {
                    ak.status
                        .as_ref()
                        .and_then(|s| s.secret_name.clone())
                        .unwrap_or_else(|| ak.secret_name())
                        == secret
                })
                .map(|ak| ak.name_any())
                .collect();
            let doc = render::WhoUses {
                namespace: ns,
                secret,
                apikeys: owners,
                workloads: users,
            };
            render::emit(out, &doc, || render::who_uses(&doc, style))?;
            Ok(0)
        }
        Command::Top { by } => {
            let sc = scope(&cli, &client, &[], &None, &None)?;
            let keys = gather::apikeys(&client, &sc).await?;
            let rows = render::top_rows(&keys, *by);
            render::emit(out, &rows, || render::top(&rows, *by))?;
            Ok(0)
        }
    }
}

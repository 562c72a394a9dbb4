//! Output: trees and tables on a terminal (colour only there), JSON and YAML for scripts.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use chrono::Utc;
use kube::ResourceExt;
use serde::Serialize;

use keysmith::api::ApiKey;

use super::gather::{self, KeyReport, Scope, WorkloadInfo};
use super::{Output, PluginError, TopBy};

/// ANSI colour, only when stdout is a terminal and NO_COLOR is not set.
pub struct Style {
    on: bool,
}

impl Style {
    pub fn detect() -> Style {
        Style {
            on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
}

/// Print `doc` as JSON/YAML, or the table `table` renders.
pub fn emit<T: Serialize>(
    out: Output,
    doc: &T,
    table: impl FnOnce() -> String,
) -> Result<(), PluginError> {
    let text = match out {
        Output::Table => table(),
        Output::Json => serde_json::to_string_pretty(doc)
            .map(|s| s + "\n")
            .map_err(|e| PluginError::Api(e.to_string()))?,
        Output::Yaml => serde_yaml::to_string(doc).map_err(|e| PluginError::Api(e.to_string()))?,
    };
    print!("{text}");
    Ok(())
}

pub fn where_(sc: &Scope) -> String {
    let mut s = match &sc.namespace {
        Some(ns) => format!(" in namespace {ns}"),
        None => " in any namespace".to_string(),
    };
    if let Some(l) = &sc.selector {
        let _ = write!(s, " with labels {l}");
    }
    if let Some(p) = &sc.provider {
        let _ = write!(s, " of provider {p}");
    }
    s
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

fn workload_line(w: &WorkloadInfo, secret: &str, style: &Style) -> String {
    let mut line = format!("{}/{}", w.kind, w.name);
    if w.missing {
        let _ = write!(line, "  {}", style.red("✗ restart target does not exist"));
        return line;
    }
    let _ = write!(
        line,
        "  {}/{} ready, {} pod{}",
        w.ready,
        w.desired,
        w.pods,
        if w.pods == 1 { "" } else { "s" }
    );
    if !w.uses.is_empty() {
        let _ = write!(line, "  ({})", w.uses.join(", "));
    }
    if w.restart_target {
        line.push_str("  [restart target]");
        if w.uses.is_empty() {
            let _ = write!(
                line,
                "  {}",
                style.red(&format!("✗ does not use Secret {secret}"))
            );
        }
    } else if w.reloader {
        line.push_str("  [restarted by Reloader]");
    } else if w.restartable {
        let _ = write!(line, "  {}", style.yellow("! not a restart target"));
    }
    line
}

/// The `status` tree.
pub fn status(reports: &[KeyReport], style: &Style) -> String {
    let mut o = String::new();
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            o.push('\n');
        }
        let verdict = if r.problems.is_empty() {
            style.green("✓ OK")
        } else {
            style.red(&format!("✗ {} problem(s)", r.problems.len()))
        };
        let _ = writeln!(
            o,
            "{}  {verdict}",
            style.bold(&format!("ApiKey {}/{}", r.namespace, r.name))
        );
        // Provider.
        let p = &r.provider;
        let pstate = if let Some(why) = &p.unreadable {
            style.yellow(&format!("unreadable: {why}"))
        } else if !p.found {
            style.red("✗ not found")
        } else if p.ready.as_deref() == Some("True") {
            style.green(&format!(
                "Ready ({}), credentials verified {}",
                opt(&p.reason),
                opt(&p.verified_at)
            ))
        } else {
            style.red(&format!(
                "Ready={} {}: {}",
                opt(&p.ready),
                opt(&p.reason),
                opt(&p.message)
            ))
        };
        let ptype = p
            .provider_type
            .as_deref()
            .map(|t| format!(" [{t}]"))
            .unwrap_or_default();
        let _ = writeln!(o, "├─ provider  {}/{}{ptype}  {pstate}", p.kind, p.name);
        // Secret.
        let s = &r.secret;
        let sstate = if let Some(why) = &s.unreadable {
            style.yellow(&format!("unreadable: {why}"))
        } else if !s.exists {
            style.red("✗ does not exist")
        } else {
            format!("key id {}, written {}", opt(&s.key_id), opt(&s.written_at))
        };
        let _ = writeln!(o, "├─ secret    {}  {sstate}", s.name);
        if r.workloads.is_empty() {
            let _ = writeln!(o, "│  └─ (no workload uses it)");
        }
        for (j, w) in r.workloads.iter().enumerate() {
            let branch = if j + 1 == r.workloads.len() {
                "└─"
            } else {
                "├─"
            };
            let _ = writeln!(o, "│  {branch} {}", workload_line(w, &s.name, style));
        }
        // Key.
        let k = &r.key;
        let live = if k.live {
            style.green("live")
        } else {
            style.red("not live")
        };
        let _ = writeln!(
            o,
            "├─ key       {} {live}  hint {}  created {}",
            opt(&k.key_id),
            opt(&k.key_hint),
            opt(&k.created_at)
        );
        let mut facts = Vec::new();
        facts.push(format!(
            "expires {}",
            k.expires_at.as_deref().unwrap_or("never")
        ));
        facts.push(format!("last used {}", opt(&k.last_used_at)));
        if let Some(l) = &k.limit {
            facts.push(format!("limit {l}"));
        }
        if let Some(u) = &k.usage {
            let unit = u.unit.as_deref().unwrap_or("");
            let mut parts = Vec::new();
            for (n, v) in [
                ("total", &u.total),
                ("monthly", &u.monthly),
                ("weekly", &u.weekly),
                ("daily", &u.daily),
                ("remaining", &u.limit_remaining),
            ] {
                if let Some(v) = v {
                    parts.push(format!("{n} {v}"));
                }
            }
            facts.push(
                format!("usage {} {unit}", parts.join(", "))
                    .trim_end()
                    .to_string(),
            );
        }
        if let Some(n) = &k.next_rotation_at {
            facts.push(format!("next rotation {n}"));
        }
        if let Some(p) = &k.rotation_in_progress {
            facts.push(format!("rotation in progress: {p}"));
        }
        let _ = writeln!(o, "│  {}", facts.join(" · "));
        for pk in &k.previous_keys {
            let _ = writeln!(
                o,
                "│  └─ previous key {} live until {}",
                pk.key_id, pk.delete_after
            );
        }
        // Conditions and problems.
        if r.conditions.is_empty() && r.problems.is_empty() && r.notes.is_empty() {
            let _ = writeln!(o, "└─ conditions  all True");
        } else {
            let _ = writeln!(o, "└─ conditions");
            for c in &r.conditions {
                let _ = writeln!(
                    o,
                    "   {} {}={} {} (since {}): {}",
                    style.red("✗"),
                    c.type_,
                    c.status,
                    c.reason,
                    c.since.as_deref().unwrap_or("-"),
                    c.message
                );
                let _ = writeln!(o, "     → {}", c.hint);
            }
            for p in r.problems.iter().filter(|p| {
                !r.conditions
                    .iter()
                    .any(|c| p.ends_with(&c.reason) && p.starts_with(&c.type_))
            }) {
                let _ = writeln!(o, "   {} {p}", style.red("✗"));
            }
            for n in &r.notes {
                let _ = writeln!(o, "   {} {n}", style.yellow("i"));
            }
        }
    }
    o
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpiringRow {
    pub namespace: String,
    pub name: String,
    pub key_hint: Option<String>,
    pub expires_at: String,
    pub expires_in: String,
    pub expired: bool,
    /// keysmith renews it before expiry (spec.rotation.renewBefore).
    pub renews: Option<String>,
}

pub fn expiring_rows(keys: &[ApiKey], within: Duration) -> Vec<ExpiringRow> {
    let now = Utc::now();
    let horizon = chrono::Duration::from_std(within)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
    let mut rows: Vec<(chrono::DateTime<Utc>, ExpiringRow)> = keys
        .iter()
        .filter_map(|ak| {
            let st = ak.status.as_ref()?;
            let at = st.expires_at.as_deref()?;
            let t = gather::parse_time(at)?;
            (t <= horizon).then(|| {
                let left = t - now;
                (
                    t,
                    ExpiringRow {
                        namespace: ak.namespace().unwrap_or_default(),
                        name: ak.name_any(),
                        key_hint: st.key_hint.clone(),
                        expires_at: at.to_string(),
                        expires_in: if left.num_seconds() <= 0 {
                            "expired".into()
                        } else {
                            human(left.to_std().unwrap_or_default())
                        },
                        expired: left.num_seconds() <= 0,
                        renews: ak
                            .spec
                            .rotation
                            .as_ref()
                            .and_then(|r| r.renew_before.clone())
                            .map(|r| format!("{r} before")),
                    },
                )
            })
        })
        .collect();
    rows.sort_by_key(|(t, _)| *t);
    rows.into_iter().map(|(_, r)| r).collect()
}

/// A duration in its largest two units (`3d4h`, `5m12s`).
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (dd, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    if dd > 0 {
        format!("{dd}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{}.{}s", sec, d.subsec_millis() / 100)
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut o = String::new();
    let line = |cells: Vec<String>, o: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            l.push_str(c);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(pad + 3));
            }
        }
        o.push_str(l.trim_end());
        o.push('\n');
    };
    line(header.iter().map(|s| s.to_string()).collect(), &mut o);
    for r in rows {
        line(r.clone(), &mut o);
    }
    o
}

pub fn expiring(rows: &[ExpiringRow], style: &Style) -> String {
    if rows.is_empty() {
        return "No key expires in that window.\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.namespace.clone(),
                r.name.clone(),
                r.key_hint.clone().unwrap_or_else(|| "-".into()),
                r.expires_at.clone(),
                r.expires_in.clone(),
                r.renews
                    .clone()
                    .unwrap_or_else(|| "no (set spec.rotation.renewBefore)".into()),
            ]
        })
        .collect();
    let t = table(
        &["NAMESPACE", "APIKEY", "KEY", "EXPIRES", "IN", "RENEWED"],
        &cells,
    );
    if style.on {
        t.replace("expired", &style.red("expired"))
    } else {
        t
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WhoUses {
    pub namespace: String,
    pub secret: String,
    pub apikeys: Vec<String>,
    pub workloads: Vec<WorkloadInfo>,
}

pub fn who_uses(doc: &WhoUses, _style: &Style) -> String {
    let mut o = format!(
        "Secret {}/{} (written by ApiKey {})\n",
        doc.namespace,
        doc.secret,
        if doc.apikeys.is_empty() {
            "none".to_string()
        } else {
            doc.apikeys.join(", ")
        }
    );
    if doc.workloads.is_empty() {
        o.push_str("No workload uses it.\n");
        return o;
    }
    let rows: Vec<Vec<String>> = doc
        .workloads
        .iter()
        .map(|w| {
            vec![
                w.kind.clone(),
                w.name.clone(),
                format!("{}/{}", w.ready, w.desired),
                w.pods.to_string(),
                w.uses.join(", "),
            ]
        })
        .collect();
    o.push_str(&table(&["KIND", "NAME", "READY", "PODS", "HOW"], &rows));
    o
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopRow {
    pub name: String,
    pub spend: f64,
    pub unit: String,
    pub keys: usize,
}

pub fn top_rows(keys: &[ApiKey], by: TopBy) -> Vec<TopRow> {
    let g = gather::group_spend(keys, |ak| match by {
        TopBy::Apikey => format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any()),
        TopBy::Namespace => ak.namespace().unwrap_or_default(),
        TopBy::Provider => format!(
            "{:?}/{}",
            ak.spec.provider_ref.kind, ak.spec.provider_ref.name
        ),
    });
    let mut rows: Vec<TopRow> = g
        .into_iter()
        .map(|(name, (spend, keys, unit))| TopRow {
            name,
            spend,
            unit,
            keys,
        })
        .collect();
    rows.sort_by(|a, b| b.spend.total_cmp(&a.spend).then(a.name.cmp(&b.name)));
    rows
}

pub fn top(rows: &[TopRow], by: TopBy) -> String {
    let head = match by {
        TopBy::Apikey => "APIKEY",
        TopBy::Namespace => "NAMESPACE",
        TopBy::Provider => "PROVIDER",
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                format!("{:.2}", r.spend),
                r.unit.clone(),
                r.keys.to_string(),
            ]
        })
        .collect();
    table(&[head, "SPEND", "UNIT", "KEYS"], &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiring_takes_any_window_without_overflow() {
        let ak: ApiKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysmith.dev/v1alpha1", "kind": "ApiKey",
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"providerRef": {"name": "p"}},
            "status": {"expiresAt": "2020-01-01T00:00:00Z"}
        }))
        .unwrap();
        for within in [Duration::ZERO, Duration::from_secs(u64::MAX)] {
            let rows = expiring_rows(std::slice::from_ref(&ak), within);
            assert_eq!(rows.len(), 1);
            assert!(rows[0].expired);
        }
        assert_eq!(human(Duration::from_secs(3 * 86400 + 7200)), "3d2h");
        assert_eq!(human(Duration::from_millis(12_300)), "12.3s");
    }
}

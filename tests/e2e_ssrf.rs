//! issue 17 item 5, reproduced with the operator binary on a real API server: with the
//! operator's default flags, a tenant's namespaced KeyProvider aimed at loopback made keysmith
//! send 7,347 requests in 20 s. Now the default refuses it: zero connections reach the address
//! (an IP literal over http, and a host name that resolves to loopback over https) and the
//! ApiKey and the KeyProvider say why without naming the address. With the admin's flags the
//! same objects reach the server. Runs on the local control plane (see docs/e2e.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use cluster::{Cluster, EmulatorOptions, ProviderOptions};
use keysmith_testkit::cluster;

const MINUTE: Duration = Duration::from_secs(60);

/// A loopback server that counts the connections made to it, and answers anything that looks
/// like an HTTP request with a 401 (so a client that reaches it gets an answer, not a hang).
async fn counting_server() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let handle = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            });
        }
    });
    (port, count, handle)
}

#[ignore = "needs a Kubernetes control plane: runs with --ignored (docs/testing.md)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_keyprovider_aimed_at_loopback_gets_nothing_by_default() {
    cluster::require("a_tenant_keyprovider_aimed_at_loopback_gets_nothing_by_default");
    let cluster = Cluster::start(
        "ssrf",
        EmulatorOptions::default(),
        ProviderOptions::default(),
    )
    .await;
    let c = &cluster;
    let (port, count, server) = counting_server().await;
    let op = c.start_operator("default-flags", &[]).await;

    // The tenant's own credentials Secret and two KeyProviders: an IP literal over http, and
    // a name that resolves to loopback over https.
    c.put_secret("tenant-credentials", &[("token", "sk-or-v1-tenant")], &[])
        .await;
    let kps: Api<keysmith::api::KeyProvider> = Api::namespaced(c.client.clone(), &c.ns);
    for (name, base) in [
        ("loopback-ip", format!("http://127.0.0.1:{port}/api/v1")),
        ("loopback-name", format!("https://localhost:{port}/api/v1")),
    ] {
        let kp: keysmith::api::KeyProvider = serde_json::from_value(json!({
            "apiVersion": "keysmith.dev/v1alpha1", "kind": "KeyProvider",
            "metadata": { "name": name, "namespace": c.ns },
            "spec": { "openrouter": {
                "baseURL": base,
                "managementKeySecretRef": { "name": "tenant-credentials", "key": "token" },
            }},
        }))
        .unwrap();
        kps.create(&PostParams::default(), &kp)
            .await
            .expect("KeyProvider created");
        c.create_apikey(
            name,
            json!({ "providerRef": { "kind": "KeyProvider", "name": name } }),
        )
        .await;
    }

    // What each ApiKey is told: InvalidProvider, with the rule and the admin's flag, and
    // neither the address nor the port.
    for (name, says) in [
        ("loopback-ip", "plain http://"),
        ("loopback-name", "private, loopback or link-local"),
    ] {
        let message = c
            .eventually(&format!("{name}: InvalidProvider"), MINUTE, || async {
                let ak = c.apikeys().get(name).await.map_err(|e| e.to_string())?;
                let (_, reason, message) = cluster::ready(&ak);
                if reason == "InvalidProvider" {
                    Ok(message)
                } else {
                    Err(format!("reason {reason}: {message}"))
                }
            })
            .await;
        eprintln!("{name}: InvalidProvider: {message}");
        assert!(message.contains(says), "{name}: {message}");
        assert!(
            !message.contains("127.0.0.1") && !message.contains(&port.to_string()),
            "{name}: the message maps the network: {message}"
        );
    }
    // The KeyProviders' own status says the same.
    for name in ["loopback-ip", "loopback-name"] {
        c.eventually(
            &format!("KeyProvider {name}: InvalidProvider"),
            MINUTE,
            || async {
                let kp = kps.get(name).await.map_err(|e| e.to_string())?;
                let cond = kp
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
                    .ok_or("no Ready condition yet")?;
                if cond.reason == "InvalidProvider" && cond.status == "False" {
                    Ok(())
                } else {
                    Err(format!("{} {}: {}", cond.status, cond.reason, cond.message))
                }
            },
        )
        .await;
    }

    // 20 s with the default flags: nothing reaches the address.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let refused = count.load(Ordering::SeqCst);
    let attempts = op
        .metric_sum(&c.http, "keysmith_provider_requests_total")
        .await;
    let refused_attempts = op
        .metric_sum_where(
            &c.http,
            "keysmith_provider_requests_total",
            "result=\"refused\"",
        )
        .await;
    eprintln!(
        "default flags: {refused} connections reached the loopback server in 20 s; the operator's request metric: {attempts} attempts (the run's ClusterKeyProvider included), {refused_attempts} of them result=\"refused\" (no connection)"
    );
    assert_eq!(refused, 0, "a tenant's KeyProvider reached loopback");
    // The other attempts are this operator verifying the run's own ClusterKeyProvider (an
    // emulator on loopback: admins' objects are not restricted).
    assert!(
        refused_attempts >= 1.0,
        "the name resolving to loopback was tried and refused by the resolver"
    );
    for name in ["loopback-ip", "loopback-name"] {
        let ak = c.apikeys().get(name).await.unwrap();
        assert_eq!(cluster::ready(&ak).1, "InvalidProvider", "{name}");
    }
    drop(op);

    // The admin allows private networks and http: the same KeyProviders reach the server (and
    // are told the credentials are wrong: the server answers 401).
    let op = c
        .start_operator(
            "admin-allows",
            &["--allow-private-provider-networks", "--allow-insecure-http"],
        )
        .await;
    c.eventually("the loopback server reached", MINUTE, || async {
        let n = count.load(Ordering::SeqCst);
        if n > 0 {
            Ok(n)
        } else {
            Err("no connection yet".to_string())
        }
    })
    .await;
    let message = c
        .eventually("loopback-ip: no longer InvalidProvider", MINUTE, || async {
            let ak = c
                .apikeys()
                .get("loopback-ip")
                .await
                .map_err(|e| e.to_string())?;
            let (_, reason, message) = cluster::ready(&ak);
            if reason == "ProviderAuthFailed" {
                Ok(message)
            } else {
                Err(format!("reason {reason}: {message}"))
            }
        })
        .await;
    eprintln!(
        "admin flags: {} connections reached the loopback server; loopback-ip: ProviderAuthFailed: {message}",
        count.load(Ordering::SeqCst)
    );
    drop(op);
    server.abort();
}

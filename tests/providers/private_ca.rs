//! The platform's roots are trusted (issue 18 item 5): `SSL_CERT_FILE` naming a private CA lets
//! the provider clients reach a gateway whose certificate that CA issued. The variable is read
//! once per process (at the first client build), so the check runs in a child process of this
//! test binary with only that variable added (no test here sets process-wide environment).

use std::process::Command;

use keysmith::api::ProviderType;
use keysmith::emulators::{bifrost, spawn_tls};
use keysmith::providers::http::HttpClient;
use keysmith::providers::ClientOptions;
use reqwest::Method;

use keysmith_testkit::private_ca as pki;

const CHILD_URL: &str = "KEYSMITH_TEST_PRIVATE_CA_URL";

/// `GET {url}/v1/models` with a provider client built from default options: Ok(status) or the
/// transport error's chain.
async fn call(url: &str) -> Result<u16, String> {
    let client = HttpClient::new(ProviderType::Bifrost, url, ClientOptions::default())
        .map_err(|e| format!("build: {e}"))?;
    let url = client.url("/v1/models").map_err(|e| format!("url: {e}"))?;
    match client.request(Method::GET, &url).send().await {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => {
            let mut chain = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                chain.push_str(&format!(": {s}"));
                src = s.source();
            }
            Err(chain)
        }
    }
}

#[tokio::test]
async fn ssl_cert_file_naming_a_private_ca_is_trusted() {
    let pki = pki::private_ca("corp-root-ca");
    let (router, faults) = bifrost::build(&bifrost::Args::default());
    let e = spawn_tls(router, faults, pki.server_config())
        .await
        .unwrap();

    // this process: the system's and the built-in roots only, the gateway is refused
    let err = call(&e.url()).await.expect_err("an unknown CA is refused");
    assert!(err.contains("UnknownIssuer"), "{err}");

    let dir = std::env::temp_dir().join(format!("keysmith-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let url = e.url();
    let child = tokio::task::spawn_blocking(move || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "private_ca::child_calls_the_gateway",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_URL, url)
            .env("SSL_CERT_FILE", &ca_file)
            .output()
            .expect("the test binary runs")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && stdout.contains("1 passed"),
        "child with SSL_CERT_FILE: {stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
}

/// Run by the test above in a child process (with `SSL_CERT_FILE` set); a no-op otherwise.
#[tokio::test]
async fn child_calls_the_gateway() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let status = call(&url)
        .await
        .expect("the CA in SSL_CERT_FILE is trusted");
    // the gateway answered over TLS (the call carries no key: any HTTP status is fine)
    assert!((200..600).contains(&status), "{status}");
    println!("gateway answered {status} over TLS");
}

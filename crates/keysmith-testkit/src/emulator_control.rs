//! A provider emulator's control endpoints over HTTP (`/_emulator/stats`, `/_emulator/keys`)
//! and OpenRouter's "current key" check: shared by the controller tests, the e2e tests and both
//! benchmarks.

use serde_json::Value;

pub struct EmulatorControl {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
}

impl EmulatorControl {
    pub fn new(url: impl Into<String>) -> Self {
        EmulatorControl {
            url: url.into(),
            http: reqwest::Client::new(),
        }
    }

    /// Provider requests served since the last reset: `{"requests": n, "byRoute": {...}}`.
    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_emulator/stats", self.url))
            .send()
            .await
            .expect("emulator answers")
            .json()
            .await
            .expect("stats are JSON")
    }

    pub async fn reset_stats(&self) {
        self.http
            .delete(format!("{}/_emulator/stats", self.url))
            .send()
            .await
            .expect("emulator answers");
    }

    /// Every key the emulator holds or held (deleted ones with `active: false`), no plaintext.
    pub async fn keys(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_emulator/keys", self.url))
            .send()
            .await
            .expect("emulator answers")
            .json()
            .await
            .expect("keys are JSON");
        match v {
            Value::Array(a) => a,
            Value::Object(mut o) => o
                .remove("keys")
                .and_then(|k| k.as_array().cloned())
                .unwrap_or_default(),
            _ => vec![],
        }
    }

    /// Does the OpenRouter emulator accept `value` on `GET /api/v1/key` (a live key)?
    pub async fn openrouter_key_works(&self, value: &str) -> bool {
        self.http
            .get(format!("{}/api/v1/key", self.url))
            .bearer_auth(value)
            .send()
            .await
            .expect("emulator answers")
            .status()
            .is_success()
    }
}

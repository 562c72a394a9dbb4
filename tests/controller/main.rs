//! The ApiKey reconciler against a Kubernetes API test double (kube-fake-client) and a real
//! provider emulator over HTTP.

mod harness;
mod openrouter;

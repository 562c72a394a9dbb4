//! The ApiKey reconciler against a Kubernetes API test double (kube-fake-client) and a real
//! provider emulator over HTTP.

mod bifrost;
mod boltz;
mod digitalocean;
mod harness;
mod openrouter;
mod ucloud;

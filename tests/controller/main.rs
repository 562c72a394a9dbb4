//! The ApiKey reconciler against a real kube-apiserver (the local control plane) and a real
//! provider emulator over HTTP.

mod alerts;
mod bifrost;
mod bifrost_features;
mod boltz;
mod budget;
mod crd_apply;
mod credentials;
mod digitalocean;
mod fairness;
mod fidelity;
mod fixtures;
mod forget;
mod harness;
mod history;
mod inuse;
mod leader;
mod no_write;
mod openrouter;
mod private_ca;
mod regenerate;
mod review;
mod rollout;
mod rotation;
mod runtime;
mod spend;
mod tenancy;
mod ucloud;

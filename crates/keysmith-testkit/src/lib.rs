//! keysmith's test harness, a dev-dependency of the operator (never a normal dependency, and
//! never published: `tests/workspace.rs` keeps it so). Production code does not need any of it.
//!
//! - [`control_plane`]: a local kube-apiserver, etcd and kube-controller-manager (envtest-like);
//! - [`cluster`]: the e2e harness: `keysmith run` and `keysmith emulate` as child processes
//!   against that control plane (or `KUBECONFIG` with `KEYSMITH_E2E=1`);
//! - [`node`]: a real one-node cluster where the operator runs as a pod from its image;
//! - [`kube_recorder`]: a tower layer in front of a real client that records writes, injects
//!   faults and checks every request against the chart's RBAC (`classify`);
//! - [`emulator_control`], [`apikey_status`], [`private_ca`], [`bench`]: small shared helpers;
//! - [`fake`]: a scripted [`KeyBackend`](keysmith_providers::KeyBackend) for branch tests that
//!   need no emulator;
//! - [`skip`]: how a test that needs a cluster or a node says it did not run (docs/testing.md).

pub mod apikey_status;
pub mod bench;
pub mod cluster;
pub mod control_plane;
pub mod emulator_control;
pub mod fake;
pub mod kube_recorder;
pub mod node;
pub mod paths;
pub mod private_ca;
pub mod skip;

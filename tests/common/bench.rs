//! Transition shim, for test files written before the harness became the `keysmith-testkit`
//! crate that still include this file with `#[path]`: new tests `use keysmith_testkit::bench`.
//! Delete this directory once no `#[path = "common/…"]` include is left (docs/testing.md).
#![allow(unused_imports)] // each includer uses a different part

pub use keysmith_testkit::bench::*;

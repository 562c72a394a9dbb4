//! Provider clients against their emulators, over real HTTP on loopback.

mod bifrost;
mod bifrost_spec;
mod boltz;
mod bounds;
mod digitalocean;
mod fuzz;
mod openapi;
mod openrouter;
mod private_ca;
mod shared_layer;
mod ucloud;

//! Provider clients against their emulators, over real HTTP on loopback.

mod bifrost;
mod boltz;
mod digitalocean;
mod openapi;
mod openrouter;
mod ucloud;

//! digitalocean client ⇄ emulator tests (to be written).

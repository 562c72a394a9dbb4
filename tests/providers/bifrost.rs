//! bifrost client ⇄ emulator tests (to be written).

//! boltz client ⇄ emulator tests (to be written).

//! ucloud client ⇄ emulator tests (to be written).

//! openrouter client ⇄ emulator tests (to be written).

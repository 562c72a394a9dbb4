//! Random identifiers: create-attempt ids, leader-election holder names (and the emulators'
//! made-up keys). Lives outside `controller/` and `emulators/` so neither imports the other.

use rand::Rng;

/// Random lowercase hex of `n` characters.
pub fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_the_asked_length() {
        let h = random_hex(16);
        assert_eq!(h.len(), 16);
        assert!(h
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(random_hex(32), random_hex(32));
    }
}

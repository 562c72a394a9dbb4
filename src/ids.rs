//! Random identifiers: create-attempt ids and leader-election holder names. (The emulators make
//! up their keys with their own copy: they are a separate crate that imports nothing of ours.)

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

//! UCloud's request signature and value encoding, as its Go SDK does them.

use std::collections::BTreeMap;

use sha1::{Digest, Sha1};

/// Parameters of one request, sorted by name in byte order (the signature's order).
pub type Params = BTreeMap<String, String>;

/// UCloud's request signature: every parameter but `Signature` (raw, un-URL-encoded values),
/// sorted by name in byte order, concatenated as `name value name value …`, the private key
/// appended, then lowercase hex SHA-1.
pub fn signature(params: &Params, private_key: &str) -> String {
    let mut h = Sha1::new();
    for (name, value) in params {
        if name == "Signature" {
            continue;
        }
        h.update(name.as_bytes());
        h.update(value.as_bytes());
    }
    h.update(private_key.as_bytes());
    hex::encode(h.finalize())
}

/// A boolean as UCloud signs and sends it.
pub fn encode_bool(b: bool) -> String {
    if b { "true" } else { "false" }.to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const DOC_PUBLIC: &str = "ucloudsomeone@example.com1296235120854146120";
    pub(crate) const DOC_PRIVATE: &str = "46f09bb9fab4f12dfc160dae12273d5332b5debe";

    pub(crate) fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn signature_matches_the_official_example() {
        let p = params(&[
            ("Action", "CreateUHostInstance"),
            ("Region", "cn-bj2"),
            ("Zone", "cn-bj2-04"),
            ("ImageId", "f43736e1-65a5-4bea-ad2e-8a46e18883c2"),
            ("CPU", "2"),
            ("Memory", "2048"),
            ("DiskSpace", "10"),
            ("LoginMode", "Password"),
            ("Password", "VUNsb3VkLmNu"),
            ("Name", "Host01"),
            ("ChargeType", "Month"),
            ("Quantity", "1"),
            ("PublicKey", DOC_PUBLIC),
        ]);
        // Byte order: CPU before ChargeType (uppercase sorts first).
        let names: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(&names[..3], ["Action", "CPU", "ChargeType"]);
        assert_eq!(
            signature(&p, DOC_PRIVATE),
            "4f9ef5df2abab2c6fccd1e9515cb7e2df8c6bb65"
        );
    }

    #[test]
    fn signature_matches_the_second_published_example() {
        let p = params(&[
            ("Action", "DescribeUHostInstance"),
            ("Region", "cn-bj2"),
            ("Limit", "10"),
            ("PublicKey", "someone@example.com1296235120854146120"),
        ]);
        assert_eq!(
            signature(&p, DOC_PRIVATE),
            "4201919d267504385deb93af19e0197870fed36b"
        );
    }

    #[test]
    fn signature_matches_the_illustrative_list_example() {
        let mut p = params(&[
            ("Action", "ListUMInferAPIKey"),
            ("ProjectId", "org-abc123"),
            ("Offset", "0"),
            ("Limit", "20"),
            ("PublicKey", DOC_PUBLIC),
        ]);
        assert_eq!(
            signature(&p, DOC_PRIVATE),
            "86ccbbc62fe4c95e465f6dfa1fe17b82d1451fbb"
        );
        // A Signature already in the map is not signed.
        p.insert("Signature".into(), "whatever".into());
        assert_eq!(
            signature(&p, DOC_PRIVATE),
            "86ccbbc62fe4c95e465f6dfa1fe17b82d1451fbb"
        );
    }

    #[test]
    fn values_are_encoded_like_the_sdk() {
        assert_eq!(encode_bool(true), "true");
        assert_eq!(encode_bool(false), "false");
    }
}

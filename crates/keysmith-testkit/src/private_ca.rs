//! A private CA and a `localhost` server certificate it issued: a provider behind a corporate
//! CA that no public root store trusts.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct PrivateCa {
    /// The CA certificate (what a user puts in `caBundle` / `SSL_CERT_FILE`).
    pub ca_pem: String,
    /// The server's certificate (for `localhost` and 127.0.0.1) and its key.
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

pub fn private_ca(name: &str) -> PrivateCa {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "gateway");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = server.signed_by(&key, &issuer).unwrap();
    PrivateCa {
        ca_pem: ca_cert.pem(),
        server_cert_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

impl PrivateCa {
    pub fn server_config(&self) -> std::sync::Arc<rustls::ServerConfig> {
        keysmith::emulators::tls::server_config(
            self.server_cert_pem.as_bytes(),
            self.server_key_pem.as_bytes(),
        )
        .expect("server TLS config")
    }
}

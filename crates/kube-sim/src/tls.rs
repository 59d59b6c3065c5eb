//! TLS mode: a throw-away CA, a server certificate for loopback, a client certificate for the
//! kubeconfig, and the rustls configuration that accepts (but does not require) client certs so
//! bearer tokens work too.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::IpAddr;
use std::sync::Arc;

pub(crate) struct TlsMaterial {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    pub token: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

pub(crate) fn generate(listen_ip: IpAddr) -> anyhow::Result<TlsMaterial> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kube-sim-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !listen_ip.is_unspecified() && !listen_ip.is_loopback() {
        sans.push(listen_ip.to_string());
    }
    let server_key = KeyPair::generate()?;
    let mut sp = CertificateParams::new(sans)?;
    sp.distinguished_name.push(DnType::CommonName, "kube-sim");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = sp.signed_by(&server_key, &ca)?;

    let client_key = KeyPair::generate()?;
    let mut cp = CertificateParams::new(Vec::<String>::new())?;
    cp.distinguished_name
        .push(DnType::CommonName, "kube-sim-admin");
    cp.distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &ca)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("client certificate verifier")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert.der().clone(), ca.der().clone()], key)?;
    // HTTP/1.1 only: the server speaks no HTTP/2.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];

    use rand::Rng;
    let token: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    Ok(TlsMaterial {
        ca_pem: ca.pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
        token,
        server_config: Arc::new(cfg),
    })
}

//! Certificates for the TLS tests, made by the test with rcgen.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

/// PEM files in a temporary directory: `ca.pem`, `server.pem`/`server.key` (127.0.0.1 and
/// localhost), `client.pem`/`client.key`, and `other-ca.pem`, a CA that signed none of them.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("keywarden test CA");
        let (other_ca, _) = ca("another CA");
        write("ca.pem", ca_cert.pem());
        write("other-ca.pem", other_ca.pem());
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        write("server.pem", server_cert.pem());
        write("server.key", server_key.serialize_pem());
        let mut client = CertificateParams::new(vec!["client".to_owned()]).unwrap();
        client.distinguished_name.push(DnType::CommonName, "client");
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
        write("client.pem", client_cert.pem());
        write("client.key", client_key.serialize_pem());
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

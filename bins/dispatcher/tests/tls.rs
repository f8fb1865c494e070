//! End-to-end: the real binary against a PostgreSQL that accepts TLS
//! sessions only (certificates made here with rcgen): the `database.ssl*`
//! keys override `DATABASE_URL`'s parameters, and refusals are clear in
//! `dispatcher migrate`'s exit error and in readiness.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use dispatcher_testdb::{Cluster, TlsServer};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use support::*;

const CONFIG: &str = r#"
security:
  github_webhook_secret: "${GITHUB_WEBHOOK_SECRET}"
  verify_signatures: true
server:
  bind: 127.0.0.1
  port: 0
"#;

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params, KeyPair::generate().unwrap())
}

struct Tls {
    cluster: Cluster,
    ca: PathBuf,
    wrong_ca: PathBuf,
}

fn tls_cluster(dir: &Path) -> Tls {
    let (ca_params, ca_key) = ca("e2e CA");
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    let (wrong_params, wrong_key) = ca("another CA");
    let wrong_pem = wrong_params.self_signed(&wrong_key).unwrap().pem();
    let cluster = Cluster::start_tls(&TlsServer {
        cert_pem: server_cert.pem(),
        key_pem: server_key.serialize_pem(),
        client_ca_pem: None,
        pg_hba: "hostnossl all all 0.0.0.0/0 reject\nhostssl all all 127.0.0.1/32 trust".into(),
    })
    .expect("a TLS-only PostgreSQL");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let wrong_ca = dir.join("wrong-ca.pem");
    std::fs::write(&wrong_ca, wrong_pem).unwrap();
    Tls {
        cluster,
        ca,
        wrong_ca,
    }
}

fn config_with(dir: &Path, name: &str, database: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{CONFIG}database:\n{database}")).unwrap();
    path
}

fn run(config: &Path, args: &[&str], database_url: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(args)
        .env_clear()
        .env("WEBHOOK_DISPATCHER_CONFIG", config)
        .env("GITHUB_WEBHOOK_SECRET", "x")
        .env("DATABASE_URL", database_url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_honours_sslmode_and_explains_refusals() {
    install_crypto();
    let dir = TempDir::new("tls");
    let tls = tls_cluster(&dir.0);
    // The URL asks for no TLS; the config's keys take precedence over it.
    let url = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/postgres?sslmode=disable",
        tls.cluster.port()
    );
    let verified = config_with(
        &dir.0,
        "verified.yaml",
        &format!(
            "  sslmode: verify-full\n  sslrootcert: {}\n",
            tls.ca.display()
        ),
    );
    let (ok, stderr) = run(&verified, &["migrate"], &url);
    assert!(ok, "{stderr}");

    let plain = config_with(&dir.0, "plain.yaml", "  pool_size: 2\n");
    let (ok, stderr) = run(&plain, &["migrate"], &url);
    assert!(!ok);
    assert!(
        stderr.contains("no encryption") && stderr.contains("set sslmode"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let wrong = config_with(
        &dir.0,
        "wrong.yaml",
        &format!(
            "  sslmode: verify-full\n  sslrootcert: {}\n",
            tls.wrong_ca.display()
        ),
    );
    let expected = format!(
        "TLS: the server's certificate is not signed by the CA in sslrootcert ({})",
        tls.wrong_ca.display()
    );
    let (ok, stderr) = run(&wrong, &["migrate"], &url);
    assert!(!ok);
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let bogus = config_with(&dir.0, "bogus.yaml", "  sslmode: verify\n");
    let (ok, stderr) = run(&bogus, &["check-config"], &url);
    assert!(!ok);
    assert!(stderr.contains("database.sslmode"), "{stderr}");

    // Serving: a verified connection answers; a refused one shows in readiness.
    let good = std::fs::read_to_string(&verified).unwrap();
    let svc = Service::start(&good, &url, &[]).await;
    let ready = svc
        .get_until("/api/v1/status/db", |v| v["status"] == "ok")
        .await;
    assert_eq!(ready["status"], "ok", "{ready}");
    drop(svc);
    let bad = std::fs::read_to_string(&wrong).unwrap();
    let svc = Service::start(&bad, &url, &[]).await;
    let (status, ready) = svc.get("/api/v1/status/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.to_string().contains(&expected), "{ready}");
    assert!(!ready.to_string().contains("hunter2"), "{ready}");
}

//! TLS to PostgreSQL against a private cluster that accepts TLS sessions
//! only (`hostssl` lines, `hostnossl ... reject`), with a CA, a server
//! certificate for `localhost`/127.0.0.1 and a client certificate made here
//! with rcgen. Every `sslmode` is exercised through the store's one connect
//! path: pool, leader session and migrations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use diesel::sql_types::Bool;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dispatcher_core::ports::{EventRepository, StoreError};
use dispatcher_store::{ConnectionOptions, Database, LeaderOptions, PoolOptions};
use dispatcher_testdb::{Cluster, TlsServer};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The user that must present a client certificate (`hostssl ... cert`).
const CERT_USER: &str = "certuser";

struct Setup {
    cluster: Cluster,
    /// The CA that signed the server and client certificates.
    ca: PathBuf,
    /// A CA that signed nothing here.
    wrong_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params, KeyPair::generate().unwrap())
}

fn leaf(
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// One TLS-only cluster for this test binary (stopped by its watchdog when
/// the process ends), with `certuser` created.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_params, ca_key) = ca("dispatcher test CA");
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let (server_cert, server_key) = leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        let (client_cert, client_key) =
            leaf(&[], CERT_USER, ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let (wrong_params, wrong_key) = ca("some other CA");
        let wrong_pem = wrong_params.self_signed(&wrong_key).unwrap().pem();
        let cluster = Cluster::start_tls(&TlsServer {
            cert_pem: server_cert,
            key_pem: server_key,
            client_ca_pem: Some(ca_pem.clone()),
            pg_hba: [
                "hostnossl all all 0.0.0.0/0 reject",
                "hostnossl all all ::/0 reject",
                "hostssl all certuser 127.0.0.1/32 cert",
                "hostssl all all 127.0.0.1/32 trust",
            ]
            .join("\n"),
        })
        .unwrap_or_else(|e| panic!("cannot start a TLS-only PostgreSQL for tests: {e}"));
        let setup = Setup {
            cluster,
            ca: write(&dir, "ca.pem", &ca_pem),
            wrong_ca: write(&dir, "wrong-ca.pem", &wrong_pem),
            client_cert: write(&dir, "client.crt", &client_cert),
            client_key: write(&dir, "client.key", &client_key),
        };
        // A throwaway runtime: the static outlives each test's own.
        let admin_url = setup.url(
            "127.0.0.1",
            "postgres",
            "sslmode=verify-full",
            Some(&setup.ca),
        );
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let mut conn = dispatcher_store::connect(&admin_url, &ConnectionOptions::default())
                    .await
                    .expect("admin connection over TLS");
                for statement in [
                    format!("CREATE ROLE {CERT_USER} LOGIN"),
                    "CREATE DATABASE migrated".to_owned(),
                    "CREATE DATABASE refused".to_owned(),
                ] {
                    conn.batch_execute(&statement).await.unwrap();
                }
            });
        })
        .join()
        .unwrap();
        setup
    })
}

impl Setup {
    /// `postgres://postgres@host:port/db?params[&sslrootcert=ca]`.
    fn url(&self, host: &str, db: &str, params: &str, ca: Option<&Path>) -> String {
        let mut url = format!(
            "postgres://postgres@{host}:{}/{db}?{params}",
            self.cluster.port()
        );
        if let Some(ca) = ca {
            url.push_str(&format!("&sslrootcert={}", ca.display()));
        }
        url
    }
}

async fn connect(url: &str) -> Result<AsyncPgConnection, StoreError> {
    dispatcher_store::connect(url, &ConnectionOptions::default()).await
}

#[derive(diesel::QueryableByName)]
struct Encrypted {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

/// Whether this session is encrypted, as the server sees it.
async fn encrypted(conn: &mut AsyncPgConnection) -> bool {
    diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result::<Encrypted>(conn)
        .await
        .unwrap()
        .ssl
}

fn refusal(result: Result<AsyncPgConnection, StoreError>) -> String {
    match result {
        Ok(_) => panic!("connected, expected a refusal"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_serves_the_pool_the_leader_session_and_migrations() {
    let s = setup();
    for host in ["127.0.0.1", "localhost"] {
        let url = s.url(host, "postgres", "sslmode=verify-full", Some(&s.ca));
        assert!(encrypted(&mut connect(&url).await.unwrap()).await, "{host}");
    }
    let url = s.url("127.0.0.1", "migrated", "sslmode=verify-full", Some(&s.ca));
    let applied = dispatcher_store::run_migrations(&url, &ConnectionOptions::default())
        .await
        .expect("migrations over TLS");
    assert!(!applied.is_empty());
    let db = Database::connect(&url, PoolOptions::default()).unwrap();
    db.events().ping().await.expect("a pool query over TLS");
    let session = db
        .try_lead(false, LeaderOptions::default())
        .await
        .expect("the leader session over TLS");
    assert!(session.is_some(), "the lock is free");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_ca_ignores_the_host_name_and_verify_full_names_it() {
    let s = setup();
    // The server's certificate is for localhost/127.0.0.1; `hostaddr` lets
    // the session reach it under another name.
    let params = |mode: &str| format!("sslmode={mode}&hostaddr=127.0.0.1");
    let url = s.url(
        "db.example.test",
        "postgres",
        &params("verify-ca"),
        Some(&s.ca),
    );
    assert!(encrypted(&mut connect(&url).await.unwrap()).await);
    let url = s.url(
        "db.example.test",
        "postgres",
        &params("verify-full"),
        Some(&s.ca),
    );
    let message = refusal(connect(&url).await);
    assert!(
        message.contains(
            "not valid for the host name 'db.example.test' (it names localhost, 127.0.0.1)"
        ),
        "{message}"
    );
    // The password-free URL is never part of the message.
    assert!(!message.contains("postgres://"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_is_refused_with_a_clear_message() {
    let s = setup();
    let expected = format!(
        "TLS: the server's certificate is not signed by the CA in sslrootcert ({})",
        s.wrong_ca.display()
    );
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = s.url(
            "127.0.0.1",
            "postgres",
            &format!("sslmode={mode}"),
            Some(&s.wrong_ca),
        );
        let message = refusal(connect(&url).await);
        assert!(message.contains(&expected), "{mode}: {message}");
    }
    // `dispatcher migrate` reports what the store says.
    let url = s.url(
        "127.0.0.1",
        "refused",
        "sslmode=verify-full",
        Some(&s.wrong_ca),
    );
    let Err(e) = dispatcher_store::run_migrations(&url, &ConnectionOptions::default()).await else {
        panic!("migrated through a server the CA does not vouch for");
    };
    assert!(e.to_string().contains(&expected), "{e}");
    // The pool reports it too (readiness shows this).
    let db = Database::connect(&url, PoolOptions::default()).unwrap();
    let e = db.events().ping().await.unwrap_err().to_string();
    assert!(e.contains(&expected), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn require_and_prefer_encrypt_without_a_ca() {
    let s = setup();
    for params in [
        "sslmode=require",
        "sslmode=prefer",
        "application_name=default-is-prefer",
    ] {
        let url = s.url("127.0.0.1", "postgres", params, None);
        assert!(
            encrypted(&mut connect(&url).await.unwrap()).await,
            "{params}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disable_against_a_tls_only_server_fails_clearly() {
    let s = setup();
    let url = s.url("127.0.0.1", "postgres", "sslmode=disable", None);
    let message = refusal(connect(&url).await);
    assert!(message.contains("no encryption"), "{message}");
    assert!(message.contains("set sslmode"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_authenticates_its_user() {
    let s = setup();
    let base = format!(
        "postgres://{CERT_USER}@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        s.cluster.port(),
        s.ca.display()
    );
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        s.client_cert.display(),
        s.client_key.display()
    );
    assert!(encrypted(&mut connect(&with_cert).await.unwrap()).await);
    let message = refusal(connect(&base).await);
    assert!(
        message.contains("requires a valid client certificate (set sslcert and sslkey"),
        "{message}"
    );
    // The database.* keys reach the URL the same way.
    let from_settings = dispatcher_store::with_tls_params(
        &base,
        None,
        None,
        Some(&s.client_cert),
        Some(&s.client_key),
    );
    assert!(encrypted(&mut connect(&from_settings).await.unwrap()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_falls_back_to_plain_text_like_libpq() {
    let s = setup();
    // A server with ssl=on whose pg_hba.conf takes plain sessions only.
    let (ca_params, ca_key) = ca("plain-only CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let (cert_pem, key_pem) = leaf(
        &["127.0.0.1"],
        "127.0.0.1",
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
    );
    let plain_only = Cluster::start_tls(&TlsServer {
        cert_pem,
        key_pem,
        client_ca_pem: None,
        pg_hba: "hostssl all all 0.0.0.0/0 reject\nhostnossl all all 127.0.0.1/32 trust".into(),
    })
    .expect("a plain-only PostgreSQL with ssl=on");
    let port = plain_only.port();
    for url in [
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=prefer"),
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
    ] {
        assert!(!encrypted(&mut connect(&url).await.unwrap()).await, "{url}");
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require");
    let message = refusal(connect(&url).await);
    assert!(
        message.contains("pg_hba.conf rejects connection"),
        "{message}"
    );
    // The tokio-postgres modes still work in `host=...` strings.
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
        s.cluster.port()
    );
    assert!(encrypted(&mut connect(&url).await.unwrap()).await);
}

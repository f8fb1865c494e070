//! Adopting the Python dispatcher's database (issue 7).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl as _};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use dispatcher_store::{ConnectionOptions, run_migrations};
use dispatcher_testdb::{ORIGINAL_DATABASE, TestDatabase};

type Conn = AsyncConnectionWrapper<AsyncPgConnection>;

/// Runs `f` on a synchronous connection off the async runtime.
async fn with_conn<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(&mut Conn) -> T + Send + 'static,
) -> T {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || f(&mut Conn::establish(&url).unwrap()))
        .await
        .unwrap()
}

#[derive(diesel::QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    text: String,
}

/// Every table with its rows, as text: equal dumps mean nothing changed.
fn dump(conn: &mut Conn) -> String {
    let tables: Vec<Text> = diesel::sql_query(
        "SELECT table_name::text AS text FROM information_schema.tables
          WHERE table_schema = current_schema() ORDER BY 1",
    )
    .load(conn)
    .unwrap();
    let mut out = String::new();
    for t in tables {
        let rows: Text = diesel::sql_query(format!(
            "SELECT COALESCE(string_agg(row_to_json(dump_row.*)::text, E'\\n' ORDER BY row_to_json(dump_row.*)::text), '') AS text
               FROM \"{}\" dump_row",
            t.text
        ))
        .get_result(conn)
        .unwrap();
        out.push_str(&format!("== {}\n{}\n", t.text, rows.text));
    }
    out
}

fn rows(conn: &mut Conn) -> Vec<String> {
    diesel::sql_query(
        "SELECT concat_ws(' | ', id, uuid, delivery_id, event_type, action, repository_full_name,
                pull_request_number, status, processed::text, COALESCE(processing_error, '-'),
                to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                COALESCE(to_char(processed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), '-'),
                COALESCE(to_char(planned_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), 'unplanned'),
                adopted::text, superseded_duplicate::text, headers::text, payload::text) AS text
           FROM webhook_events ORDER BY id",
    )
    .load::<Text>(conn)
    .unwrap()
    .into_iter()
    .map(|r| r.text)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_originals_database_is_adopted_keeping_every_row() {
    let t = TestDatabase::empty();
    with_conn(t.url(), |c| c.batch_execute(ORIGINAL_DATABASE).unwrap()).await;
    let pending = dispatcher_store::pending_migrations(t.url(), &ConnectionOptions::default())
        .await
        .unwrap();
    let on_disk = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))
        .unwrap()
        .count();
    assert_eq!(
        pending.len(),
        on_disk,
        "asking changes nothing: {pending:?}"
    );

    let applied = run_migrations(t.url(), &ConnectionOptions::default())
        .await
        .unwrap();
    assert_eq!(applied.len(), on_disk);
    let p1 = r#"{"action": "opened", "number": 1, "pull_request": {"number": 1}, "repository": {"full_name": "o/r"}}"#;
    let p4 = r#"{"action": "opened", "number": 4, "pull_request": {"number": 4}, "repository": {"full_name": "o/r"}}"#;
    let expected = vec![
        format!(
            "1 | 00000000-0000-4000-8000-000000000001 | d-processed | pull_request | opened | o/r | 1 | processed | true | - | 2024-01-01 10:00:00 | 2024-01-01 10:00:05 | 2024-01-01 10:00:05 | true | false | \
             [[\"X-GitHub-Event\", \"pull_request\"], [\"X-GitHub-Delivery\", \"d-processed\"], [\"X-Hub-Signature-256\", \"sha256=00\"], [\"X-Hub-Signature\", \"sha1=00\"]] | {p1}"
        ),
        "2 | 00000000-0000-4000-8000-000000000002 | d-cancelled | pull_request | synchronize | o/r | 2 | cancelled | true | Cancelled due to receiving a newer event for the same pull request | 2024-01-01 10:01:00 | 2024-01-01 10:02:00 | 2024-01-01 10:02:00 | true | false | \
         [[\"X-GitHub-Event\", \"pull_request\"], [\"X-GitHub-Delivery\", \"d-cancelled\"]] | {\"action\": \"synchronize\", \"number\": 2, \"pull_request\": {\"number\": 2}, \"repository\": {\"full_name\": \"o/r\"}}".to_owned(),
        "3 | 00000000-0000-4000-8000-000000000003 | d-aborted | pull_request | closed | o/r | 3 | aborted | true | Unsupported event | 2024-01-01 10:03:00 | 2024-01-01 10:03:01 | 2024-01-01 10:03:01 | true | false | \
         [[\"X-GitHub-Event\", \"pull_request\"], [\"X-GitHub-Hook-Installation-Target-ID\", \"42\"]] | {\"action\": \"closed\", \"number\": 3, \"pull_request\": {\"number\": 3}, \"repository\": {\"full_name\": \"o/r\"}}".to_owned(),
        format!(
            "4 | 00000000-0000-4000-8000-000000000004 | d-dup | pull_request | opened | o/r | 4 | cancelled | true | Cancelled due to receiving a newer event for the same pull request | 2024-01-01 11:00:00 | 2024-01-01 11:00:10 | 2024-01-01 11:00:10 | true | true | \
             [[\"X-GitHub-Event\", \"pull_request\"], [\"X-GitHub-Delivery\", \"d-dup\"]] | {p4}"
        ),
        format!(
            "5 | 00000000-0000-4000-8000-000000000005 | d-dup | pull_request | opened | o/r | 4 | queued | false | - | 2024-01-01 11:00:10 | - | unplanned | true | false | \
             [[\"X-GitHub-Event\", \"pull_request\"], [\"X-GitHub-Delivery\", \"d-dup\"], [\"X-Hub-Signature-256\", \"sha256=stale\"]] | {p4}"
        ),
        "6 | 00000000-0000-4000-8000-000000000007 | d-queued | pull_request | reopened | o/r | 6 | queued | false | - | 2024-01-01 11:30:00 | - | unplanned | true | false | \
         [[\"X-GitHub-Event\", \"pull_request\"], [\"X-GitHub-Delivery\", \"d-queued\"]] | {\"action\": \"reopened\", \"number\": 6, \"pull_request\": {\"number\": 6}, \"repository\": {\"full_name\": \"o/r\"}}".to_owned(),
        "7 | 00000000-0000-4000-8000-000000000006 | d-pending | pull_request | opened | o/r | 5 | pending | false | - | 2024-01-01 12:00:00 | - | unplanned | true | false | \
         [[\"X-GitHub-Event\", \"pull_request\"], [\"X-GitHub-Delivery\", \"d-pending\"]] | {\"action\": \"opened\", \"number\": 5, \"pull_request\": {\"number\": 5}, \"repository\": {\"full_name\": \"o/r\"}}".to_owned(),
    ];
    let (after, tables) = with_conn(t.url(), |c| {
        let rows = rows(c);
        let tables: Vec<Text> = diesel::sql_query(
            "SELECT table_name::text AS text FROM information_schema.tables
              WHERE table_schema = current_schema() ORDER BY 1",
        )
        .load(c)
        .unwrap();
        (rows, tables.into_iter().map(|t| t.text).collect::<Vec<_>>())
    })
    .await;
    assert_eq!(after, expected);
    assert_eq!(
        tables,
        [
            "__diesel_schema_migrations",
            "catch_up_cursors",
            "catch_up_requests",
            "dispatches",
            "event_timeline",
            "pool_controls",
            "pr_labels",
            "pr_queue_status",
            "run_cancellations",
            "webhook_events"
        ],
        "the original's table is dropped"
    );

    // A second run: it is ours now, nothing changes.
    let before = with_conn(t.url(), dump).await;
    let applied = run_migrations(t.url(), &ConnectionOptions::default())
        .await
        .unwrap();
    assert!(applied.is_empty());
    assert_eq!(with_conn(t.url(), dump).await, before);

    // The intake's uniqueness still holds for the newest of a duplicated id
    // and for new ids.
    with_conn(t.url(), |c| {
        let insert = |c: &mut Conn, delivery: &str| {
            diesel::sql_query(format!(
                "INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name, pull_request_number, payload)
                 VALUES ('{delivery}', 'pull_request', 'opened', 'o/r', 9, '{{}}')
                 ON CONFLICT (delivery_id) WHERE NOT superseded_duplicate DO NOTHING"
            ))
            .execute(c)
            .unwrap()
        };
        assert_eq!(insert(c, "d-dup"), 0);
        assert_eq!(insert(c, "d-new"), 1);
        assert_eq!(insert(c, "d-new"), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_database_is_refused_and_left_unchanged() {
    for (what, sql) in [
        ("other tables", format!("{ORIGINAL_DATABASE}\nCREATE TABLE users (id int PRIMARY KEY); INSERT INTO users VALUES (1);")),
        ("unknown shape", "CREATE TABLE webhook_events (id serial PRIMARY KEY, body text); INSERT INTO webhook_events (body) VALUES ('x');".to_owned()),
        ("no webhook_events", "CREATE TABLE something (x int); INSERT INTO something VALUES (1);".to_owned()),
    ] {
        let t = TestDatabase::empty();
        with_conn(t.url(), move |c| c.batch_execute(&sql).unwrap()).await;
        let before = with_conn(t.url(), dump).await;
        let err = run_migrations(t.url(), &ConnectionOptions::default())
            .await
            .expect_err(what)
            .to_string();
        assert!(err.contains("refusing to migrate"), "{what}: {err}");
        assert!(err.contains("found"), "{what}: {err}");
        assert!(
            dispatcher_store::pending_migrations(t.url(), &ConnectionOptions::default())
                .await
                .is_err()
        );
        assert_eq!(with_conn(t.url(), dump).await, before, "{what}: nothing changed");
    }
}

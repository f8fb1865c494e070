//! The dashboard through `App::handle`: pages are HTML only when they
//! succeed, errors stay JSON, and with `api.tokens` set no page shows data
//! without a read token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

/// Sends `request` and returns the status, the content type and the body.
async fn fetch(app: &App<MemRepo>, request: Request<Full<Bytes>>) -> (StatusCode, String, String) {
    let response = app.handle(request).await;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// An HTML page that succeeded.
async fn html(app: &App<MemRepo>, request: Request<Full<Bytes>>) -> String {
    let path = request.uri().to_string();
    let (status, content_type, body) = fetch(app, request).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    assert_eq!(content_type, "text/html; charset=utf-8", "{path}");
    body
}

async fn store_pr(app: &App<MemRepo>, delivery: &str, repository: &str, number: i64) -> String {
    let body = json!({"action": "opened", "number": number, "pull_request": {"number": number}, "repository": {"full_name": repository}}).to_string();
    let (status, event) = send(app, Delivery::pr(delivery, body).request()).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    event["id"].as_str().unwrap().to_owned()
}

fn protected() -> App<MemRepo> {
    App::new(
        &settings(&with_pool(json!({"api": {"tokens": ["reader-token"]}}))),
        MemRepo::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn open_reading_renders_pools_events_and_explanations_at_once() {
    let app = App::new(&settings(&with_pool(json!({}))), MemRepo::default()).unwrap();
    let id = store_pr(&app, "d1", "o/r", 7).await;

    let page = html(&app, get("/")).await;
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains(r#"data-locked="false""#), "{page}");
    assert!(
        !page.contains("token-form"),
        "no token form when reading is open"
    );
    assert!(page.contains(r#"data-pool="ns/p""#), "{page}");
    assert!(page.contains("Queue empty."), "{page}");
    assert!(
        page.contains(&format!(r#"href="/ui/events/{id}""#)),
        "{page}"
    );
    assert!(
        page.contains(r#"href="https://github.com/o/r/pull/7">o/r#7</a>"#),
        "{page}"
    );

    // The fragment is the content alone.
    let fragment = html(&app, get("/?fragment=1")).await;
    assert!(fragment.starts_with("<h2>Pools</h2>"), "{fragment}");
    assert!(!fragment.contains("<html"), "{fragment}");

    let page = html(&app, get(&format!("/ui/events/{id}"))).await;
    assert!(page.contains("<h3>Timeline</h3>"), "{page}");
    assert!(page.contains("received delivery d1"), "{page}");

    let found = html(&app, get("/ui/search?repository=o%2Fr&pr=7")).await;
    assert!(found.contains(&format!(r#"data-event="{id}""#)), "{found}");
    assert!(
        found.contains(r#"value="o/r""#),
        "the form keeps the query: {found}"
    );
}

#[tokio::test]
async fn stored_values_are_escaped() {
    let app = App::new(&settings(&json!({})), MemRepo::default()).unwrap();
    let evil = "<script>alert(1)</script>/r";
    let id = store_pr(&app, "<img src=x onerror=alert(2)>", evil, 1).await;
    for path in ["/".to_owned(), format!("/ui/events/{id}")] {
        let page = html(&app, get(&path)).await;
        assert!(!page.contains("<script>alert"), "{path}: {page}");
        assert!(!page.contains("<img src=x"), "{path}: {page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;/r"),
            "{path}: {page}"
        );
    }
}

#[tokio::test]
async fn with_read_tokens_pages_carry_no_data_without_a_token() {
    let app = protected();
    let id = store_pr(&app, "d1", "o/r", 7).await;

    for path in [
        "/".to_owned(),
        format!("/ui/events/{id}"),
        "/ui/search?repository=o/r".to_owned(),
    ] {
        let page = html(&app, get(&path)).await;
        assert!(page.contains(r#"id="token-form""#), "{path}: {page}");
        assert!(page.contains(r#"data-locked="true""#), "{path}: {page}");
        assert!(!page.contains("o/r#7"), "{path} leaks a PR: {page}");
        assert!(!page.contains("ns/p"), "{path} leaks a pool: {page}");
        assert!(
            !page.contains("/ui/events/0"),
            "{path} leaks an event link: {page}"
        );
        // The fragment without a token, or with a wrong one, is the API's 401.
        let fragment = format!(
            "{path}{}fragment=1",
            if path.contains('?') { '&' } else { '?' }
        );
        for request in [get(&fragment), with_bearer(get(&fragment), "wrong")] {
            let (status, body) = send(&app, request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{fragment}: {body}");
            assert_eq!(body["status"], "rejected");
        }
    }

    // With the token: the fragment (what the script fetches) and the whole page.
    let fragment = html(&app, with_bearer(get("/?fragment=1"), "reader-token")).await;
    assert!(fragment.contains("o/r#7"), "{fragment}");
    assert!(fragment.contains(r#"data-pool="ns/p""#), "{fragment}");
    let page = html(&app, with_bearer(get("/"), "reader-token")).await;
    assert!(page.contains(r#"data-locked="false""#), "{page}");
    assert!(page.contains("o/r#7"), "{page}");
}

#[tokio::test]
async fn errors_stay_json() {
    let app = app();
    for path in ["/ui/nope", "/ui/events", "/ui/events/a/b", "/ui", "/uix"] {
        let (status, body) = send(&app, get(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    // An event that does not exist (or an id that is no UUID) is the API's 404.
    for id in ["00000000-0000-4000-8000-000000000099", "not-a-uuid"] {
        let (status, body) = send(&app, get(&format!("/ui/events/{id}"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(body["message"], format!("Event {id} not found"));
    }
    let (status, body) = send(&app, get("/ui/search?pr=seven")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Read-only: nothing but GET.
    for path in ["/", "/ui/search", "/ui/assets/dashboard.js"] {
        let (status, _) = send(&app, post(path)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
}

#[tokio::test]
async fn assets_are_embedded_and_cacheable_pages_are_not() {
    let app = protected();
    for (path, kind, marker) in [
        (
            "/ui/assets/dashboard.css",
            "text/css; charset=utf-8",
            ".bar",
        ),
        (
            "/ui/assets/dashboard.js",
            "text/javascript; charset=utf-8",
            "sessionStorage",
        ),
    ] {
        // Assets hold no data: served without a token.
        let response = app.handle(get(path)).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], kind);
        assert_eq!(response.headers()["cache-control"], "public, max-age=3600");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(marker), "{path}");
    }
    let response = app.handle(get("/")).await;
    assert_eq!(response.headers()["cache-control"], "no-store");
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
}

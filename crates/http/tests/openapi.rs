//! The router serves exactly [`ROUTES`]: each answers its method (never the
//! router's "No route" 404) and every other method with 405; the document
//! is served open, as JSON, byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dispatcher_http::{OPENAPI_JSON, OPENAPI_PATH, ROUTES};
use support::*;

const EVENT: &str = "00000000-0000-4000-8000-000000000001";
const ADMIN: &str = "admin-secret";

fn concrete(template: &str) -> String {
    template.replace("{id}", EVENT).replace("{pool}", "ns/p")
}

fn app() -> App<MemRepo> {
    let settings = settings(&with_pool(json!({
        "api": {"tokens": ["reader"], "admin_tokens": [ADMIN]},
    })));
    App::new(&settings, MemRepo::default()).unwrap()
}

async fn answer(app: &App<MemRepo>, method: &str, path: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = app.handle(request).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_listed_route_is_served_and_other_methods_are_refused() {
    let app = app();
    // An event for {id}, so the event routes answer as for a real one.
    let (status, body) = send(&app, Delivery::pr("d-1", pr_payload(1)).request()).await;
    assert_eq!((status, body["id"].as_str()), (StatusCode::OK, Some(EVENT)));
    for (method, template) in ROUTES {
        let path = concrete(template);
        let (status, body) = answer(&app, method, &path).await;
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            !(status == StatusCode::NOT_FOUND && message.starts_with("No route"))
                && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {template} is not served: {status} {body}"
        );
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if ROUTES.contains(&(other, template)) {
                continue;
            }
            let (status, body) = answer(&app, other, &path).await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{other} {template}: {body}"
            );
        }
    }
    // Sanity: the check above can fail.
    let (status, body) = answer(&app, "GET", "/api/v1/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].as_str().unwrap().starts_with("No route"));
}

#[tokio::test]
async fn the_document_is_served_open_as_json() {
    let app = app();
    let response = app.handle(get(OPENAPI_PATH)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, OPENAPI_JSON.as_bytes());
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
}

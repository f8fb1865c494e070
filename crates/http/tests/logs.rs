//! The HTTP layer's logs, in a test binary of their own: a scoped
//! subscriber captures only this thread's lines, and no other test runs
//! beside it to race tracing's per-callsite interest cache.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl CapturedLogs {
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(logs.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn take(&self) -> Vec<Value> {
        let lines = self.text();
        self.0.lock().unwrap().clear();
        lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Lines at info or above (error answers are logged there).
    fn take_info(&self) -> Vec<Value> {
        self.take()
            .into_iter()
            .filter(|l| l["level"] != "DEBUG" && l["level"] != "TRACE")
            .collect()
    }
}

#[tokio::test]
async fn every_error_answer_is_logged_once_with_its_reason_and_span() {
    let (logs, _guard) = CapturedLogs::start();
    let app = app();

    // A wrong signature: one info line in the request's span, no secret, no body.
    let mut delivery = Delivery::pr("d-bad-sig", pr_payload(5));
    delivery.signature = Some(dispatcher_sig::sign(
        b"another secret",
        delivery.body.as_bytes(),
    ));
    let (status, _) = send(&app, delivery.request()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let text = logs.text();
    assert!(
        !text.contains(SECRET) && !text.contains("\"number\""),
        "{text}"
    );
    let lines = logs.take_info();
    assert_eq!(lines.len(), 1, "logged once: {lines:?}");
    let line = &lines[0];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["message"], "request rejected");
    assert_eq!(line["status"], 401);
    assert_eq!(line["reason"], "Invalid webhook signature");
    assert_eq!(line["span"]["name"], "http_request");
    assert_eq!(line["span"]["method"], "POST");
    assert_eq!(line["span"]["route"], "/api/v1/webhooks/github-pipeline");
    assert_eq!(line["span"]["delivery_id"], "d-bad-sig");
    assert_eq!(line["span"]["status"], 401);

    // A 404 on the detail route: the route pattern, not the id.
    let (status, _) = send(
        &app,
        get("/api/v1/events/6b7e0b1c-3f0a-4a8e-9b7d-1c2d3e4f5a6b"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let lines = logs.take_info();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 404);
    assert_eq!(lines[0]["span"]["route"], "/api/v1/events/{id}");
    assert!(
        lines[0]["span"].get("delivery_id").is_none(),
        "{}",
        lines[0]
    );

    // A success logs no error line.
    let (status, _) = send(&app, Delivery::pr("d-ok", pr_payload(6)).request()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        logs.take_info()
            .iter()
            .all(|l| l["message"] != "request rejected" && l["message"] != "request refused"),
    );

    // 5xx: the database is down: one warning with the detail the client does not see.
    let down = App::new(
        &settings(&json!({})),
        MemRepo {
            down: true,
            ..MemRepo::default()
        },
    )
    .unwrap();
    let (status, body) = send(&down, Delivery::pr("d-down", pr_payload(7)).request()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!body.to_string().contains("connection refused"), "{body}");
    let lines = logs.take_info();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(lines[0]["message"], "request refused");
    assert_eq!(lines[0]["status"], 503);
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{}",
        lines[0]
    );

    // Error answers that are not ApiErrors (readiness without a database) too.
    let (status, _) = send(&down, get("/api/v1/status/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let lines = logs.take_info();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["span"]["route"], "/api/v1/status/ready");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not ready:"),
        "{}",
        lines[0]
    );
}

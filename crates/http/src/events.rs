//! The events API: `GET /api/v1/events/status` (listing) and
//! `GET /api/v1/events/{id}` (detail).

use dispatcher_core::domain::{EventStatus, EventUuid};
use dispatcher_core::ports::{EventFilter, EventQuery, EventRepository};
use http::StatusCode;

use crate::App;
use crate::error::ApiError;
use crate::response::{ApiResponse, json};
use crate::wire::{EventDetailAnswer, EventJson, EventPageJson};

/// Default rows per page.
pub const DEFAULT_PAGE_SIZE: u32 = 10;
/// Largest page; larger requests are clamped and the effective size echoed.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The filter keys the listing accepts.
pub const FILTER_KEYS: &[&str] = &[
    "status",
    "repository_full_name",
    "pull_request_number",
    "action",
    "delivery_id",
    "processed",
];

/// Parses `page`, `page_size` and `filter=k=v;k2=v2` from a query string.
pub fn parse_query(query: Option<&str>) -> Result<EventQuery, ApiError> {
    let mut page = 1u32;
    let mut page_size = DEFAULT_PAGE_SIZE;
    let mut filter = EventFilter::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "page" => page = positive("page", &value)?,
            "page_size" => page_size = positive("page_size", &value)?.min(MAX_PAGE_SIZE),
            "filter" => filter = parse_filter(&value)?,
            _ => {}
        }
    }
    Ok(EventQuery {
        page,
        page_size,
        filter,
    })
}

fn positive(name: &str, value: &str) -> Result<u32, ApiError> {
    match value.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
        _ => Err(ApiError::BadRequest(format!(
            "'{name}' must be a positive integer (got '{value}')"
        ))),
    }
}

fn parse_filter(text: &str) -> Result<EventFilter, ApiError> {
    let mut f = EventFilter::default();
    let mut seen = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            ApiError::BadRequest(format!("Invalid filter '{part}': expected key=value"))
        })?;
        let (key, value) = (key.trim(), value.trim());
        if seen.contains(&key) {
            return Err(ApiError::BadRequest(format!(
                "Filter key '{key}' given twice"
            )));
        }
        seen.push(key);
        let bad = |what: &str| {
            ApiError::BadRequest(format!(
                "Invalid value '{value}' for filter '{key}': {what}"
            ))
        };
        match key {
            "status" => {
                f.status = Some(
                    value
                        .parse::<EventStatus>()
                        .map_err(|e| bad(&format!("expected one of {}", e.allowed.join(", "))))?,
                );
            }
            "repository_full_name" => f.repository_full_name = Some(value.to_owned()),
            "pull_request_number" => {
                f.pull_request_number = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| bad("expected an integer"))?,
                );
            }
            "action" => f.action = Some(value.to_owned()),
            "delivery_id" => f.delivery_id = Some(value.to_owned()),
            "processed" => {
                f.processed = Some(match value.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad("expected true or false")),
                });
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "Unsupported filter key '{other}' (allowed: {})",
                    FILTER_KEYS.join(", ")
                )));
            }
        }
    }
    Ok(f)
}

pub(crate) async fn list<R: EventRepository>(
    app: &App<R>,
    query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let q = parse_query(query)?;
    let page = app.repo.list(&q).await?;
    Ok(json(
        StatusCode::OK,
        &EventPageJson {
            status: "ok",
            events: page.events.iter().map(EventJson::from).collect(),
            page: q.page,
            page_size: q.page_size,
            total_count: page.total_count,
        },
    ))
}

pub(crate) async fn detail<R: EventRepository>(
    app: &App<R>,
    id: &str,
) -> Result<ApiResponse, ApiError> {
    // Event ids are UUIDs: anything else names no event, so it is a 404
    // like an unknown UUID (never a 400 or 500).
    let not_found = || ApiError::NotFound(format!("Event {id} not found"));
    let uuid: EventUuid = id.parse().map_err(|_| not_found())?;
    let detail = app.repo.detail(uuid).await?.ok_or_else(not_found)?;
    Ok(json(StatusCode::OK, &EventDetailAnswer::from(&detail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(q: &str) -> EventQuery {
        parse_query(Some(q)).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    #[test]
    fn defaults_and_clamping() {
        let q = parse_query(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((q.page, q.page_size), (1, DEFAULT_PAGE_SIZE));
        let q = ok("page=3&page_size=1000");
        assert_eq!((q.page, q.page_size), (3, MAX_PAGE_SIZE));
        for bad in ["page=0", "page=-1", "page=x", "page_size=0", "page_size="] {
            assert!(
                matches!(parse_query(Some(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn filters_use_an_allow_list_and_typed_values() {
        let q = ok("filter=status%3Dqueued%3Brepository_full_name%3Do%2Fr");
        assert_eq!(q.filter.status, Some(EventStatus::Queued));
        assert_eq!(q.filter.repository_full_name.as_deref(), Some("o/r"));
        let q = ok("filter=pull_request_number=7;processed=false;action=opened;delivery_id=abc");
        assert_eq!(q.filter.pull_request_number, Some(7));
        assert_eq!(q.filter.processed, Some(false));
        assert_eq!(q.filter.delivery_id.as_deref(), Some("abc"));
        for bad in [
            "filter=payload=x",
            "filter=status=bogus",
            "filter=pull_request_number=abc",
            "filter=processed=maybe",
            "filter=status",
            "filter=action=a;action=b",
            "filter=id=1",
        ] {
            assert!(
                matches!(parse_query(Some(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }
}

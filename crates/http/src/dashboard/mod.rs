//! The dashboard: a read-only web page for people, served by every replica.
//!
//! **Owns:** the routes below, their server-rendered HTML (see `html`,
//! every stored or configured value escaped), and two embedded assets (a
//! stylesheet and a small script; no build step, no CDN, nothing fetched
//! from elsewhere). It shows what the read API shows (`App::pools`,
//! `App::explain`, the events listing), rendered for people.
//!
//! **Must not:** write anything or offer admin actions (pause, cancel,
//! replay stay on the admin API with its tokens); answer an error as HTML
//! (only successful pages are HTML; errors are the API's JSON, unknown
//! `/ui/...` paths included); show data to a request without a read token
//! when `api.tokens` is set.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | pools as bars (running, reserved, free), each queue in order, the 20 most recent events |
//! | `GET /ui/events/{id}` | one event: matching per item, timeline, why it waits |
//! | `GET /ui/search?repository=o/r&pr=7` | the events of a repository and/or pull request (newest 50) |
//! | `GET /ui/assets/dashboard.css`, `/ui/assets/dashboard.js` | the embedded assets, cacheable |
//!
//! **Fragments and tokens.** Each page is a shell around a fragment (the
//! `#content` element). `?fragment=1` answers the fragment alone; the
//! script fetches it every few seconds (not while the tab is hidden) and
//! swaps it in. When reading is open the page arrives rendered. When
//! `api.tokens` is set a browser cannot send a bearer token on navigation,
//! so the page arrives as a shell without data plus a token form; the
//! script keeps the token in `sessionStorage` (this tab only) and fetches
//! the fragment with `Authorization: Bearer`. A fragment request without a
//! valid token is the API's JSON 401.

mod html;

use dispatcher_core::ports::{EventFilter, EventQuery, EventRepository, OperatorStore};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;

use crate::App;
use crate::error::ApiError;
use crate::response::ApiResponse;
use html::{Ctx, Search, Shell};

/// How many recent events the home page lists.
const RECENT_EVENTS: u32 = 20;
/// How many events a search lists.
const SEARCH_LIMIT: u32 = 50;

const CSS: &str = include_str!("../../assets/dashboard.css");
const JS: &str = include_str!("../../assets/dashboard.js");

const HOME_PATH: &str = "/";
const EVENT_PATH: &str = "/ui/events/{id}";
const SEARCH_PATH: &str = "/ui/search";
const CSS_PATH: &str = "/ui/assets/dashboard.css";
const JS_PATH: &str = "/ui/assets/dashboard.js";

/// Every route the dashboard serves, all `GET`, as path templates (`{id}`:
/// one non-empty segment). [`owns`] and [`route`] are defined by this list
/// alone, so a page is served only once it is here, and the OpenAPI unit
/// test requires each to be in the top-level `ROUTES` (and so documented).
pub(crate) const PATHS: &[&str] = &[HOME_PATH, EVENT_PATH, SEARCH_PATH, CSS_PATH, JS_PATH];

/// The template of [`PATHS`] that `path` (trailing `/` trimmed, so `/` is
/// empty) is, if any.
fn template(path: &str) -> Option<&'static str> {
    let path = if path.is_empty() { "/" } else { path };
    PATHS.iter().copied().find(|t| match t.split_once("{id}") {
        None => *t == path,
        Some((before, after)) => path
            .strip_prefix(before)
            .and_then(|rest| rest.strip_suffix(after))
            .is_some_and(|id| !id.is_empty() && !id.contains('/')),
    })
}

/// Whether `path` (trailing `/` trimmed, so `/` is empty) is one of the
/// dashboard's [`PATHS`].
pub(crate) fn owns(path: &str) -> bool {
    template(path).is_some()
}

/// Serves a dashboard path (see the module's route table).
pub(crate) async fn route<R: EventRepository + OperatorStore>(
    app: &App<R>,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<ApiResponse, ApiError> {
    let Some(template) = template(path) else {
        // Unknown paths are 404 whatever the method, like the API's.
        return Err(ApiError::NotFound(format!(
            "No route for {method} {}",
            if path.is_empty() { "/" } else { path }
        )));
    };
    if method != http::Method::GET {
        return Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allowed: "GET",
        });
    }
    match template {
        CSS_PATH => Ok(asset(CSS, "text/css; charset=utf-8")),
        JS_PATH => Ok(asset(JS, "text/javascript; charset=utf-8")),
        HOME_PATH => {
            let params = Params::parse(query)?;
            page(app, "Pools", &params, headers, |ctx| async move {
                let pools = app.pools().await?;
                let recent = app.repo.list(&recent_query()).await?;
                Ok(html::home(&ctx, &pools, &recent.events))
            })
            .await
        }
        SEARCH_PATH => {
            let params = Params::parse(query)?;
            let search = params.search.clone();
            page(app, "Search", &params, headers, |ctx| async move {
                let found = app.repo.list(&search_query(&search)).await?;
                Ok(html::search(
                    &ctx,
                    &search,
                    &found.events,
                    found.total_count,
                ))
            })
            .await
        }
        EVENT_PATH => {
            let id = path.strip_prefix("/ui/events/").unwrap_or_default();
            let params = Params::parse(query)?;
            let title = format!("Event {id}");
            page(app, &title, &params, headers, |ctx| async move {
                let explanation = app.explain(id).await?;
                Ok(html::explanation(&ctx, &explanation))
            })
            .await
        }
        // A template of PATHS without its arm (a page being added).
        _ => Err(ApiError::NotFound(format!("No route for {method} {path}"))),
    }
}

/// A page: the fragment alone (`?fragment=1`, token required when reading
/// is protected), or the shell around it, or the shell alone when reading
/// is protected and no valid token came with the request.
async fn page<'a, R, F, Fut>(
    app: &'a App<R>,
    title: &str,
    params: &Params,
    headers: &HeaderMap,
    render: F,
) -> Result<ApiResponse, ApiError>
where
    R: EventRepository + OperatorStore,
    F: FnOnce(Ctx<'a>) -> Fut,
    Fut: Future<Output = Result<String, ApiError>>,
{
    let ctx = Ctx {
        now: app.now(),
        pr_base: &app.pr_base,
    };
    let authorized = app.authorize(headers);
    if params.fragment {
        authorized?;
        return Ok(html_response(render(ctx).await?));
    }
    let content = match authorized {
        Ok(()) => Some(render(ctx).await?),
        // The browser navigated here without a token: the shell only; the
        // script asks for the token and fetches the fragment with it.
        Err(_) => None,
    };
    Ok(html_response(html::shell(&Shell {
        title,
        content: content.as_deref(),
        protected: !app.live().tokens.set.is_empty(),
        search: &params.search,
    })))
}

/// The query parameters of a dashboard page.
#[derive(Debug, Default)]
struct Params {
    /// `fragment=1`: the `#content` fragment only.
    fragment: bool,
    search: Search,
}

impl Params {
    /// `fragment`, `repository`, `pr`; others are ignored (as the events
    /// listing does), a bad `pr` is a 400.
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut params = Self::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let value = value.trim();
            match key.as_ref() {
                "fragment" => params.fragment = matches!(value, "1" | "true"),
                "repository" if !value.is_empty() => {
                    params.search.repository = Some(value.to_owned());
                }
                "pr" if !value.is_empty() => {
                    let n = value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "'pr' must be a pull request number (got '{value}')"
                            ))
                        })?;
                    params.search.pr = Some(n);
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

fn recent_query() -> EventQuery {
    EventQuery {
        page: 1,
        page_size: RECENT_EVENTS,
        filter: EventFilter::default(),
    }
}

fn search_query(search: &Search) -> EventQuery {
    EventQuery {
        page: 1,
        page_size: SEARCH_LIMIT,
        filter: EventFilter {
            repository_full_name: search.repository.clone(),
            pull_request_number: search.pr,
            ..EventFilter::default()
        },
    }
}

/// A page or fragment: live data, possibly protected, so never cached.
fn html_response(body: String) -> ApiResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Scripts and styles from this origin only: markup that escaped
    // escaping still could not run. Bar widths are style attributes.
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// An embedded asset. Links carry the version (`?v=`), so an hour of
/// caching never serves another binary's asset for long.
fn asset(body: &'static str, content_type: &'static str) -> ApiResponse {
    let mut response = Response::new(Full::new(body.into()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn params_read_search_and_fragment() {
        let p = Params::parse(Some("repository=o%2Fr&pr=7&fragment=1&other=x")).unwrap();
        assert!(p.fragment);
        assert_eq!(p.search.repository.as_deref(), Some("o/r"));
        assert_eq!(p.search.pr, Some(7));
        let p = Params::parse(Some("repository=&pr=")).unwrap();
        assert_eq!(p.search, Search::default());
        assert!(!p.fragment);
        for bad in ["pr=x", "pr=-1", "pr=0", "pr=99999999999999999999"] {
            assert!(
                matches!(Params::parse(Some(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_dashboard_owns_its_paths_only() {
        assert!(owns(""));
        assert!(owns("/ui/events/x"));
        assert!(owns("/ui/search"));
        assert!(owns(CSS_PATH) && owns(JS_PATH));
        for other in [
            "/ui",
            "/ui/events",
            "/ui/events/x/y",
            "/ui/nope",
            "/uix",
            "/api/v1/pools",
        ] {
            assert!(!owns(other), "{other}");
        }
        assert_eq!(template("/ui/events/x"), Some(EVENT_PATH));
        assert_eq!(template(""), Some(HOME_PATH));
    }
}

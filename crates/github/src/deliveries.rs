//! GitHub's webhook deliveries API for the catch-up of missed deliveries
//! (`github.catch_up`): list a repository's or an organisation's hook
//! deliveries, newest first, a page at a time (`Link: <…cursor=…>;
//! rel="next"`), and ask for a redelivery (`POST …/attempts`, 202). Rate
//! limits are reported like the label calls' ([`NotifyError::retry_at`]).

use dispatcher_core::catch_up::{DeliveryPage, HookDeliveries, HookDelivery, HookOwner, HookRef};
use dispatcher_core::ports::NotifyError;
use percent_encoding::utf8_percent_encode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{GithubLabels, SEGMENT, refusal};

impl GithubLabels {
    fn deliveries_url(&self, hook: &HookRef) -> Result<String, NotifyError> {
        let owner = match &hook.owner {
            HookOwner::Repository(full) => {
                let (owner, repo) = full.split_once('/').ok_or_else(|| {
                    NotifyError::new(format!("repository '{full}' is not owner/name"))
                })?;
                format!(
                    "repos/{}/{}",
                    utf8_percent_encode(owner, SEGMENT),
                    utf8_percent_encode(repo, SEGMENT)
                )
            }
            HookOwner::Organization(org) => format!("orgs/{}", utf8_percent_encode(org, SEGMENT)),
        };
        Ok(format!(
            "{}/{owner}/hooks/{}/deliveries",
            self.api_url, hook.hook_id
        ))
    }
}

/// The `cursor` of the `rel="next"` link, if any.
fn next_cursor(link: Option<&str>) -> Option<String> {
    link?.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let url = pieces.next()?.trim().strip_prefix('<')?.strip_suffix('>')?;
        pieces
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| reqwest::Url::parse(url).ok())
            .flatten()?
            .query_pairs()
            .find(|(k, _)| k == "cursor")
            .map(|(_, v)| v.into_owned())
    })
}

fn parse_delivery(v: &serde_json::Value) -> Option<HookDelivery> {
    let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    Some(HookDelivery {
        id: v.get("id")?.as_i64()?,
        guid: text("guid")?.to_owned(),
        delivered_at: OffsetDateTime::parse(text("delivered_at")?, &Rfc3339).ok()?,
        redelivery: v
            .get("redelivery")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        status_code: v
            .get("status_code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0),
        event: text("event")?.to_owned(),
        action: text("action").map(str::to_owned),
    })
}

impl HookDeliveries for GithubLabels {
    async fn list_deliveries(
        &self,
        hook: &HookRef,
        per_page: u32,
        cursor: Option<&str>,
    ) -> Result<DeliveryPage, NotifyError> {
        let url = self.deliveries_url(hook)?;
        let mut url = format!("{url}?per_page={per_page}");
        if let Some(cursor) = cursor {
            url.push_str("&cursor=");
            url.extend(utf8_percent_encode(cursor, SEGMENT));
        }
        let response = self
            .send(|| self.request(reqwest::Method::GET, &url))
            .await?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        let next = next_cursor(
            response
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok()),
        );
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| NotifyError::new(format!("hook deliveries: {}", e.without_url())))?;
        let items = body
            .as_array()
            .ok_or_else(|| NotifyError::new("hook deliveries: the answer is not a list"))?;
        let deliveries = items
            .iter()
            .map(|v| {
                parse_delivery(v).ok_or_else(|| {
                    NotifyError::new(
                        "hook deliveries: an entry lacks id, guid, delivered_at or event",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(DeliveryPage { deliveries, next })
    }

    async fn redeliver(&self, hook: &HookRef, delivery_id: i64) -> Result<(), NotifyError> {
        let url = format!("{}/{delivery_id}/attempts", self.deliveries_url(hook)?);
        let response = self
            .send(|| self.request(reqwest::Method::POST, &url))
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(refusal(response).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_cursor;

    #[test]
    fn the_next_cursor_is_read_from_the_link_header() {
        let link = r#"<https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=2&cursor=v1_12>; rel="next", <https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=2>; rel="first""#;
        assert_eq!(next_cursor(Some(link)).as_deref(), Some("v1_12"));
        let last =
            r#"<https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=2>; rel="first""#;
        assert_eq!(next_cursor(Some(last)), None);
        assert_eq!(next_cursor(None), None);
    }
}

#[cfg(test)]
mod fake_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use dispatcher_core::catch_up::{HookDeliveries, HookRef};
    use dispatcher_fakes::{FakeDelivery, FakeGithub, FakeServer, RateLimit};

    use crate::GithubLabels;

    fn client(url: &str) -> GithubLabels {
        let _ = rustls::crypto::ring::default_provider().install_default();
        GithubLabels::new(&url.parse().unwrap(), "tok", Duration::from_secs(5)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lists_pages_newest_first_and_redelivers_signed() {
        let fake = FakeGithub::start("tok").await.unwrap();
        let hook = HookRef::repository("o/r", 12);
        for i in 1..=150 {
            let status = if i % 2 == 0 { 202 } else { 0 };
            fake.add_delivery(
                "repos/o/r/hooks/12",
                FakeDelivery::pull_request(&format!("g{i}"), r#"{"action":"opened"}"#, status),
            );
        }
        let org = HookRef::organization("o", 3);
        fake.add_delivery(
            "orgs/o/hooks/3",
            FakeDelivery::pull_request("o1", "{}", 502),
        );
        let github = client(&fake.url());

        let first = github.list_deliveries(&hook, 100, None).await.unwrap();
        assert_eq!(first.deliveries.len(), 100);
        assert_eq!(first.deliveries[0].guid, "g150");
        assert_eq!(first.deliveries[0].status_code, 202);
        assert_eq!(first.deliveries[1].status_code, 0);
        assert_eq!(first.deliveries[0].action.as_deref(), Some("opened"));
        let next = first.next.clone().unwrap();
        let second = github
            .list_deliveries(&hook, 100, Some(&next))
            .await
            .unwrap();
        assert_eq!(second.deliveries.len(), 50);
        assert_eq!(second.deliveries[49].guid, "g1");
        assert_eq!(second.next, None);
        let orgs = github.list_deliveries(&org, 100, None).await.unwrap();
        assert_eq!(orgs.deliveries.len(), 1);

        // A redelivery is held until the fake knows where to send it.
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&received);
        let target = FakeServer::start(move |r: dispatcher_fakes::FakeRequest| {
            let seen = Arc::clone(&seen);
            async move {
                let h = |n: &str| r.parts.headers.get(n).unwrap().to_str().unwrap().to_owned();
                seen.lock().unwrap().push((
                    h("x-github-delivery"),
                    h("x-hub-signature-256"),
                    r.body.to_vec(),
                ));
                let mut answer = http::Response::new(http_body_util::BodyExt::boxed(
                    http_body_util::Full::new(bytes::Bytes::new()),
                ));
                *answer.status_mut() = http::StatusCode::ACCEPTED;
                answer
            }
        })
        .await
        .unwrap();
        let id = orgs.deliveries[0].id;
        github.redeliver(&org, id).await.unwrap();
        fake.set_delivery_target(&format!("{}/hook", target.url()), "s3cr3t");
        assert!(
            fake.wait_until(Duration::from_secs(5), |f| f
                .redelivery_requests()
                .iter()
                .all(|r| r.answered == Some(202)))
                .await
        );
        let got = received.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "o1");
        assert_eq!(got[0].1, dispatcher_sig::sign(b"s3cr3t", b"{}"));
        // The redelivery is listed as a new attempt of the same guid.
        let orgs = github.list_deliveries(&org, 100, None).await.unwrap();
        assert_eq!(orgs.deliveries.len(), 2);
        assert!(orgs.deliveries[0].redelivery);
        assert_eq!(orgs.deliveries[0].guid, "o1");
        assert_eq!(orgs.deliveries[0].status_code, 202);

        // One delivery, with its request (the fake's `get`).
        let one: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/orgs/o/hooks/3/deliveries/{id}", fake.url()))
            .bearer_auth("tok")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(one["guid"], "o1");
        assert_eq!(one["request"]["headers"]["X-GitHub-Event"], "pull_request");
        assert_eq!(one["request"]["payload"], serde_json::json!({}));

        let err = github.redeliver(&org, 9999).await.unwrap_err();
        assert!(err.message.contains("404"), "{err}");
        fake.rate_limit_next(
            1,
            RateLimit::RetryAfter {
                status: 429,
                seconds: 30,
            },
        );
        let err = github.list_deliveries(&hook, 100, None).await.unwrap_err();
        assert!(err.retry_at.is_some(), "{err}");
    }
}

//! Queue statuses on GitHub (`github.queue_status`): a check run
//! (`POST /repos/{o}/{r}/check-runs`, then `PATCH …/check-runs/{id}`;
//! GitHub accepts check runs only from a GitHub App) or a commit status
//! (`POST /repos/{o}/{r}/statuses/{sha}`), named `webhook-dispatcher/<pipeline>`.
//!
//! Check runs: waiting is `status: queued` with the text as the output's
//! title; "Started" and "Cancelled: …" complete it with `conclusion: neutral`.
//! Commit statuses: waiting is `pending`, "Started" is `success`, a
//! cancelled one `error`.

use dispatcher_core::ports::{NotifyError, StatusNotifier, StatusPhase, StatusTask};
use percent_encoding::utf8_percent_encode;

use crate::{GithubLabels, SEGMENT, check};

/// Which kind of status to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// A check run per pipeline (needs a GitHub App).
    CheckRun,
    /// A commit status per pipeline.
    CommitStatus,
}

/// Publishes queue statuses with a [`GithubLabels`] client's authentication.
#[derive(Debug, Clone)]
pub struct GithubQueueStatus {
    github: GithubLabels,
    kind: StatusKind,
}

impl GithubQueueStatus {
    /// Statuses of `kind` through `github` (its token or app).
    pub fn new(github: GithubLabels, kind: StatusKind) -> Self {
        Self { github, kind }
    }

    fn repo_url(&self, repository: &str) -> Result<String, NotifyError> {
        let (owner, repo) = repository.split_once('/').ok_or_else(|| {
            NotifyError::new(format!("repository '{repository}' is not owner/name"))
        })?;
        Ok(format!(
            "{}/repos/{}/{}",
            self.github.api_url,
            utf8_percent_encode(owner, SEGMENT),
            utf8_percent_encode(repo, SEGMENT),
        ))
    }

    async fn commit_status(&self, task: &StatusTask) -> Result<Option<i64>, NotifyError> {
        let url = format!(
            "{}/statuses/{}",
            self.repo_url(&task.pr.repository)?,
            utf8_percent_encode(&task.head_sha, SEGMENT)
        );
        let state = match task.phase {
            StatusPhase::Queued => "pending",
            StatusPhase::Started => "success",
            StatusPhase::Cancelled => "error",
        };
        let body = serde_json::json!({
            "state": state,
            "context": context(&task.pipeline),
            "description": task.description,
        });
        let response = self
            .github
            .send(|| self.github.request(reqwest::Method::POST, &url).json(&body))
            .await;
        check(response, false).await.map(|()| None)
    }

    async fn check_run(&self, task: &StatusTask) -> Result<Option<i64>, NotifyError> {
        let base = format!("{}/check-runs", self.repo_url(&task.pr.repository)?);
        let mut body = serde_json::json!({
            "name": context(&task.pipeline),
            "output": {"title": task.description, "summary": task.description},
        });
        if task.phase.is_final() {
            body["status"] = "completed".into();
            body["conclusion"] = "neutral".into();
        } else {
            body["status"] = "queued".into();
        }
        // A run completed earlier cannot wait again: a new one is created.
        let existing = task
            .check_run_id
            .filter(|_| task.applied_phase == Some(StatusPhase::Queued));
        if let Some(id) = existing {
            let url = format!("{base}/{id}");
            let response = self
                .github
                .send(|| {
                    self.github
                        .request(reqwest::Method::PATCH, &url)
                        .json(&body)
                })
                .await;
            return check(response, false).await.map(|()| None);
        }
        body["head_sha"] = task.head_sha.clone().into();
        let response = self
            .github
            .send(|| {
                self.github
                    .request(reqwest::Method::POST, &base)
                    .json(&body)
            })
            .await?;
        if !response.status().is_success() {
            check(Ok(response), false).await?;
            return Err(NotifyError::new("GitHub did not create the check run"));
        }
        let created: serde_json::Value = response
            .json()
            .await
            .map_err(|e| NotifyError::new(format!("unreadable check run answer: {e}")))?;
        created
            .get("id")
            .and_then(serde_json::Value::as_i64)
            .map(Some)
            .ok_or_else(|| NotifyError::new("GitHub's check run answer has no id"))
    }
}

/// The check run's name and the commit status's context.
pub fn context(pipeline: &str) -> String {
    format!("webhook-dispatcher/{pipeline}")
}

impl StatusNotifier for GithubQueueStatus {
    async fn publish_status(&self, task: &StatusTask) -> Result<Option<i64>, NotifyError> {
        match self.kind {
            StatusKind::CommitStatus => self.commit_status(task).await,
            StatusKind::CheckRun => self.check_run(task).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::time::Duration;

    use dispatcher_core::domain::PullRequestRef;
    use dispatcher_fakes::FakeGithub;

    use super::*;

    fn client(fake: &FakeGithub, kind: StatusKind) -> GithubQueueStatus {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let github =
            GithubLabels::new(&fake.url().parse().unwrap(), "t", Duration::from_secs(5)).unwrap();
        GithubQueueStatus::new(github, kind)
    }

    fn task(phase: StatusPhase, text: &str) -> StatusTask {
        StatusTask {
            pr: PullRequestRef {
                repository: "o/r".into(),
                number: 7,
            },
            pool: "ns/p".into(),
            pipeline: "p".into(),
            head_sha: "abc123".into(),
            phase,
            description: text.into(),
            applied_phase: None,
            check_run_id: None,
            attempts: 0,
        }
    }

    #[tokio::test]
    async fn a_check_run_is_created_then_updated_and_completed_neutral() {
        let fake = FakeGithub::start("t").await.unwrap();
        let github = client(&fake, StatusKind::CheckRun);
        let id = github
            .publish_status(&task(
                StatusPhase::Queued,
                "Queued: 2nd of 2 for p, no estimate yet",
            ))
            .await
            .unwrap()
            .expect("created");
        let mut next = task(StatusPhase::Queued, "Queued: 1st of 1 for p, starting now");
        next.applied_phase = Some(StatusPhase::Queued);
        next.check_run_id = Some(id);
        assert_eq!(github.publish_status(&next).await.unwrap(), None, "patched");
        next.phase = StatusPhase::Started;
        next.description = "Started".into();
        assert_eq!(github.publish_status(&next).await.unwrap(), None);
        let seen: Vec<(String, String, Option<i64>)> = fake
            .status_updates()
            .into_iter()
            .map(|u| {
                assert_eq!(
                    (u.kind, u.sha.as_str(), u.name.as_str()),
                    ("check_run", "abc123", "webhook-dispatcher/p")
                );
                (u.state, u.text, u.check_run)
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "queued".into(),
                    "Queued: 2nd of 2 for p, no estimate yet".into(),
                    Some(id)
                ),
                (
                    "queued".into(),
                    "Queued: 1st of 1 for p, starting now".into(),
                    Some(id)
                ),
                ("completed/neutral".into(), "Started".into(), Some(id)),
            ]
        );
        // A run completed before cannot wait again: a new one is created.
        let mut again = task(StatusPhase::Queued, "Queued: 1st of 1 for p, starting now");
        again.applied_phase = Some(StatusPhase::Started);
        again.check_run_id = Some(id);
        let new_id = github.publish_status(&again).await.unwrap();
        assert!(new_id.is_some_and(|n| n != id));
    }

    #[tokio::test]
    async fn commit_statuses_map_phases_to_states() {
        let fake = FakeGithub::start("t").await.unwrap();
        let github = client(&fake, StatusKind::CommitStatus);
        for (phase, text) in [
            (StatusPhase::Queued, "Queued: 1st of 1 for p, starting now"),
            (StatusPhase::Started, "Started"),
            (StatusPhase::Cancelled, "Cancelled: superseded by def"),
        ] {
            assert_eq!(
                github.publish_status(&task(phase, text)).await.unwrap(),
                None
            );
        }
        let states: Vec<(String, String)> = fake
            .status_updates()
            .into_iter()
            .map(|u| (u.state, u.text))
            .collect();
        assert_eq!(
            states,
            [
                (
                    "pending".into(),
                    "Queued: 1st of 1 for p, starting now".into()
                ),
                ("success".into(), "Started".into()),
                ("error".into(), "Cancelled: superseded by def".into()),
            ]
        );
        // GitHub's refusal is an ordinary error (retried with backoff).
        let refused = client(&fake, StatusKind::CommitStatus);
        let long = "x".repeat(141);
        let err = refused
            .publish_status(&task(StatusPhase::Queued, &long))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("422") && err.retry_at.is_none(),
            "{err}"
        );
    }
}

//! The Hub client of a push: the checked connection (token, write access, repository,
//! branch), the preflight a COPY runs before its query, and what a first commit creates.

use std::collections::HashMap;
use std::time::Duration;

use hub_client::repository::HFRepository;
use hub_client::{HFClient, HFError, RepoTypeDataset};
use prefflow_udfs::models::hub::describe;

use crate::error::Result;

use super::target::HubTarget;
use crate::sinks::options::Options;

/// How long a connection may take to open, and a response to send its next bytes, before the
/// request is retried; `PREFFLOW_HUB_TIMEOUT` (seconds) overrides both.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per request: hf-hub retries 5xx, 429, timeouts and dropped connections with
/// jittered exponential backoff (up to 2, 4, 8, … times the base delay: about half a minute
/// in all with the default base of 0.5 s; `PREFFLOW_HUB_RETRY_MS` sets the base).
pub(super) const ATTEMPTS: usize = 6;

fn retry_base() -> Duration {
    std::env::var("PREFFLOW_HUB_RETRY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_millis(500))
}

fn timeout() -> Duration {
    std::env::var("PREFFLOW_HUB_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(TIMEOUT)
}

/// Checks a push before anything runs: the token (present, with write access), the
/// repository (created if missing; a public one refused when a private one is asked for) and
/// the branch (created if missing). Returns the repository's client.
pub(super) async fn connect(target: &HubTarget) -> Result<Connection> {
    let token = prefflow_udfs::models::hub::token().ok_or_else(|| {
        target.err(
            "no Hub token: set HF_TOKEN to a token with write access (or log in with `huggingface-cli login`) before pushing",
        )
    })?;
    let http = hub_http::Client::builder()
        .connect_timeout(timeout())
        .read_timeout(timeout())
        .user_agent(concat!("prefflow/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| target.err(format!("cannot set up the Hub client: {e}")))?;
    let client = HFClient::builder()
        .token(token.clone())
        .client(http.clone())
        .retry_max_attempts(ATTEMPTS)
        .retry_base_delay(retry_base())
        .build()
        .map_err(|e| target.err(format!("cannot set up the Hub client: {}", describe(&e))))?;
    check_write_access(target, &http, client.endpoint(), &token).await?;
    let repo = client.dataset(target.org.clone(), target.name.clone());
    let fail = |what: &str, e: HFError| target.err(format!("{what}: {}", describe(&e)));
    let missing = match repo.info().send().await {
        Ok(info) => {
            if target.private && info.private == Some(false) {
                return Err(target.err(format!(
                    "dataset {} is public and this COPY asks for a private one (private is the default): add OPTIONS (private false) to push to a public dataset, or choose another",
                    target.repo_id()
                )));
            }
            if target.branch != "main"
                && !repo
                    .revision_exists()
                    .revision(&target.branch)
                    .send()
                    .await
                    .map_err(|e| fail("cannot read the branch", e))?
            {
                Missing::Branch
            } else {
                Missing::Nothing
            }
        }
        Err(HFError::RepoNotFound { .. }) => Missing::Repository,
        Err(e) => return Err(fail("cannot read the dataset repository", e)),
    };
    Ok(Connection {
        client,
        repo,
        missing,
    })
}

/// A checked Hub target. What does not exist yet is created by the first commit, so a push
/// that fails before it (a bad query, a model error) leaves no empty repository or branch.
pub(super) struct Connection {
    pub client: HFClient,
    pub repo: HFRepository<RepoTypeDataset>,
    pub missing: Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Missing {
    Nothing,
    Repository,
    Branch,
}

/// Creates what `missing` says is not there yet; returns the branch's head commit.
pub(super) async fn create_missing(
    target: &HubTarget,
    client: &HFClient,
    repo: &HFRepository<RepoTypeDataset>,
    missing: Missing,
) -> Result<Option<String>> {
    let fail = |what: &str, e: HFError| target.err(format!("{what}: {}", describe(&e)));
    if missing == Missing::Repository {
        client
            .create_repository()
            .repo_id(&target.repo_id())
            .repo_type(RepoTypeDataset)
            .private(target.private)
            .exist_ok(true)
            .send()
            .await
            .map_err(|e| fail("cannot create the dataset repository", e))?;
    }
    if missing != Missing::Nothing && target.branch != "main" {
        repo.create_branch()
            .branch(&target.branch)
            .send()
            .await
            .map_err(|e| fail(&format!("cannot create branch {}", target.branch), e))?;
    }
    let info = repo
        .info()
        .revision(target.branch.clone())
        .send()
        .await
        .map_err(|e| fail("cannot read the new branch", e))?;
    Ok(info.sha)
}

/// The checks of [`connect`] for a planned `COPY … TO 'hf://…'`, run by the engine before the
/// query starts (so a bad token fails before any model work).
pub(crate) async fn preflight(url: &str, options: &HashMap<String, String>) -> Result<()> {
    let mut options = Options::new("COPY", options);
    let target = HubTarget::parse(url, &mut options)?;
    connect(&target).await.map(|_| ())
}

/// Checks the token with `whoami-v2` before any work: a read-only token is refused. (hf-hub's
/// `whoami` does not expose the token's role.)
async fn check_write_access(
    target: &HubTarget,
    http: &hub_http::Client,
    endpoint: &str,
    token: &str,
) -> Result<()> {
    let url = format!("{}/api/whoami-v2", endpoint.trim_end_matches('/'));
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(retry_base() * (2u32 << (attempt - 1).min(5))).await;
        }
        let response = match http.get(&url).bearer_auth(token).send().await {
            Ok(r) => r,
            Err(e) => {
                last = format!("cannot reach the Hub at {endpoint}: {}", e.without_url());
                continue;
            }
        };
        let status = response.status();
        if status.as_u16() == 401 {
            return Err(target.err(
                "the Hub refused the token (401): set HF_TOKEN to a valid token with write access",
            ));
        }
        if status.is_server_error() || status.as_u16() == 429 {
            last = format!("the Hub answered {status} to whoami");
            continue;
        }
        if !status.is_success() {
            return Err(target.err(format!("the Hub answered {status} to whoami")));
        }
        let body: serde_json::Value = match response.json().await {
            Ok(b) => b,
            Err(e) => {
                last = format!("unreadable whoami answer: {}", e.without_url());
                continue;
            }
        };
        let role = body
            .pointer("/auth/accessToken/role")
            .and_then(|r| r.as_str());
        if role == Some("read") {
            return Err(target.err(
                "the token is read-only: pushing needs a token with write access (HF_TOKEN)",
            ));
        }
        return Ok(());
    }
    Err(target.err(last))
}

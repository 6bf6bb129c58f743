//! Models behind an OpenAI-compatible server (vLLM, TGI, llama.cpp, a hosted API):
//! `CREATE MODEL x FROM 'openai://HOST:PORT/v1/MODEL'` (plain HTTP, the usual local server)
//! or `'openai+https://HOST/v1/MODEL'`.
//!
//! Requests go to `/chat/completions`, `/completions` and `/embeddings` under the address's
//! `/v1`. A model may be served at several places (`endpoints`) and with several API keys
//! (`api_key_env 'KEY_A,KEY_B'`): every address with every key is one endpoint, and a request
//! goes to the least-loaded healthy one (`endpoints.rs`); which one answered does not change
//! the result or its cache key. How many requests are open at once adapts to each endpoint
//! (`admission`: AIMD with a start ramp, between 1 and the `concurrency` cap, default 256; 429,
//! 503 and timeouts push the target down, answers let it grow), and `requests_per_minute` /
//! `tokens_per_minute` bound each endpoint (`rate_limit.rs`). A request that times out, loses
//! its connection, gets 429 or 5xx, or an answer that is not JSON, is retried up to
//! `max_retries` times with exponential backoff and full jitter, waiting at least what a
//! Retry-After header asks. API keys are read from the environment variables named by
//! `api_key_env` when a request is sent and go only into the Authorization header: they are
//! never stored in the model's declaration, and no error or plan shows them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::error::{ModelError, ModelResult};
use super::types::{GenerateParams, ModelSpec};

/// CREATE MODEL options that only remote models take.
pub const REMOTE_OPTIONS: [&str; 11] = [
    "api_key_env",
    "endpoints",
    "requests_per_minute",
    "tokens_per_minute",
    "concurrency",
    "max_retries",
    "timeout",
    "backoff",
    "max_wait",
    "on_error",
    "dimensions",
];

pub use super::types::is_remote;

/// (base URL ending in /v1, model name) of a remote address.
pub fn parse_address(model: &str, uri: &str) -> ModelResult<(String, String)> {
    let (scheme, rest) = if let Some(r) = uri.strip_prefix("openai+https://") {
        ("https", r)
    } else if let Some(r) = uri
        .strip_prefix("openai+http://")
        .or_else(|| uri.strip_prefix("openai://"))
    {
        ("http", r)
    } else {
        return Err(bad_address(model, uri));
    };
    // The model name may itself contain '/' (org/name): it is everything after "/v1/".
    let Some(at) = rest.find("/v1/") else {
        return Err(bad_address(model, uri));
    };
    let (host, name) = (&rest[..at], &rest[at + 4..]);
    if host.is_empty() || name.is_empty() {
        return Err(bad_address(model, uri));
    }
    Ok((format!("{scheme}://{host}/v1"), name.to_string()))
}

fn bad_address(model: &str, uri: &str) -> ModelError {
    ModelError::Declaration(format!(
        "CREATE MODEL {model}: '{}' is not a remote model address: use openai://HOST:PORT/v1/MODEL or openai+https://HOST/v1/MODEL",
        redact_uri(uri)
    ))
}

/// An address with any credentials (`scheme://user:secret@host`) replaced by `***`, for
/// everything that is shown (SHOW MODELS, EXPLAIN, errors).
pub fn redact_uri(uri: &str) -> String {
    let Some(start) = uri.find("://").map(|i| i + 3) else {
        return uri.to_string();
    };
    let authority_end = uri[start..].find('/').map_or(uri.len(), |i| start + i);
    match uri[start..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &uri[..start], &uri[start + at + 1..]),
        None => uri.to_string(),
    }
}

/// The password (or user) of an address's credentials, to mask in server text.
fn uri_secret(uri: &str) -> Option<String> {
    let start = uri.find("://")? + 3;
    let authority_end = uri[start..].find('/').map_or(uri.len(), |i| start + i);
    let userinfo = &uri[start..start + uri[start..authority_end].rfind('@')?];
    let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    (!secret.is_empty()).then(|| secret.to_string())
}

/// What to do with a row whose request finally fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail the query (default).
    Error,
    /// Give NULL for that row.
    Null,
    /// Give a struct {value, error, attempts} for every row (`row_errors.rs`).
    Record,
}

/// A remote model's settings, from its address and OPTIONS.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// `http://HOST:PORT/v1`.
    pub base: String,
    /// The server's model name.
    pub model: String,
    /// The environment variables holding API keys (one endpoint per key and base).
    pub api_key_envs: Vec<String>,
    /// More base addresses serving the same model (`endpoints`), each `http(s)://HOST/v1`.
    pub more_bases: Vec<String>,
    /// The most requests open at once per endpoint (the adaptive target's cap).
    pub concurrency: usize,
    /// Requests a minute per endpoint.
    pub requests_per_minute: Option<f64>,
    /// Tokens a minute per endpoint (request estimate settled by the answer's usage).
    pub tokens_per_minute: Option<f64>,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// First backoff; doubles per retry (capped at 30 s), jittered.
    pub backoff: Duration,
    /// The longest one wait between attempts, whatever a Retry-After header asks.
    pub max_wait: Duration,
    /// Credentials in the address, masked in everything a server sends back.
    uri_secret: Option<String>,
    /// Rows whose request finally fails.
    pub on_error: OnError,
    /// Embedding width, for ai_embed.
    pub dimensions: Option<usize>,
}

impl RemoteSettings {
    /// Reads a declared remote model's address and options; errors name the model.
    pub fn from_spec(spec: &ModelSpec) -> ModelResult<Self> {
        let (base, model) = parse_address(&spec.name, &spec.uri)?;
        let bad = |k: &str, v: &str, want: &str| {
            ModelError::Declaration(format!(
                "CREATE MODEL {}: option {k} must be {want}, got '{v}'",
                spec.name
            ))
        };
        // Every number is bounded: a value such as '1e20' would overflow a count or a
        // duration later, deep inside a request.
        let number = |k: &str, default: f64, max: f64| -> ModelResult<f64> {
            match spec.options.get(k) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && (0.0..=max).contains(x))
                    .ok_or_else(|| bad(k, v, &format!("a number from 0 to {max}"))),
            }
        };
        let whole = |k: &str, default: f64, min: f64, max: f64| -> ModelResult<f64> {
            let want = format!("a whole number from {min} to {max}");
            let given = spec.options.get(k).map(String::as_str).unwrap_or_default();
            let n = number(k, default, max).map_err(|_| bad(k, given, &want))?;
            if n < min || n.fract() != 0.0 {
                return Err(bad(k, given, &want));
            }
            Ok(n)
        };
        let concurrency = whole(
            "concurrency",
            DEFAULT_CONCURRENCY as f64,
            1.0,
            MAX_CONCURRENCY as f64,
        )?;
        let max_retries = whole("max_retries", 6.0, 0.0, 100.0)?;
        // A day is the longest wait any of these may ask for.
        const DAY: f64 = 86_400.0;
        let api_key_envs: Vec<String> = match spec.options.get("api_key_env") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        };
        if spec.options.contains_key("api_key_env") && api_key_envs.is_empty() {
            return Err(bad(
                "api_key_env",
                &spec.options["api_key_env"],
                "one or several environment variable names, separated by commas",
            ));
        }
        for var in &api_key_envs {
            if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                return Err(ModelError::Declaration(format!(
                    "CREATE MODEL {}: api_key_env names the environment variable {var}, which is not set",
                    spec.name
                )));
            }
        }
        let mut more_bases = Vec::new();
        for address in spec
            .options
            .get("endpoints")
            .map(|v| v.split(',').map(str::trim).filter(|a| !a.is_empty()))
            .into_iter()
            .flatten()
        {
            // The same server API at another place: the model name is the FROM address's.
            let with_model = format!("{}/{model}", address.trim_end_matches('/'));
            let (other, _) = parse_address(&spec.name, &with_model).map_err(|_| {
                ModelError::Declaration(format!(
                    "CREATE MODEL {}: option endpoints: '{}' is not a server address: use openai://HOST:PORT/v1 or openai+https://HOST/v1, separated by commas",
                    spec.name,
                    redact_uri(address)
                ))
            })?;
            if other != base && !more_bases.contains(&other) {
                more_bases.push(other);
            }
        }
        let per_minute = |k: &str| -> ModelResult<Option<f64>> {
            let want = "a number above 0 (per minute, per endpoint)";
            let Some(v) = spec.options.get(k) else {
                return Ok(None);
            };
            match number(k, 0.0, 1e12) {
                Ok(x) if x > 0.0 => Ok(Some(x)),
                _ => Err(bad(k, v, want)),
            }
        };
        let requests_per_minute = per_minute("requests_per_minute")?;
        let tokens_per_minute = per_minute("tokens_per_minute")?;
        let on_error = match spec.options.get("on_error").map(|s| s.as_str()) {
            None | Some("error") => OnError::Error,
            Some("null") => OnError::Null,
            Some("record") => OnError::Record,
            Some(other) => return Err(bad("on_error", other, "'error', 'null' or 'record'")),
        };
        let dimensions = match spec.options.get("dimensions") {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|d| *d > 0)
                    .ok_or_else(|| bad("dimensions", v, "a whole number of at least 1"))?,
            ),
        };
        Ok(Self {
            base,
            model,
            api_key_envs,
            more_bases,
            concurrency: concurrency as usize,
            requests_per_minute,
            tokens_per_minute,
            max_retries: max_retries as u32,
            timeout: Duration::from_secs_f64(number("timeout", 120.0, DAY)?.max(0.001)),
            backoff: Duration::from_secs_f64(number("backoff", 0.5, DAY)?),
            max_wait: Duration::from_secs_f64(number("max_wait", 30.0, DAY)?),
            uri_secret: uri_secret(&spec.uri),
            on_error,
            dimensions,
        })
    }
}

/// The start of a row's text, to name the row in an error.
fn preview(text: &str) -> String {
    shortened(text, 40)
}

/// At most `n` characters of `text`, with `…` when cut.
pub(crate) fn shortened(text: &str, n: usize) -> String {
    let short: String = text.chars().take(n).collect();
    if short.len() < text.len() {
        format!("{short}…")
    } else {
        short
    }
}

/// The most requests a model may keep open at once.
pub const MAX_CONCURRENCY: usize = 65_536;

/// The default cap on requests in flight: servers such as vLLM are fastest with hundreds; the
/// adaptive target finds what a smaller one takes.
pub const DEFAULT_CONCURRENCY: usize = 256;

/// Seconds a Retry-After header asks for: a non-negative finite number (a NaN, an infinity, a
/// negative value or an HTTP date are not honoured; the backoff applies), at most a day (and
/// `max_wait` caps it further).
fn retry_after_seconds(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// Why a request failed for good.
#[derive(Debug)]
pub enum RemoteError {
    /// Retries exhausted on transient failures; the last one.
    Exhausted { attempts: u32, last: String },
    /// The server refused the request (4xx other than 429).
    Refused {
        /// What was asked (`/v1/completions`, `/tokenize`).
        path: String,
        status: u16,
        body: String,
    },
    /// The answer was JSON but not the expected shape.
    Shape(String),
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            RemoteError::Exhausted { attempts, last } => {
                write!(f, "no answer after {attempts} attempts (last: {last})")
            }
            RemoteError::Refused { path, status, body } => {
                write!(
                    f,
                    "the server refused the request to {path}: HTTP {status}: {body}"
                )
            }
            RemoteError::Shape(what) => write!(f, "{what}"),
        }
    }
}

/// A remote model: its settings, an HTTP client and its endpoints.
#[derive(Debug)]
pub struct RemoteModel {
    /// The name SQL uses.
    pub name: String,
    /// Address and options.
    pub settings: RemoteSettings,
    client: reqwest::Client,
    pool: super::endpoints::Pool,
    jitter: AtomicU64,
}

impl RemoteModel {
    /// A client for a declared remote model.
    pub fn new(spec: &ModelSpec) -> ModelResult<Self> {
        let settings = RemoteSettings::from_spec(spec)?;
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| {
                ModelError::Declaration(format!("model '{}': HTTP client: {e}", spec.name))
            })?;
        Ok(Self {
            name: spec.name.clone(),
            pool: super::endpoints::Pool::new(
                &std::iter::once(settings.base.clone())
                    .chain(settings.more_bases.iter().cloned())
                    .collect::<Vec<_>>(),
                &settings.api_key_envs,
                super::endpoints::Limits {
                    concurrency: settings.concurrency,
                    requests_per_minute: settings.requests_per_minute,
                    tokens_per_minute: settings.tokens_per_minute,
                },
            ),
            settings,
            client,
            jitter: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        })
    }

    /// `base` without any credentials, for messages.
    pub fn address(&self) -> String {
        redact_uri(&format!("{}/{}", self.settings.base, self.settings.model))
    }

    /// Server text (an error body, an echoed header) with the API key, `Bearer <key>` and any
    /// credentials of the address replaced by `***`.
    fn mask(&self, text: &str) -> String {
        let mut secrets: Vec<String> = Vec::new();
        for var in &self.settings.api_key_envs {
            if let Ok(key) = std::env::var(var) {
                secrets.push(key);
            }
        }
        secrets.extend(self.settings.uri_secret.clone());
        redact_uri(&super::secrets::mask(text, &secrets))
    }

    /// One chat completion (or a plain completion when `messages` is a string prompt).
    pub async fn generate(
        &self,
        prompt: Prompt,
        options: &GenerateParams,
        seed: u64,
    ) -> Result<String, RemoteError> {
        let mut body = match &prompt {
            Prompt::Messages(messages) => {
                json!({"model": self.settings.model, "messages": messages})
            }
            Prompt::Text(text) => json!({"model": self.settings.model, "prompt": text}),
        };
        fill(&mut body, options, seed);
        let path = match prompt {
            Prompt::Messages(_) => "chat/completions",
            Prompt::Text(_) => "completions",
        };
        let answer = self.post(path, &body).await?;
        if let Some(usage) = answer.get("usage") {
            let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
            crate::call_stats::record_tokens(n("prompt_tokens"), n("completion_tokens"));
        }
        let choice = answer
            .get("choices")
            .and_then(|c| c.get(0))
            .ok_or_else(|| RemoteError::Shape("the answer has no choices".to_string()))?;
        let text = match path {
            "chat/completions" => choice.pointer("/message/content"),
            _ => choice.get("text"),
        };
        text.and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| RemoteError::Shape("the answer's first choice has no text".to_string()))
    }

    /// Embeddings of `texts`, in order.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, RemoteError> {
        let body = json!({"model": self.settings.model, "input": texts});
        let answer = self.post("embeddings", &body).await?;
        if let Some(n) = answer
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
        {
            crate::call_stats::record_tokens(n, 0);
        }
        let data = answer
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| RemoteError::Shape("the answer has no data".to_string()))?;
        if data.len() != texts.len() {
            return Err(RemoteError::Shape(format!(
                "{} embeddings for {} texts",
                data.len(),
                texts.len()
            )));
        }
        let mut out = vec![Vec::new(); texts.len()];
        for (k, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .map_or(k, |i| i as usize);
            let vector = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| RemoteError::Shape("an embedding is missing".to_string()))?;
            let slot = out.get_mut(index).ok_or_else(|| {
                RemoteError::Shape(format!("embedding index {index} out of range"))
            })?;
            // A null or a string is not a number: refused, never read as NaN (which would be
            // cached and score every comparison as false).
            let mut values = Vec::with_capacity(vector.len());
            for (j, x) in vector.iter().enumerate() {
                let v = x.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
                    RemoteError::Shape(format!(
                        "the embedding of row text '{}' has {x} at position {j}, not a number",
                        preview(texts.get(index).map_or("", String::as_str))
                    ))
                })?;
                values.push(v as f32);
            }
            if values.is_empty() {
                return Err(RemoteError::Shape(format!(
                    "the embedding of row text '{}' is empty",
                    preview(texts.get(index).map_or("", String::as_str))
                )));
            }
            *slot = values;
        }
        if let Some(k) = out.iter().position(Vec::is_empty) {
            return Err(RemoteError::Shape(format!(
                "the answer has no embedding for row text '{}' (an index appears twice?)",
                preview(&texts[k])
            )));
        }
        Ok(out)
    }

    /// What the endpoints' admission controllers have seen.
    pub fn admission(&self) -> super::admission::Gauge {
        self.pool.gauge()
    }

    /// How many endpoints (base address x key) the model sends to.
    pub fn endpoint_count(&self) -> usize {
        self.pool.endpoints().len()
    }

    /// POSTs JSON to the least-loaded healthy endpoint (`path` under `/v1`, or from the
    /// server's root when it starts with '/'), through its admission controller and
    /// rate limits, with retries (each attempt may go to another endpoint); the answer's JSON.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, RemoteError> {
        let attempts = self.settings.max_retries + 1;
        // The token budget's estimate: about four bytes a token, plus what may be generated.
        let estimate = if self.settings.tokens_per_minute.is_some() {
            let max_tokens = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(0);
            (body.to_string().len() / 4) as f64 + max_tokens as f64
        } else {
            0.0
        };
        let mut last = String::new();
        for attempt in 0..attempts {
            let mut wait = None;
            {
                let lease = self.pool.acquire(estimate).await;
                crate::row_errors::attempt();
                let gauge = self.pool.gauge();
                crate::call_stats::record_admission(gauge.waited, gauge.target);
                let url = match path.strip_prefix('/') {
                    // vLLM and llama.cpp serve /tokenize, /pooling and /apply-template at the
                    // server's root, not under /v1.
                    Some(at_root) => format!("{}/{at_root}", server_root(&lease.endpoint.base)),
                    None => format!("{}/{path}", lease.endpoint.base),
                };
                let mut request = self.client.post(&url).json(body);
                if let Some(var) = &lease.endpoint.key_env {
                    match std::env::var(var) {
                        Ok(key) if !key.is_empty() => request = request.bearer_auth(key),
                        _ => {
                            return Err(RemoteError::Shape(format!(
                                "api_key_env names the environment variable {var}, which is not set"
                            )));
                        }
                    }
                }
                match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let retry_after = response
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(retry_after_seconds);
                        let text = response.text().await;
                        match (status, text) {
                            (200..=299, Ok(text)) => match serde_json::from_str::<Value>(&text) {
                                Ok(v) => {
                                    let used = v.get("usage").and_then(|u| {
                                        u.get("total_tokens").and_then(Value::as_u64).or_else(
                                            || {
                                                let n = |k: &str| {
                                                    u.get(k).and_then(Value::as_u64).unwrap_or(0)
                                                };
                                                Some(n("prompt_tokens") + n("completion_tokens"))
                                            },
                                        )
                                    });
                                    lease.answered(used.map(|u| u as f64));
                                    return Ok(v);
                                }
                                Err(e) => {
                                    lease.answered(None);
                                    last = format!("an answer that is not JSON ({e})");
                                }
                            },
                            (200..=299, Err(e)) => {
                                lease.failed(false);
                                last = format!("the answer broke off ({})", plain(&e))
                            }
                            (429 | 503, _) => {
                                crate::call_stats::record_pushback();
                                lease.pushed_back();
                                last = format!("HTTP {status}");
                                wait = retry_after;
                            }
                            (500..=599, text) => {
                                lease.failed(false);
                                // What the server says goes into the final error: a 500 such
                                // as llama.cpp's "Only no echo is supported" is the answer.
                                let said = server_message(&self.mask(&text.unwrap_or_default()));
                                last = if said.is_empty() {
                                    format!("HTTP {status}")
                                } else {
                                    format!("HTTP {status}: {said}")
                                };
                                wait = retry_after;
                            }
                            (_, text) => {
                                let body: String = self
                                    .mask(&text.unwrap_or_default())
                                    .chars()
                                    .take(200)
                                    .collect();
                                return Err(RemoteError::Refused {
                                    path: shown_path(path),
                                    status,
                                    body,
                                });
                            }
                        }
                    }
                    Err(e) => {
                        if e.is_timeout() {
                            crate::call_stats::record_pushback();
                        }
                        lease.failed(e.is_timeout());
                        last = self.mask(&plain(&e));
                    }
                }
            }
            if attempt + 1 < attempts {
                crate::call_stats::record_retry();
                let backoff = self.backoff(attempt);
                let asked = wait.map_or(backoff, |w| w.max(backoff));
                // A Retry-After of a day must not hang the run: waits are capped.
                let sleep = asked.min(self.settings.max_wait);
                if sleep >= Duration::from_secs(5) || asked > sleep {
                    let capped = if asked > sleep {
                        format!(
                            " (the server asked for {:.0} s; capped by max_wait)",
                            asked.as_secs_f64()
                        )
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "prefflow: model {}: {last}; waiting {:.1} s on the server before attempt {} of {attempts}{capped}",
                        self.name,
                        sleep.as_secs_f64(),
                        attempt + 2,
                    );
                }
                tokio::time::sleep(sleep).await;
            }
        }
        Err(RemoteError::Exhausted { attempts, last })
    }

    /// Full jitter: uniform in [0, min(30 s, base x 2^attempt)].
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .settings
            .backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(Duration::from_secs(30));
        // xorshift: enough randomness to spread retries, no dependency.
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.store(x, Ordering::Relaxed);
        cap.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Runs every request at once (admission decides how many are in flight). Each request names
/// its row, and a row may have several (the samples of `ai_generate_n`): a row's answers are
/// in its requests' order. Applies the model's `on_error`: the query fails naming the row
/// (`label` is asked only then), or the row is NULL, all its answers dropped, with its error
/// noted under `'record'` (`row_errors.rs`), as are every row's attempts.
pub async fn each_row<T, Fut>(
    function: &str,
    remote: &RemoteModel,
    rows: usize,
    requests: Vec<(usize, Fut)>,
    label: impl Fn(usize) -> String,
) -> datafusion::common::Result<Vec<Option<Vec<T>>>>
where
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    let running = requests.into_iter().map(|(row, f)| async move {
        let (attempts, answer) = crate::row_errors::counting_attempts(f).await;
        crate::row_errors::row_attempts(row, attempts);
        (row, answer)
    });
    let answers = futures::future::join_all(running).await;
    let mut out: Vec<Option<Vec<T>>> = (0..rows).map(|_| None).collect();
    let mut failed = vec![false; rows];
    for (row, answer) in answers {
        match answer {
            Ok(v) if !failed[row] => out[row].get_or_insert_with(Vec::new).push(v),
            Ok(_) => {}
            Err(e) if remote.settings.on_error != OnError::Error => {
                if !failed[row] {
                    crate::call_stats::record_failed(1, &e.to_string());
                    crate::row_errors::row_failed(row, &e.to_string());
                }
                failed[row] = true;
                out[row] = None;
            }
            Err(e) => {
                return Err(datafusion::common::DataFusionError::Execution(format!(
                    "{function}: model '{}' at {}: {}: {e}",
                    remote.name,
                    remote.address(),
                    label(row)
                )));
            }
        }
    }
    Ok(out)
}

/// The message of an error answer (`{"error": {"message": ...}}`, `{"error": "..."}`, or the
/// text itself), at most 200 characters.
fn server_message(body: &str) -> String {
    let parsed = serde_json::from_str::<Value>(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("message"))
                .or_else(|| v.get("detail"))
        })
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body.trim().to_string());
    message.chars().take(200).collect()
}

/// `http://HOST:PORT` of `http://HOST:PORT/v1`.
fn server_root(base: &str) -> &str {
    base.strip_suffix("/v1").unwrap_or(base)
}

/// A request path as a user reads it: `/v1/completions`, `/tokenize`.
fn shown_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/v1/{path}")
    }
}

/// A reqwest error as a short message: its kind, or the chain of causes.
fn plain(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        let mut s = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(inner) = source {
            s = format!("{s}: {inner}");
            source = inner.source();
        }
        s
    }
}

/// What to send: chat messages or a raw completion prompt.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// `[{role, content}, ...]`.
    Messages(Value),
    /// A raw prompt.
    Text(String),
}

/// The OpenAI API's names for generation options; `seed` is the sample's own seed.
fn fill(body: &mut Value, options: &GenerateParams, seed: u64) {
    body["temperature"] = json!(options.temperature);
    body["max_tokens"] = json!(options.max_tokens);
    // Servers take a signed 64-bit seed.
    body["seed"] = json!(seed & (i64::MAX as u64));
    if let Some(p) = options.top_p {
        body["top_p"] = json!(p);
    }
    // vLLM and llama.cpp take top_k.
    if let Some(k) = options.top_k {
        body["top_k"] = json!(k);
    }
    if !options.stop.is_empty() {
        body["stop"] = json!(options.stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_values_are_bounded() {
        assert_eq!(retry_after_seconds(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after_seconds("1e300"),
            Some(Duration::from_secs(86_400))
        );
        for bad in [
            "NaN",
            "nan",
            "inf",
            "-inf",
            "-1",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "",
        ] {
            assert_eq!(retry_after_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("m", "openai://127.0.0.1:8000/v1/Qwen/Qwen2.5-7B").unwrap(),
            (
                "http://127.0.0.1:8000/v1".to_string(),
                "Qwen/Qwen2.5-7B".to_string()
            )
        );
        assert_eq!(
            parse_address("m", "openai+https://api.example.org/v1/gpt-x")
                .unwrap()
                .0,
            "https://api.example.org/v1"
        );
        assert!(parse_address("m", "openai://host/gpt").is_err());
        assert!(parse_address("m", "openai://host/v1/").is_err());
    }
}

//! The endpoints of one remote model: every base address (`FROM` and the `endpoints` option)
//! with every API key variable (`api_key_env`, one or several). Each endpoint has its own
//! admission controller (the `concurrency` cap applies per endpoint), its own rate limits and
//! its own health.
//!
//! A request goes to the least-loaded healthy endpoint with a free place and budget. An
//! endpoint that fails [`FAILURES_TO_REST`] times in a row (no connection, 5xx, a timeout) is
//! rested for a second, doubling per rest up to a minute, and then tried again by the next
//! request; an answer makes it healthy again. While every endpoint rests, requests still go
//! out (to the one whose rest ends first), so a run whose servers are all gone ends through its
//! retries instead of waiting.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::admission::{Admission, Gauge, Ticket};
use super::rate_limit::RateLimits;

/// Failures in a row that rest an endpoint.
pub const FAILURES_TO_REST: u32 = 3;

/// The longest rest.
const LONGEST_REST: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Health {
    failures_in_a_row: u32,
    rests: u32,
    rested_until: Option<Instant>,
}

/// One (base address, API key variable) pair.
#[derive(Debug)]
pub struct Endpoint {
    /// `http://HOST:PORT/v1`.
    pub base: String,
    /// The variable holding this endpoint's key.
    pub key_env: Option<String>,
    admission: Admission,
    limits: Mutex<RateLimits>,
    health: Mutex<Health>,
}

impl Endpoint {
    fn rested(&self, now: Instant) -> Option<Instant> {
        self.health
            .lock()
            .expect("health lock")
            .rested_until
            .filter(|&t| t > now)
    }
}

/// Every endpoint of a model.
#[derive(Debug)]
pub struct Pool {
    endpoints: Vec<Endpoint>,
    freed: Arc<Notify>,
    waited: Mutex<Duration>,
}

/// Settings shared by a model's endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The cap on requests in flight per endpoint.
    pub concurrency: usize,
    /// Requests a minute per endpoint.
    pub requests_per_minute: Option<f64>,
    /// Tokens (request and answer) a minute per endpoint.
    pub tokens_per_minute: Option<f64>,
}

/// A request's endpoint and place in flight; say how it went with one of its methods
/// (dropping it says nothing of the server: a 4xx, a parse error).
#[derive(Debug)]
pub struct Lease<'a> {
    /// Where the request goes.
    pub endpoint: &'a Endpoint,
    ticket: Option<Ticket<'a>>,
    estimate: f64,
}

impl Pool {
    /// Every `bases` x `keys` pair (no key: one endpoint per base).
    pub fn new(bases: &[String], keys: &[String], limits: Limits) -> Self {
        let freed = Arc::new(Notify::new());
        let keys: Vec<Option<String>> = if keys.is_empty() {
            vec![None]
        } else {
            keys.iter().cloned().map(Some).collect()
        };
        let endpoints = bases
            .iter()
            .flat_map(|base| keys.iter().map(move |key| (base, key)))
            .map(|(base, key)| Endpoint {
                base: base.clone(),
                key_env: key.clone(),
                admission: Admission::sharing(
                    limits.concurrency,
                    Arc::clone(&freed),
                    Some(super::admission::RAMP_STEP),
                ),
                limits: Mutex::new(RateLimits::new(
                    limits.requests_per_minute,
                    limits.tokens_per_minute,
                )),
                health: Mutex::new(Health::default()),
            })
            .collect();
        Self {
            endpoints,
            freed,
            waited: Mutex::new(Duration::ZERO),
        }
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Waits for an endpoint with a free place and the budget for one request of `tokens`
    /// (an estimate; 0 without a token limit).
    pub async fn acquire(&self, tokens: f64) -> Lease<'_> {
        let asked = Instant::now();
        loop {
            // Registered before the checks, so a release between them and the wait is seen.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let now = Instant::now();
            // (until when it rests, load, index): healthy ones (None) first, least loaded
            // first; rested ones by when their rest ends.
            let mut order: Vec<(Option<Instant>, f64, usize)> = self
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (e.rested(now), e.admission.load(), i))
                .collect();
            order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
            let all_rested = order.iter().all(|o| o.0.is_some());
            let mut budget_in: Option<Duration> = None;
            for &(rested, _, i) in &order {
                if rested.is_some() && !all_rested {
                    continue;
                }
                let endpoint = &self.endpoints[i];
                let mut limits = endpoint.limits.lock().expect("limits lock");
                // The budget is checked before a place is taken: a place taken and given back
                // would wake every waiting request for nothing.
                if let Err(wait) = limits.check(tokens, now) {
                    budget_in = Some(budget_in.map_or(wait, |w| w.min(wait)));
                    continue;
                }
                if let Some(ticket) = endpoint.admission.try_admit() {
                    limits.take(tokens, now);
                    *self.waited.lock().expect("wait lock") += asked.elapsed();
                    return Lease {
                        endpoint,
                        ticket: Some(ticket),
                        estimate: tokens,
                    };
                }
                if all_rested {
                    // One probe at a time while every endpoint rests.
                    break;
                }
            }
            // The start ramp may raise a target before any place frees.
            let growth = self
                .endpoints
                .iter()
                .filter_map(|e| e.admission.next_growth())
                .min();
            let wake = match (budget_in, growth) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match wake {
                Some(wait) => {
                    tokio::select! {
                        _ = freed => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => freed.await,
            }
        }
    }

    /// What the endpoints' controllers have seen, summed (the target: over every endpoint).
    pub fn gauge(&self) -> Gauge {
        let mut g = Gauge {
            target: 0,
            in_flight: 0,
            pushbacks: 0,
            waited: *self.waited.lock().expect("wait lock"),
        };
        for e in &self.endpoints {
            let one = e.admission.gauge();
            g.target += one.target;
            g.in_flight += one.in_flight;
            g.pushbacks += one.pushbacks;
        }
        g
    }
}

impl Lease<'_> {
    fn healthy(&self) {
        let mut h = self.endpoint.health.lock().expect("health lock");
        *h = Health::default();
    }

    /// The server answered (2xx): the target grows; `tokens` (the answer's usage, if any)
    /// replaces the estimate in the token budget.
    pub fn answered(mut self, tokens: Option<f64>) {
        if let Some(t) = self.ticket.take() {
            t.answered();
        }
        if let Some(used) = tokens {
            self.endpoint
                .limits
                .lock()
                .expect("limits lock")
                .settle_tokens(self.estimate, used, Instant::now());
        }
        self.healthy();
    }

    /// The server pushed back (429, 503): the target shrinks; the endpoint is alive.
    pub fn pushed_back(mut self) {
        if let Some(t) = self.ticket.take() {
            t.pushed_back();
        }
    }

    /// No usable answer: no connection, a 5xx, a timeout (`timed_out` also pushes the target
    /// down). Failures in a row rest the endpoint.
    pub fn failed(mut self, timed_out: bool) {
        if let Some(t) = self.ticket.take()
            && timed_out
        {
            t.pushed_back();
        }
        let mut h = self.endpoint.health.lock().expect("health lock");
        h.failures_in_a_row += 1;
        if h.failures_in_a_row >= FAILURES_TO_REST {
            let rest = Duration::from_secs(1)
                .saturating_mul(1 << h.rests.min(6))
                .min(LONGEST_REST);
            h.rested_until = Some(Instant::now() + rest);
            h.rests += 1;
            h.failures_in_a_row = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrency: usize) -> Limits {
        Limits {
            concurrency,
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }

    /// Requests spread over the least-loaded endpoints; a failing one is rested and the
    /// others take its requests; when every endpoint rests, requests still go out.
    #[tokio::test]
    async fn least_loaded_first_and_failing_endpoints_rest() {
        let pool = Pool::new(
            &["http://a/v1".to_string(), "http://b/v1".to_string()],
            &["K1".to_string(), "K2".to_string()],
            limits(8),
        );
        assert_eq!(pool.endpoints().len(), 4);
        let mut leases = Vec::new();
        for _ in 0..8 {
            leases.push(pool.acquire(0.0).await);
        }
        let mut per: std::collections::HashMap<(String, Option<String>), usize> =
            Default::default();
        for l in &leases {
            *per.entry((l.endpoint.base.clone(), l.endpoint.key_env.clone()))
                .or_default() += 1;
        }
        assert!(per.values().all(|&n| n == 2), "{per:?}");
        drop(leases);
        // Endpoint 0 fails three times in a row: rested; no request goes there.
        for _ in 0..FAILURES_TO_REST {
            let l = loop {
                let l = pool.acquire(0.0).await;
                if std::ptr::eq(l.endpoint, &pool.endpoints()[0]) {
                    break l;
                }
            };
            l.failed(false);
        }
        for _ in 0..20 {
            let l = pool.acquire(0.0).await;
            assert!(!std::ptr::eq(l.endpoint, &pool.endpoints()[0]));
            l.answered(None);
        }
        // Every endpoint rested: a request still goes out.
        let one = Pool::new(&["http://a/v1".to_string()], &[], limits(4));
        for _ in 0..FAILURES_TO_REST {
            one.acquire(0.0).await.failed(false);
        }
        let probe = tokio::time::timeout(Duration::from_secs(1), one.acquire(0.0))
            .await
            .expect("a probe goes out while every endpoint rests");
        probe.answered(None);
        assert!(one.endpoints()[0].rested(Instant::now()).is_none());
    }

    /// A rate-limited endpoint makes a request wait for its budget, and another endpoint with
    /// budget takes it instead.
    #[tokio::test]
    async fn the_budget_decides_where_and_when() {
        let pool = Pool::new(
            &["http://a/v1".to_string()],
            &["K1".to_string(), "K2".to_string()],
            Limits {
                concurrency: 64,
                requests_per_minute: Some(60.0),
                tokens_per_minute: None,
            },
        );
        // One request a second per key, two keys: two go at once, the third waits ~1 s.
        let t0 = Instant::now();
        let a = pool.acquire(0.0).await;
        let b = pool.acquire(0.0).await;
        assert!(!std::ptr::eq(a.endpoint, b.endpoint));
        a.answered(None);
        b.answered(None);
        pool.acquire(0.0).await.answered(None);
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(pool.gauge().waited >= Duration::from_millis(900));
    }
}

//! Adaptive admission of requests to one server endpoint: how many requests may be in flight
//! adapts to what the server takes, between 1 and the model's `concurrency` cap.
//!
//! The controller is AIMD with a start ramp, as TCP's congestion control: the target starts at
//! [`START`] (or the cap, if lower) and grows by one per answered request while ramping (it
//! doubles each round trip), then by one per round trip (1 / target per answer) once the server
//! first pushed back. A push-back — 429, 503 or a timeout — multiplies the target by
//! [`DECREASE`], at most once per round: only a request admitted after the last decrease can
//! lower it again, so a burst of refusals from requests already in flight counts once. What a
//! Retry-After asks is honoured by the request that got it (see `remote.rs`), not by stopping
//! every other request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Where the target starts: high enough that a fast server is near its speed within a few
/// round trips, low enough that a small one refuses only one round's excess.
pub const START: usize = 64;

/// What a push-back multiplies the target by.
pub const DECREASE: f64 = 0.75;

#[derive(Debug)]
struct State {
    target: f64,
    in_flight: usize,
    ramping: bool,
    /// Bumped at each decrease; a request remembers the round it was admitted in.
    round: u64,
    pushbacks: u64,
    waited: Duration,
}

/// The admission controller of one endpoint.
#[derive(Debug)]
pub struct Admission {
    cap: usize,
    state: std::sync::Mutex<State>,
    /// Notified when a request leaves; shared by the endpoints of one model, so a request
    /// waiting for any of them wakes when one frees a place.
    freed: Arc<Notify>,
}

/// What an admission controller has seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gauge {
    /// The current in-flight target.
    pub target: usize,
    /// Requests in flight now.
    pub in_flight: usize,
    /// 429 / 503 / timeout answers so far.
    pub pushbacks: u64,
    /// Time requests spent waiting to be admitted, summed.
    pub waited: Duration,
}

/// A request's place in flight; report how it went with [`Ticket::answered`] or
/// [`Ticket::pushed_back`] (dropping it says nothing of the server, e.g. a 4xx or a parse error).
#[derive(Debug)]
pub struct Ticket<'a> {
    admission: &'a Admission,
    round: u64,
}

impl Admission {
    /// A controller allowing at most `cap` requests in flight.
    pub fn new(cap: usize) -> Self {
        Self::sharing(cap, Arc::new(Notify::new()))
    }

    /// A controller that notifies `freed` when a request leaves.
    pub fn sharing(cap: usize, freed: Arc<Notify>) -> Self {
        let cap = cap.max(1);
        Self {
            cap,
            state: std::sync::Mutex::new(State {
                target: START.min(cap) as f64,
                in_flight: 0,
                ramping: true,
                round: 0,
                pushbacks: 0,
                waited: Duration::ZERO,
            }),
            freed,
        }
    }

    /// A place in flight if one is free now.
    pub fn try_admit(&self) -> Option<Ticket<'_>> {
        let mut s = self.state.lock().expect("admission lock");
        if s.in_flight < (s.target.floor() as usize).max(1) {
            s.in_flight += 1;
            Some(Ticket {
                admission: self,
                round: s.round,
            })
        } else {
            None
        }
    }

    /// How full the endpoint is: requests in flight over the target (below 1: a place is free).
    pub fn load(&self) -> f64 {
        let s = self.state.lock().expect("admission lock");
        s.in_flight as f64 / s.target.floor().max(1.0)
    }

    /// Waits until a request may go out (fewer in flight than the target).
    pub async fn admit(&self) -> Ticket<'_> {
        let asked = Instant::now();
        loop {
            // Registered before the check, so a release between the check and the wait is not
            // missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.state.lock().expect("admission lock");
                if s.in_flight < (s.target.floor() as usize).max(1) {
                    s.in_flight += 1;
                    s.waited += asked.elapsed();
                    return Ticket {
                        admission: self,
                        round: s.round,
                    };
                }
            }
            freed.await;
        }
    }

    /// What the controller has seen so far.
    pub fn gauge(&self) -> Gauge {
        let s = self.state.lock().expect("admission lock");
        Gauge {
            target: (s.target.floor() as usize).max(1),
            in_flight: s.in_flight,
            pushbacks: s.pushbacks,
            waited: s.waited,
        }
    }
}

impl Ticket<'_> {
    /// The server answered: the target grows.
    pub fn answered(self) {
        let mut s = self.admission.state.lock().expect("admission lock");
        let cap = self.admission.cap as f64;
        s.target = if s.ramping {
            (s.target + 1.0).min(cap)
        } else {
            (s.target + 1.0 / s.target).min(cap)
        };
    }

    /// The server pushed back (429, 503, a timeout): the target shrinks, once per round.
    pub fn pushed_back(self) {
        let mut s = self.admission.state.lock().expect("admission lock");
        s.pushbacks += 1;
        if self.round == s.round {
            s.target = (s.target * DECREASE).max(1.0);
            s.ramping = false;
            s.round += 1;
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.admission
            .state
            .lock()
            .expect("admission lock")
            .in_flight -= 1;
        self.admission.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ramp doubles per round, a push-back cuts the target once per round (not once per
    /// refused request), growth is then one per round, and the cap and the floor hold.
    #[tokio::test]
    async fn aimd_with_a_ramp_one_decrease_per_round() {
        let a = Admission::new(256);
        assert_eq!(a.gauge().target, 64);
        // A round of 64 answers: 128.
        for _ in 0..64 {
            a.admit().await.answered();
        }
        assert_eq!(a.gauge().target, 128);
        // 128 requests in flight, then 40 of them refused: one decrease.
        let tickets: Vec<_> = futures_collect(&a, 128).await;
        let mut tickets = tickets.into_iter();
        for t in tickets.by_ref().take(40) {
            t.pushed_back();
        }
        assert_eq!(a.gauge().target, 96);
        assert_eq!(a.gauge().pushbacks, 40);
        for t in tickets {
            t.answered();
        }
        // After the ramp: about one per round (88 answers at 96: not yet +1; 10 more: +1).
        assert_eq!(a.gauge().target, 96);
        for _ in 0..10 {
            a.admit().await.answered();
        }
        assert_eq!(a.gauge().target, 97);
        // A request admitted after the decrease can lower it again.
        a.admit().await.pushed_back();
        assert_eq!(a.gauge().target, 72);
        // The floor is 1, the cap is the cap.
        for _ in 0..40 {
            a.admit().await.pushed_back();
        }
        assert_eq!(a.gauge().target, 1);
        let small = Admission::new(3);
        assert_eq!(small.gauge().target, 3);
        for _ in 0..10 {
            small.admit().await.answered();
        }
        assert_eq!(small.gauge().target, 3);
        assert_eq!(small.gauge().in_flight, 0);
    }

    /// A waiting request goes out as soon as one in flight is done.
    #[tokio::test]
    async fn a_release_admits_the_next_request() {
        let a = std::sync::Arc::new(Admission::new(1));
        let first = a.admit().await;
        let b = std::sync::Arc::clone(&a);
        let waiting = tokio::spawn(async move {
            b.admit().await.answered();
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("admitted after the release")
            .unwrap();
        assert!(a.gauge().waited >= Duration::from_millis(15));
    }

    async fn futures_collect(a: &Admission, n: usize) -> Vec<Ticket<'_>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(a.admit().await);
        }
        v
    }
}

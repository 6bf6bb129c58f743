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

//!
//! Until the first answer or push-back comes back, the ramp is also clocked by time: the
//! target doubles every [`RAMP_STEP`] from the first request on. A server over its capacity
//! refuses at once, while one with room takes its whole latency to answer; clocked by answers
//! alone, a fast server would wait a full round trip at 64 and another at 128 (measured with
//! scripts/bench-remote, 3,000 rows at 0.25 s per answer: efficiency 0.86 clocked by answers,
//! 0.88 with a 100 ms step, 0.91 with 50 ms; the 64-slot server's refusals stay at 3.4%, as its
//! 429s come back at once). The price: a server whose refusals take longer than a step to come
//! back (a hosted API far away) may see up to the cap at once, refused once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// While nothing has come back yet, the target doubles this often.
pub const RAMP_STEP: Duration = Duration::from_millis(50);

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
    /// When the first request went out, while nothing has come back (the time-clocked ramp).
    unanswered_since: Option<Instant>,
    /// Something came back (an answer or a push-back): the ramp is clocked by answers.
    heard: bool,
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
    /// The time-clocked ramp's step (None: clocked by answers only).
    ramp_step: Option<Duration>,
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
    /// A controller allowing at most `cap` requests in flight, clocked by answers only.
    #[cfg(test)]
    pub fn new(cap: usize) -> Self {
        Self::sharing(cap, Arc::new(Notify::new()), None)
    }

    /// A controller that notifies `freed` when a request leaves, with a time-clocked start
    /// ramp of `ramp_step` (see the module's notes).
    pub fn sharing(cap: usize, freed: Arc<Notify>, ramp_step: Option<Duration>) -> Self {
        let cap = cap.max(1);
        Self {
            cap,
            state: std::sync::Mutex::new(State {
                target: START.min(cap) as f64,
                in_flight: 0,
                ramping: true,
                unanswered_since: None,
                heard: false,
                round: 0,
                pushbacks: 0,
                waited: Duration::ZERO,
            }),
            freed,
            ramp_step,
        }
    }

    /// The target now: the time-clocked ramp's while nothing has come back, if higher.
    fn target(&self, s: &State, now: Instant) -> f64 {
        match (self.ramp_step, s.unanswered_since) {
            (Some(step), Some(since)) => {
                let steps = now.saturating_duration_since(since).as_secs_f64() / step.as_secs_f64();
                let timed = START as f64 * 2f64.powi(steps.floor().min(30.0) as i32);
                s.target.max(timed.min(self.cap as f64))
            }
            _ => s.target,
        }
    }

    /// How long until the time-clocked ramp next raises the target (None: it will not).
    pub fn next_growth(&self) -> Option<Duration> {
        let s = self.state.lock().expect("admission lock");
        let (step, since) = (self.ramp_step?, s.unanswered_since?);
        let now = Instant::now();
        if self.target(&s, now) >= self.cap as f64 {
            return None;
        }
        let elapsed = now.saturating_duration_since(since);
        let k = (elapsed.as_nanos() / step.as_nanos().max(1)) as u32 + 1;
        Some((step * k).saturating_sub(elapsed))
    }

    /// Takes a place if the target allows one now.
    fn take(&self, s: &mut State) -> bool {
        let now = Instant::now();
        if s.in_flight < (self.target(s, now).floor() as usize).max(1) {
            if !s.heard && s.unanswered_since.is_none() {
                s.unanswered_since = Some(now);
            }
            s.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// A place in flight if one is free now.
    pub fn try_admit(&self) -> Option<Ticket<'_>> {
        let mut s = self.state.lock().expect("admission lock");
        if self.take(&mut s) {
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
        s.in_flight as f64 / self.target(&s, Instant::now()).floor().max(1.0)
    }

    /// Waits until a request may go out (fewer in flight than the target).
    // Requests wait in `endpoints::Pool::acquire`, over all of a model's endpoints.
    #[cfg(test)]
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
                if self.take(&mut s) {
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
            target: (self.target(&s, Instant::now()).floor() as usize).max(1),
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
        // The first answer ends the time-clocked ramp where it got to.
        s.target = self.admission.target(&s, Instant::now());
        s.unanswered_since = None;
        s.heard = true;
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
        s.target = self.admission.target(&s, Instant::now());
        s.unanswered_since = None;
        s.heard = true;
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

    /// Until something comes back, the target doubles every step (so a fast server is not
    /// kept at 64 for a whole round trip); the first answer ends that and keeps what it reached.
    #[tokio::test]
    async fn the_start_ramp_is_clocked_by_time_until_something_comes_back() {
        let step = Duration::from_millis(40);
        let a = Admission::sharing(256, Arc::new(Notify::new()), Some(step));
        let first = a.try_admit().expect("a place");
        assert_eq!(a.gauge().target, 64);
        assert!(a.next_growth().unwrap() <= step);
        tokio::time::sleep(step * 2 + Duration::from_millis(5)).await;
        assert!(a.gauge().target >= 256, "{:?}", a.gauge());
        assert_eq!(a.next_growth(), None, "at the cap");
        first.answered();
        // Clocked by answers from now on: time adds nothing.
        let b = Admission::sharing(1024, Arc::new(Notify::new()), Some(step));
        let t = b.try_admit().unwrap();
        tokio::time::sleep(step + Duration::from_millis(5)).await;
        t.answered();
        let reached = b.gauge().target;
        assert!((128..=200).contains(&reached), "{reached}");
        tokio::time::sleep(step * 2).await;
        assert_eq!(b.gauge().target, reached);
        assert_eq!(b.next_growth(), None);
    }

    async fn futures_collect(a: &Admission, n: usize) -> Vec<Ticket<'_>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(a.admit().await);
        }
        v
    }
}

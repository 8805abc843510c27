//! The registry of calls: admission control (MAX_CALLS), one-time stream reservations, draining.
//! The only shared state besides the metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What `/incoming-call` learned about a call, kept until its stream starts.
#[derive(Debug, Clone)]
pub struct CallInfo {
    pub call_sid: String,
    pub account_sid: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Full,
    Draining,
}

struct Pending {
    info: CallInfo,
    nonce: String,
    admitted_at: Instant,
}

/// A call with a live stream, for /health and the supervisor page.
#[derive(Debug, Clone)]
pub struct ActiveCall {
    pub info: CallInfo,
    pub started: Instant,
}

pub struct Registry {
    max_calls: usize,
    pending_ttl: Duration,
    draining: AtomicBool,
    inner: Mutex<Inner>,
    /// Flips to true when every call must end now (drain deadline).
    end_all: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    active: HashMap<String, ActiveCall>,
}

impl Registry {
    pub fn new(max_calls: usize, pending_ttl: Duration) -> Registry {
        Registry {
            max_calls,
            pending_ttl,
            draining: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            end_all: watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a place for a new call. Pending reservations count against MAX_CALLS so two
    /// webhooks cannot both take the last place.
    pub fn admit(&self, info: CallInfo, nonce: String, now: Instant) -> Result<(), Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let mut inner = self.lock();
        let ttl = self.pending_ttl;
        inner.pending.retain(|_, p| now.duration_since(p.admitted_at) < ttl);
        let retry = inner.pending.contains_key(&info.call_sid);
        let used = inner.pending.len() + inner.active.len() - retry as usize;
        if self.max_calls > 0 && used >= self.max_calls {
            return Err(Refusal::Full);
        }
        // A retried webhook for the same call replaces its reservation (and token).
        inner.pending.insert(info.call_sid.clone(), Pending { info, nonce, admitted_at: now });
        Ok(())
    }

    /// Gives up a reservation (room creation failed).
    pub fn release(&self, call_sid: &str) {
        self.lock().pending.remove(call_sid);
    }

    /// Consumes the reservation whose token carried `nonce`, making the call active. A second
    /// stream with the same token finds nothing.
    pub fn activate(&self, call_sid: &str, nonce: &str, now: Instant) -> Option<CallInfo> {
        let mut inner = self.lock();
        let p = inner.pending.get(call_sid)?;
        if p.nonce != nonce || now.duration_since(p.admitted_at) >= self.pending_ttl {
            return None;
        }
        let p = inner.pending.remove(call_sid)?;
        inner.active.insert(call_sid.to_owned(), ActiveCall { info: p.info.clone(), started: now });
        Some(p.info)
    }

    pub fn finish(&self, call_sid: &str) {
        self.lock().active.remove(call_sid);
    }

    pub fn active_count(&self) -> usize {
        self.lock().active.len()
    }

    /// Whether a new Media Streams socket may be accepted at all.
    pub fn accepts_streams(&self) -> bool {
        !self.is_draining() && (self.max_calls == 0 || self.active_count() < self.max_calls)
    }

    pub fn active(&self) -> Vec<ActiveCall> {
        self.lock().active.values().cloned().collect()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn end_all(&self) {
        let _ = self.end_all.send(true);
    }

    pub fn end_all_signal(&self) -> watch::Receiver<bool> {
        self.end_all.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sid: &str) -> CallInfo {
        CallInfo { call_sid: sid.into(), account_sid: "AC".into(), from: "+1".into(), to: "+2".into() }
    }

    #[test]
    fn max_calls_counts_pending_and_active() {
        let r = Registry::new(2, Duration::from_secs(30));
        let t = Instant::now();
        r.admit(info("CA1"), "n1".into(), t).unwrap();
        r.admit(info("CA2"), "n2".into(), t).unwrap();
        assert_eq!(r.admit(info("CA3"), "n3".into(), t), Err(Refusal::Full));
        // A retry of an admitted call is not a new call.
        r.admit(info("CA2"), "n2b".into(), t).unwrap();
        assert!(r.activate("CA1", "n1", t).is_some());
        assert_eq!(r.admit(info("CA3"), "n3".into(), t), Err(Refusal::Full));
        r.finish("CA1");
        r.admit(info("CA3"), "n3".into(), t).unwrap();
    }

    #[test]
    fn reservations_are_one_time_and_expire() {
        let r = Registry::new(0, Duration::from_secs(30));
        let t = Instant::now();
        r.admit(info("CA1"), "n1".into(), t).unwrap();
        assert!(r.activate("CA1", "wrong", t).is_none());
        assert!(r.activate("CA1", "n1", t).is_some());
        assert!(r.activate("CA1", "n1", t).is_none(), "a token works once");
        r.admit(info("CA2"), "n2".into(), t).unwrap();
        assert!(r.activate("CA2", "n2", t + Duration::from_secs(31)).is_none());
        // Expired reservations stop counting against the limit.
        let r = Registry::new(1, Duration::from_secs(30));
        r.admit(info("CA1"), "n1".into(), t).unwrap();
        r.admit(info("CA2"), "n2".into(), t + Duration::from_secs(31)).unwrap();
    }

    #[test]
    fn draining_refuses_new_calls_and_streams() {
        let r = Registry::new(0, Duration::from_secs(30));
        assert!(r.accepts_streams());
        r.start_draining();
        assert_eq!(r.admit(info("CA1"), "n".into(), Instant::now()), Err(Refusal::Draining));
        assert!(!r.accepts_streams());
    }
}

//! The registry of calls: admission control (MAX_CALLS), one-time stream reservations, replay
//! refusal, the sockets still waiting for `start`, draining. The only shared state besides the
//! metrics.
//!
//! Places are handed out as guards ([`StreamSlot`], [`CallSlot`]) that give them back when
//! dropped, so no path — an error, an early return, a panic — can leak one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a CallSid is remembered after its webhook: a signed `/incoming-call` replayed within
/// this window is refused.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(3600);
/// Most CallSids remembered (~100 bytes each). Beyond it the oldest is forgotten early: at 28
/// new calls a second for an hour.
pub const REPLAY_MEMORY: usize = 100_000;
/// Sockets waiting for `start` when MAX_CALLS is unlimited.
pub const MAX_UNSTARTED_STREAMS: usize = 256;

/// Which way a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Twilio called the bridge (`/incoming-call`).
    Inbound,
    /// The bridge placed it (`CreateSIPParticipant`).
    Outbound,
}

/// What the bridge knows about a call: from `/incoming-call` (inbound) or the request that
/// placed it (outbound), kept until its stream starts and for its life.
#[derive(Clone)]
pub struct CallInfo {
    pub call_sid: String,
    pub account_sid: String,
    /// Twilio's `From` and `To`: for an outbound call `from` is our number.
    pub from: String,
    pub to: String,
    /// The room the phone participant joins, and its identity there.
    pub room: String,
    pub identity: String,
    pub direction: Direction,
}

impl CallInfo {
    /// An inbound call: room `call-<CallSid>`, identity `phone-<CallSid>`.
    pub fn inbound(call_sid: &str, account_sid: &str, from: &str, to: &str) -> CallInfo {
        CallInfo {
            call_sid: call_sid.to_owned(),
            account_sid: account_sid.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            room: crate::livekit::room_name(call_sid),
            identity: crate::livekit::phone_identity(call_sid),
            direction: Direction::Inbound,
        }
    }

    /// The number on the other end of the line (the caller, or whom we called).
    pub fn remote_number(&self) -> &str {
        match self.direction {
            Direction::Inbound => &self.from,
            Direction::Outbound => &self.to,
        }
    }

    /// Our number on this call (the one called, or our caller ID).
    pub fn our_number(&self) -> &str {
        match self.direction {
            Direction::Inbound => &self.to,
            Direction::Outbound => &self.from,
        }
    }

    /// What the stream token vouches for.
    pub fn description(&self) -> proto::stream_token::CallDescription<'_> {
        proto::stream_token::CallDescription {
            call_sid: &self.call_sid,
            account_sid: &self.account_sid,
            from: &self.from,
            to: &self.to,
            room: &self.room,
            identity: &self.identity,
            outbound: self.direction == Direction::Outbound,
        }
    }
}

impl std::fmt::Debug for CallInfo {
    // The caller's number is personal data: masked wherever a CallInfo is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use proto::redact::Masked;
        f.debug_struct("CallInfo")
            .field("call_sid", &self.call_sid)
            .field("account_sid", &self.account_sid)
            .field("from", &Masked(&self.from))
            .field("to", &Masked(&self.to))
            .field("room", &self.room)
            .field("direction", &self.direction)
            .finish()
    }
}

/// Why a stream with a good token is not carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivateRefusal {
    /// This CallSid already streamed (here): a replayed token.
    AlreadyStreamed,
    Full,
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Full,
    Draining,
    /// The CallSid is live or was seen within [`REPLAY_WINDOW`]: a replayed webhook.
    Replay,
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
    inner: Arc<Mutex<Inner>>,
    /// Flips to true when every call must end now (drain deadline).
    end_all: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    active: HashMap<String, ActiveCall>,
    /// Media Streams sockets accepted and not yet started (or refused).
    unstarted: usize,
    /// Outbound calls placed and not yet streaming (each holds a [`DialSlot`]).
    dialing: usize,
    /// CallSids whose webhook was answered here.
    seen: SeenCalls,
    /// CallSids that streamed here.
    streamed: SeenCalls,
}

/// CallSids seen recently, oldest first, bounded in time and count.
#[derive(Default)]
struct SeenCalls {
    order: VecDeque<(Instant, String)>,
    set: HashSet<String>,
}

impl SeenCalls {
    fn prune(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) < REPLAY_WINDOW && self.order.len() < REPLAY_MEMORY {
                break;
            }
            if let Some((_, sid)) = self.order.pop_front() {
                self.set.remove(&sid);
            }
        }
    }

    fn contains(&self, sid: &str) -> bool {
        self.set.contains(sid)
    }

    fn insert(&mut self, sid: &str, now: Instant) {
        if self.set.insert(sid.to_owned()) {
            self.order.push_back((now, sid.to_owned()));
        }
    }
}

impl Inner {
    fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A Media Streams socket's place until its `start` arrives; given back on drop.
pub struct StreamSlot {
    inner: Arc<Mutex<Inner>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut inner = Inner::lock(&self.inner);
        inner.unstarted = inner.unstarted.saturating_sub(1);
    }
}

/// An outbound call's place from the request until its stream starts (or it ends unanswered).
pub struct DialSlot {
    inner: Arc<Mutex<Inner>>,
    armed: bool,
}

impl Drop for DialSlot {
    fn drop(&mut self) {
        if self.armed {
            let mut inner = Inner::lock(&self.inner);
            inner.dialing = inner.dialing.saturating_sub(1);
        }
    }
}

/// An active call's place; the call leaves the registry when this is dropped.
pub struct CallSlot {
    inner: Arc<Mutex<Inner>>,
    pub info: CallInfo,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        Inner::lock(&self.inner).active.remove(&self.info.call_sid);
    }
}

impl Registry {
    pub fn new(max_calls: usize, pending_ttl: Duration) -> Registry {
        Registry {
            max_calls,
            pending_ttl,
            draining: AtomicBool::new(false),
            inner: Arc::new(Mutex::new(Inner::default())),
            end_all: watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        Inner::lock(&self.inner)
    }

    /// Reserves a place for a new call. Pending reservations count against MAX_CALLS so two
    /// webhooks cannot both take the last place. A CallSid that is pending, active or was seen
    /// within the replay window is refused: the real call is not disturbed.
    pub fn admit(&self, info: CallInfo, nonce: String, now: Instant) -> Result<(), Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let mut inner = self.lock();
        inner.seen.prune(now);
        let sid = info.call_sid.as_str();
        if inner.seen.contains(sid) || inner.pending.contains_key(sid) || inner.active.contains_key(sid) {
            return Err(Refusal::Replay);
        }
        // Expired reservations no longer count; they stay until `take_expired` hands their
        // rooms to the sweeper.
        let ttl = self.pending_ttl;
        let live_pending = inner.pending.values().filter(|p| now.duration_since(p.admitted_at) < ttl).count();
        let used = live_pending + inner.active.len() + inner.dialing;
        if self.max_calls > 0 && used >= self.max_calls {
            return Err(Refusal::Full);
        }
        inner.seen.insert(sid, now);
        inner.pending.insert(info.call_sid.clone(), Pending { info, nonce, admitted_at: now });
        Ok(())
    }

    /// A place for an outbound call being dialled; it counts against MAX_CALLS like a call.
    pub fn begin_dial(&self, now: Instant) -> Result<DialSlot, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let mut inner = self.lock();
        let ttl = self.pending_ttl;
        let live_pending = inner.pending.values().filter(|p| now.duration_since(p.admitted_at) < ttl).count();
        if self.max_calls > 0 && live_pending + inner.active.len() + inner.dialing >= self.max_calls {
            return Err(Refusal::Full);
        }
        inner.dialing += 1;
        Ok(DialSlot { inner: self.inner.clone(), armed: true })
    }

    /// A dialled call's stream started here: its dial place becomes the call's place (so a
    /// full bridge never refuses the stream of a call it placed). A CallSid streams once.
    pub fn activate_dialed(&self, info: CallInfo, mut dial: DialSlot, now: Instant) -> Result<CallSlot, ActivateRefusal> {
        let mut inner = self.lock();
        let sid = info.call_sid.clone();
        inner.streamed.prune(now);
        if inner.streamed.contains(&sid) || inner.active.contains_key(&sid) {
            return Err(ActivateRefusal::AlreadyStreamed);
        }
        dial.armed = false;
        inner.dialing = inner.dialing.saturating_sub(1);
        inner.streamed.insert(&sid, now);
        inner.active.insert(sid, ActiveCall { info: info.clone(), started: now });
        Ok(CallSlot { inner: self.inner.clone(), info })
    }

    /// Outbound calls being dialled.
    pub fn dialing_count(&self) -> usize {
        self.lock().dialing
    }

    /// Gives up a reservation (room creation failed).
    pub fn release(&self, call_sid: &str) {
        self.lock().pending.remove(call_sid);
    }

    /// Reservations whose stream never came, removed: the driver deletes their rooms.
    pub fn take_expired(&self, now: Instant) -> Vec<CallInfo> {
        let ttl = self.pending_ttl;
        let mut inner = self.lock();
        let expired: Vec<String> =
            inner.pending.iter().filter(|(_, p)| now.duration_since(p.admitted_at) >= ttl).map(|(k, _)| k.clone()).collect();
        expired.into_iter().filter_map(|sid| inner.pending.remove(&sid)).map(|p| p.info).collect()
    }

    /// A place for a socket until its `start` arrives. Unstarted sockets count against MAX_CALLS
    /// with the active calls (or against [`MAX_UNSTARTED_STREAMS`] when unlimited), so sockets
    /// that never send `start` cannot pile up.
    pub fn open_stream(&self) -> Option<StreamSlot> {
        if self.is_draining() {
            return None;
        }
        let mut inner = self.lock();
        let full = if self.max_calls > 0 {
            inner.active.len() + inner.unstarted >= self.max_calls
        } else {
            inner.unstarted >= MAX_UNSTARTED_STREAMS
        };
        if full {
            return None;
        }
        inner.unstarted += 1;
        Some(StreamSlot { inner: self.inner.clone() })
    }

    /// Makes a call active on this replica once its stream token checked out. The webhook may
    /// have been answered here (its reservation, which must carry the same nonce, is consumed)
    /// or by another replica (then this replica's MAX_CALLS decides). A CallSid streams once.
    pub fn activate(&self, info: CallInfo, nonce: &str, now: Instant) -> Result<CallSlot, ActivateRefusal> {
        let mut inner = self.lock();
        let sid = info.call_sid.clone();
        inner.streamed.prune(now);
        if inner.streamed.contains(&sid) || inner.active.contains_key(&sid) {
            return Err(ActivateRefusal::AlreadyStreamed);
        }
        match inner.pending.get(&sid) {
            Some(p) if p.nonce != nonce => return Err(ActivateRefusal::AlreadyStreamed),
            Some(_) => {
                inner.pending.remove(&sid);
            }
            None => {
                if self.is_draining() {
                    return Err(ActivateRefusal::Draining);
                }
                // The caller's socket is already counted among the unstarted; it becomes the call.
                if self.max_calls > 0 && inner.active.len() >= self.max_calls {
                    return Err(ActivateRefusal::Full);
                }
            }
        }
        inner.streamed.insert(&sid, now);
        inner.active.insert(sid, ActiveCall { info: info.clone(), started: now });
        Ok(CallSlot { inner: self.inner.clone(), info })
    }

    pub fn active_count(&self) -> usize {
        self.lock().active.len()
    }

    /// Calls admitted whose stream has not started.
    pub fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }

    /// Sockets open and waiting for `start`.
    pub fn unstarted_count(&self) -> usize {
        self.lock().unstarted
    }

    /// Whether a new call would be admitted at `now` (for `/ready`).
    pub fn accepts_calls(&self, now: Instant) -> bool {
        if self.is_draining() {
            return false;
        }
        let inner = self.lock();
        let ttl = self.pending_ttl;
        let live_pending = inner.pending.values().filter(|p| now.duration_since(p.admitted_at) < ttl).count();
        self.max_calls == 0 || live_pending + inner.active.len() + inner.dialing < self.max_calls
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
        CallInfo::inbound(sid, "AC", "+15550000001", "+2")
    }

    #[test]
    fn dialled_calls_count_against_the_limit_and_become_calls() {
        let r = Registry::new(2, Duration::from_secs(30));
        let t = Instant::now();
        let a = r.begin_dial(t).unwrap();
        let b = r.begin_dial(t).unwrap();
        assert!(r.begin_dial(t).is_err());
        assert_eq!(r.admit(info("CA9"), "n".into(), t), Err(Refusal::Full));
        assert!(!r.accepts_calls(t));
        drop(b); // not answered
        assert_eq!(r.dialing_count(), 1);
        let call = r.activate_dialed(info("CA1"), a, t).unwrap();
        assert_eq!((r.dialing_count(), r.active_count()), (0, 1));
        let again = r.begin_dial(t).unwrap();
        assert_eq!(r.activate_dialed(info("CA1"), again, t).err(), Some(ActivateRefusal::AlreadyStreamed));
        assert_eq!(r.dialing_count(), 0, "a refused stream gives its dial place back");
        drop(call);
        assert_eq!(r.active_count(), 0);
        r.start_draining();
        assert!(r.begin_dial(t).is_err());
    }

    #[test]
    fn max_calls_counts_pending_and_active() {
        let r = Registry::new(2, Duration::from_secs(30));
        let t = Instant::now();
        r.admit(info("CA1"), "n1".into(), t).unwrap();
        r.admit(info("CA2"), "n2".into(), t).unwrap();
        assert_eq!(r.admit(info("CA3"), "n3".into(), t), Err(Refusal::Full));
        assert!(!r.accepts_calls(t));
        let slot = r.activate(info("CA1"), "n1", t).unwrap();
        assert_eq!(r.admit(info("CA3"), "n3".into(), t), Err(Refusal::Full));
        drop(slot);
        assert_eq!(r.active_count(), 0);
        r.admit(info("CA3"), "n3".into(), t).unwrap();
    }

    #[test]
    fn reservations_are_one_time_and_expire() {
        let r = Registry::new(0, Duration::from_secs(30));
        let t = Instant::now();
        r.admit(info("CA1"), "n1".into(), t).unwrap();
        assert_eq!(r.activate(info("CA1"), "wrong", t).err(), Some(ActivateRefusal::AlreadyStreamed));
        let live = r.activate(info("CA1"), "n1", t).unwrap();
        assert_eq!(r.activate(info("CA1"), "n1", t).err(), Some(ActivateRefusal::AlreadyStreamed), "a token works once");
        drop(live);
        assert_eq!(r.activate(info("CA1"), "n1", t).err(), Some(ActivateRefusal::AlreadyStreamed), "even after the call");
        // Expired reservations stop counting against the limit, and are handed out for cleanup.
        let r = Registry::new(1, Duration::from_secs(30));
        r.admit(info("CA1"), "n1".into(), t).unwrap();
        let gone = r.take_expired(t + Duration::from_secs(31));
        assert_eq!(gone.iter().map(|i| i.call_sid.as_str()).collect::<Vec<_>>(), vec!["CA1"]);
        r.admit(info("CA2"), "n2".into(), t + Duration::from_secs(31)).unwrap();
    }

    #[test]
    fn replayed_webhooks_are_refused_for_an_hour_without_touching_the_call() {
        let r = Registry::new(0, Duration::from_secs(30));
        let t = Instant::now();
        r.admit(info("CA1"), "n1".into(), t).unwrap();
        // Replayed while pending: refused, and the original token still works.
        assert_eq!(r.admit(info("CA1"), "evil".into(), t), Err(Refusal::Replay));
        let live = r.activate(info("CA1"), "n1", t).unwrap();
        assert_eq!(r.admit(info("CA1"), "evil".into(), t + Duration::from_secs(60)), Err(Refusal::Replay));
        assert_eq!(r.active_count(), 1);
        drop(live);
        // Still refused after the call, until the window passes.
        assert_eq!(r.admit(info("CA1"), "evil".into(), t + Duration::from_secs(3599)), Err(Refusal::Replay));
        r.admit(info("CA1"), "n2".into(), t + Duration::from_secs(3601)).unwrap();
    }

    #[test]
    fn replay_memory_is_bounded() {
        let r = Registry::new(0, Duration::from_millis(1));
        let t = Instant::now();
        for i in 0..REPLAY_MEMORY + 10 {
            r.admit(info(&format!("CA{i}")), "n".into(), t).unwrap();
            if i % 1000 == 0 {
                r.take_expired(t + Duration::from_millis(2));
            }
        }
        r.admit(info("CAlast"), "n".into(), t).unwrap();
        let inner = r.lock();
        assert!(inner.seen.order.len() <= REPLAY_MEMORY && inner.seen.set.len() <= REPLAY_MEMORY);
    }

    #[test]
    fn unstarted_sockets_count_against_the_limit_and_come_back() {
        let r = Registry::new(2, Duration::from_secs(30));
        let t = Instant::now();
        let a = r.open_stream().unwrap();
        let b = r.open_stream().unwrap();
        assert!(r.open_stream().is_none(), "two silent sockets fill MAX_CALLS=2");
        drop(a);
        let c = r.open_stream().unwrap();
        r.admit(info("CA1"), "n1".into(), t).unwrap();
        let _call = r.activate(info("CA1"), "n1", t).unwrap();
        drop(b);
        assert!(r.open_stream().is_none(), "one active call + one unstarted socket");
        drop(c);
        assert_eq!(r.unstarted_count(), 0);
        let unlimited = Registry::new(0, Duration::from_secs(30));
        let held: Vec<_> = (0..MAX_UNSTARTED_STREAMS).map(|_| unlimited.open_stream().unwrap()).collect();
        assert!(unlimited.open_stream().is_none());
        drop(held);
        assert!(unlimited.open_stream().is_some());
    }

    #[test]
    fn a_stream_whose_webhook_another_replica_answered_is_carried_within_max_calls() {
        let r = Registry::new(1, Duration::from_secs(30));
        let t = Instant::now();
        let a = r.activate(info("CA1"), "n1", t).unwrap();
        assert_eq!(r.activate(info("CA2"), "n2", t).err(), Some(ActivateRefusal::Full));
        drop(a);
        let _b = r.activate(info("CA2"), "n2", t).unwrap();
        r.start_draining();
        assert_eq!(r.activate(info("CA3"), "n3", t).err(), Some(ActivateRefusal::Draining));
    }

    #[test]
    fn draining_refuses_new_calls_and_streams() {
        let r = Registry::new(0, Duration::from_secs(30));
        assert!(r.accepts_calls(Instant::now()));
        r.start_draining();
        assert_eq!(r.admit(info("CA1"), "n".into(), Instant::now()), Err(Refusal::Draining));
        assert!(r.open_stream().is_none());
        assert!(!r.accepts_calls(Instant::now()));
    }

    #[test]
    fn call_info_debug_masks_numbers() {
        let d = format!("{:?}", info("CA1"));
        assert!(d.contains("+1555***0001") && !d.contains("+15550000001"), "{d}");
    }
}

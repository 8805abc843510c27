//! What every bridge replica must agree on, so that Twilio's webhook can land on one replica and
//! its Media Stream on another: a CallSid's webhook is answered once (a replay is refused on any
//! replica) and a CallSid streams once (a replayed stream token is refused on any replica).
//!
//! Two backings, chosen by configuration:
//! - **LiveKit** (default; nothing more to run): the deployment's own truth. A webhook is a
//!   replay when a bridge already created the call's room (its metadata names the call); a stream is a replay when the call's phone
//!   participant is already in it. Not atomic: two copies racing within the same few
//!   milliseconds could both pass (LiveKit then keeps the newer phone participant).
//! - **Redis** (`REDIS_URL`): `SET NX` with an expiry, atomic across replicas.
//!
//! Each replica also remembers what it saw itself (the registry), so a single replica needs
//! neither.

use std::time::Duration;

use redis::aio::ConnectionManager;

use proto::outbound::ATTR_CALL_STATUS;

use crate::livekit::{phone_identity, room_name, LiveKit};
use crate::registry::{CallInfo, Direction};

/// A Redis or LiveKit answer takes at most this long (the caller is waiting).
const TIMEOUT: Duration = Duration::from_secs(2);
/// A webhook is remembered this long (as the registry does locally).
const WEBHOOK_TTL_SECS: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("LiveKit: {0}")]
    LiveKit(String),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
}

pub enum SharedState {
    LiveKit,
    Redis(ConnectionManager),
}

impl SharedState {
    /// Redis when a URL is given (connects now, so a wrong URL stops the bridge at start),
    /// else LiveKit.
    pub async fn connect(redis_url: Option<&str>) -> Result<SharedState, SharedStateError> {
        match redis_url {
            None => Ok(SharedState::LiveKit),
            Some(url) => {
                let client = redis::Client::open(url)?;
                let mgr = tokio::time::timeout(TIMEOUT * 5, ConnectionManager::new(client))
                    .await
                    .map_err(|_| SharedStateError::Timeout)??;
                Ok(SharedState::Redis(mgr))
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SharedState::LiveKit => "livekit",
            SharedState::Redis(_) => "redis",
        }
    }

    /// True the first time any replica answers this CallSid's webhook.
    pub async fn first_webhook(&self, lk: &LiveKit, call_sid: &str) -> Result<bool, SharedStateError> {
        match self {
            SharedState::LiveKit => Ok(!lk.call_room_created(call_sid).await.map_err(lk_err)?),
            SharedState::Redis(mgr) => set_nx(mgr, &format!("callbridge:webhook:{call_sid}"), WEBHOOK_TTL_SECS).await,
        }
    }

    /// True for the first stream of this call on any replica; `ttl` covers the longest call.
    /// With LiveKit, an outbound call's phone participant is already in the room while it
    /// rings: the stream is the first while that participant has not gone past `ringing`.
    pub async fn claim_stream(&self, lk: &LiveKit, info: &CallInfo, ttl: Duration) -> Result<bool, SharedStateError> {
        match (self, info.direction) {
            (SharedState::LiveKit, Direction::Inbound) => {
                Ok(!lk.participant_present(&info.room, &info.identity).await.map_err(lk_err)?)
            }
            (SharedState::LiveKit, Direction::Outbound) => {
                let p = lk.participant(&info.room, &info.identity).await.map_err(lk_err)?;
                Ok(p.is_none_or(|p| {
                    matches!(p.attributes.get(ATTR_CALL_STATUS).map(String::as_str), Some("dialing" | "ringing") | None)
                }))
            }
            (SharedState::Redis(mgr), _) => set_nx(mgr, &format!("callbridge:stream:{}", info.call_sid), ttl.as_secs().max(60)).await,
        }
    }

    /// Whether this CallSid's stream started on some replica (its room must then be left alone).
    pub async fn stream_started(&self, lk: &LiveKit, call_sid: &str) -> Result<bool, SharedStateError> {
        match self {
            SharedState::LiveKit => lk.participant_present(&room_name(call_sid), &phone_identity(call_sid)).await.map_err(lk_err),
            SharedState::Redis(mgr) => {
                let mut c = mgr.clone();
                let n: u32 = tokio::time::timeout(TIMEOUT, redis::cmd("EXISTS").arg(format!("callbridge:stream:{call_sid}")).query_async(&mut c))
                    .await
                    .map_err(|_| SharedStateError::Timeout)??;
                Ok(n > 0)
            }
        }
    }
}

fn lk_err(e: anyhow::Error) -> SharedStateError {
    SharedStateError::LiveKit(e.to_string())
}

/// `SET key 1 NX EX ttl`: true when this call set it.
async fn set_nx(mgr: &ConnectionManager, key: &str, ttl_secs: u64) -> Result<bool, SharedStateError> {
    let mut c = mgr.clone();
    let set: Option<String> = tokio::time::timeout(
        TIMEOUT,
        redis::cmd("SET").arg(key).arg(1).arg("NX").arg("EX").arg(ttl_secs).query_async(&mut c),
    )
    .await
    .map_err(|_| SharedStateError::Timeout)??;
    Ok(set.is_some())
}

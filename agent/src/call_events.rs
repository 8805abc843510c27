//! What a room event means for the call an agent is holding — one reading shared by the cascaded
//! ([`crate::session`]) and Realtime ([`crate::realtime_session`]) loops.

use proto::control::{Control, CONTROL_TOPIC};
use room::{RemoteAudioTrack, RoomEvent};

/// A room event, as the call sees it.
pub(crate) enum CallEvent {
    /// A bridge control message (`playback`, `dtmf`, …), parsed.
    Control(Control),
    /// The call is over: `caller_hung_up` or `room_closed`.
    Ended(&'static str),
    /// The caller's audio track was (re)published: decode this one from now on.
    CallerTrack(RemoteAudioTrack),
    /// Nothing for the call.
    Other,
}

/// Reads `ev` for the call with the phone participant `phone_id`.
pub(crate) fn classify(ev: RoomEvent, phone_id: &str) -> CallEvent {
    match ev {
        RoomEvent::DataReceived(m) if m.topic.as_deref() == Some(CONTROL_TOPIC) => match Control::parse(&m.payload) {
            Ok(c) => CallEvent::Control(c),
            Err(e) => {
                tracing::debug!(error = %e, "malformed control message ignored");
                CallEvent::Other
            }
        },
        RoomEvent::ParticipantDisconnected(p) if p.identity == phone_id => CallEvent::Ended("caller_hung_up"),
        // The caller's track was republished (e.g. the bridge reconnected).
        RoomEvent::TrackSubscribed { track, participant } if participant.identity == phone_id => {
            CallEvent::CallerTrack(track)
        }
        RoomEvent::AttributesChanged { participant, changed }
            if participant.identity == phone_id && changed.get("sip.callStatus").is_some_and(|v| v == "hangup") =>
        {
            CallEvent::Ended("caller_hung_up")
        }
        RoomEvent::Disconnected(r) => {
            tracing::info!(reason = ?r, "room disconnected");
            CallEvent::Ended("room_closed")
        }
        _ => CallEvent::Other,
    }
}

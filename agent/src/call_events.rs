//! What a room event means for the call an agent is holding.

use proto::control::{Control, CONTROL_TOPIC};
use room::{RemoteAudioTrack, RoomEvent};

use crate::conversation::{AnsweredBy, FinishReason};

/// The phone participant's attribute with Twilio's answering-machine verdict (set by the bridge).
pub(crate) const ANSWERED_BY: &str = "sip.twilio.answeredBy";

/// A room event, as the call sees it.
pub(crate) enum CallEvent {
    /// A control message (`playback`, `dtmf`, …), parsed, and who sent it.
    Control { from: String, control: Control },
    /// The call is over: the caller hung up, or the room closed.
    Ended(FinishReason),
    /// The caller's audio track was (re)published: decode this one from now on.
    CallerTrack(RemoteAudioTrack),
    /// Twilio's answering-machine verdict on the phone participant (`sip.twilio.answeredBy`).
    AnsweredBy(AnsweredBy),
    /// Nothing for the call.
    Other,
}

/// Reads `ev` for the call with the phone participant `phone_id`.
pub(crate) fn classify(ev: RoomEvent, phone_id: &str) -> CallEvent {
    match ev {
        RoomEvent::DataReceived(m) if m.topic.as_deref() == Some(CONTROL_TOPIC) => match Control::parse(&m.payload) {
            Ok(control) => CallEvent::Control { from: m.participant_identity, control },
            Err(e) => {
                tracing::debug!(error = %e, "malformed control message ignored");
                CallEvent::Other
            }
        },
        RoomEvent::ParticipantDisconnected(p) if p.identity == phone_id => CallEvent::Ended(FinishReason::CallerHungUp),
        // The caller's track was republished (e.g. the bridge reconnected).
        RoomEvent::TrackSubscribed { track, participant } if participant.identity == phone_id => CallEvent::CallerTrack(track),
        RoomEvent::AttributesChanged { participant, changed }
            if participant.identity == phone_id && changed.get("sip.callStatus").is_some_and(|v| v == "hangup") =>
        {
            CallEvent::Ended(FinishReason::CallerHungUp)
        }
        RoomEvent::AttributesChanged { participant, changed } if participant.identity == phone_id => {
            match changed.get(ANSWERED_BY).filter(|v| !v.is_empty()) {
                Some(v) => CallEvent::AnsweredBy(AnsweredBy::parse(v).unwrap_or(AnsweredBy::Unknown)),
                None => CallEvent::Other,
            }
        }
        RoomEvent::Disconnected(r) => {
            tracing::info!(reason = ?r, "room disconnected");
            CallEvent::Ended(FinishReason::RoomClosed)
        }
        _ => CallEvent::Other,
    }
}

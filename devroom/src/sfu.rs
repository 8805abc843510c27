//! The small SFU: drives every peer connection, forwards published media to the subscribers'
//! send-only m-lines, forwards LiveKit data packets between data channels, and renegotiates the
//! subscriber PCs when subscriptions change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use lk::signal_response::Message as Resp;
use prost::Message as _;
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind};
use str0m::{Event, IceConnectionState, Output};
use tokio::net::UdpSocket;

use crate::engine::{DownState, Engine, Participant, PENDING_RELIABLE_MAX};
use crate::peer::{DataKind, Peer, Role, SubscriberChange};

/// Upper bound of poll/handle rounds per wake-up (each round usually ends the loop).
const MAX_ROUNDS: usize = 64;

impl Engine {
    /// Polls every peer until it only has a timeout left, handling the events it produced.
    pub(crate) fn drive(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let mut events = Vec::new();
            let now = Instant::now();
            for p in self.parts.values_mut() {
                for peer in [&mut p.publisher, &mut p.subscriber] {
                    if peer.dirty || peer.next_timeout <= now {
                        poll_peer(&self.socket, &self.tcp_conns, peer, p.key, &mut events);
                    }
                }
            }
            let negotiated = self.negotiate_all();
            if events.is_empty() && !negotiated {
                return;
            }
            for (key, role, ev) in events {
                self.on_rtc_event(key, role, ev);
            }
        }
        // Still busy: make sure the loop comes straight back.
        let now = Instant::now();
        for p in self.parts.values_mut() {
            p.publisher.next_timeout = now;
            p.publisher.dirty = true;
            p.subscriber.dirty = true;
        }
    }

    fn on_rtc_event(&mut self, key: u64, role: Role, ev: Event) {
        match ev {
            Event::Connected => {
                if let Some(p) = self.parts.get_mut(&key) {
                    tracing::info!(identity = %p.info.identity, ?role, "peer connected");
                    peer_mut(p, role).connected = true;
                }
                self.mark_active(key);
            }
            Event::IceConnectionStateChange(state) => {
                if let Some(p) = self.parts.get(&key) {
                    tracing::debug!(identity = %p.info.identity, ?role, ?state, "ice state");
                    if state == IceConnectionState::Disconnected {
                        tracing::info!(identity = %p.info.identity, ?role, "ice disconnected");
                    }
                }
            }
            Event::MediaData(data) if role == Role::Publisher => self.forward_media(key, data),
            Event::ChannelOpen(id, label) => {
                let Some(p) = self.parts.get_mut(&key) else {
                    return;
                };
                let Some(kind) = DataKind::from_label(&label) else {
                    tracing::debug!(%label, "ignoring data channel");
                    return;
                };
                let peer = peer_mut(p, role);
                peer.channels.insert(id, kind);
                peer.open_channels.insert(kind, id);
                tracing::debug!(identity = %p.info.identity, ?role, %label, "data channel open");
                if role == Role::Subscriber && kind == DataKind::Reliable {
                    let pending: Vec<Arc<[u8]>> = p.pending_reliable.drain(..).collect();
                    for d in pending {
                        deliver_data(p, DataKind::Reliable, &d);
                    }
                }
            }
            Event::ChannelClose(id) => {
                if let Some(p) = self.parts.get_mut(&key) {
                    let peer = peer_mut(p, role);
                    if let Some(kind) = peer.channels.remove(&id) {
                        peer.open_channels.remove(&kind);
                    }
                }
            }
            Event::ChannelData(d) => {
                let kind = self
                    .parts
                    .get(&key)
                    .and_then(|p| peer_ref(p, role).channels.get(&d.id).copied());
                if let Some(kind) = kind {
                    self.on_data(key, kind, &d.data);
                }
            }
            Event::KeyframeRequest(req) => {
                if role != Role::Subscriber {
                    return;
                }
                let Some(src) = self.parts.get(&key).and_then(|p| {
                    p.down
                        .iter()
                        .find(|d| d.state == DownState::Open(req.mid))
                        .map(|d| (d.publisher, d.source_mid))
                }) else {
                    return;
                };
                if let Some(p) = self.parts.get_mut(&src.0) {
                    if let Some(mut w) = p.publisher.rtc.writer(src.1) {
                        let _ = w.request_keyframe(None, req.kind);
                    }
                    p.publisher.dirty = true;
                }
            }
            _ => {}
        }
    }

    fn mark_active(&mut self, key: u64) {
        let Some(p) = self.parts.get_mut(&key) else {
            return;
        };
        if p.info.state == lk::participant_info::State::Active {
            return;
        }
        p.info.state = lk::participant_info::State::Active;
        p.bump();
        let first = !p.joined_webhook_sent;
        p.joined_webhook_sent = true;
        let info = p.proto();
        let room = p.room.clone();
        self.broadcast_info(key, false);
        if first {
            self.webhooks
                .emit("participant_joined", self.room_proto(&room), Some(info), None);
        }
    }

    fn forward_media(&mut self, key: u64, data: MediaData) {
        let mid = data.mid.to_string();
        let Some((track_sid, live)) = self.parts.get(&key).and_then(|p| {
            p.tracks
                .iter()
                .find(|t| t.mid.as_deref() == Some(mid.as_str()))
                .map(|t| (t.sid.clone(), t.live))
        }) else {
            return;
        };
        if !live {
            // --publish-on-rtp: published on its first RTP packet (livekit-server up to 1.8.1).
            if let Some(t) = self.parts.get_mut(&key).and_then(|p| p.tracks.iter_mut().find(|t| t.sid == track_sid)) {
                t.live = true;
            }
            self.on_track_published(key, &track_sid);
        }
        let is_video = self
            .parts
            .get(&key)
            .and_then(|p| p.publisher.rtc.media(data.mid).map(|m| m.kind() == MediaKind::Video))
            .unwrap_or(false);
        if is_video && !data.contiguous {
            if let Some(p) = self.parts.get_mut(&key) {
                if let Some(mut w) = p.publisher.rtc.writer(data.mid) {
                    let _ = w.request_keyframe(data.rid, KeyframeRequestKind::Pli);
                }
                p.publisher.dirty = true;
            }
        }
        for other in self.others(key) {
            let Some(o) = self.parts.get_mut(&other) else {
                continue;
            };
            let Some(out_mid) = o.down.iter().find_map(|d| match d.state {
                DownState::Open(m) if d.publisher == key && d.track_sid == track_sid && !d.removed => Some(m),
                _ => None,
            }) else {
                continue;
            };
            o.subscriber.dirty = true;
            let Some(w) = o.subscriber.rtc.writer(out_mid) else {
                continue;
            };
            let Some(pt) = w.match_params(data.params) else {
                continue;
            };
            if let Err(e) = w.write(pt, data.network_time, data.time, data.data.clone()) {
                tracing::debug!(identity = %o.info.identity, error = %e, "media write failed");
            }
        }
    }

    /// A LiveKit `DataPacket` from `key`: stamp the sender as livekit-server does and forward it.
    pub(crate) fn on_data(&mut self, key: u64, kind: DataKind, bytes: &[u8]) {
        let Some(sender) = self.parts.get(&key) else {
            return;
        };
        if !sender.info.permission.can_publish_data {
            tracing::debug!(identity = %sender.info.identity, "data from participant without publish-data permission dropped");
            return;
        }
        let mut dp = match lk::DataPacket::decode(bytes) {
            Ok(dp) => dp,
            Err(e) => {
                tracing::warn!(identity = %sender.info.identity, error = %e, "undecodable data packet dropped");
                return;
            }
        };
        let hidden = sender.info.permission.hidden;
        let (sid, identity) = if hidden {
            (String::new(), String::new())
        } else {
            (sender.info.sid.clone(), sender.info.identity.clone())
        };
        dp.participant_sid = sender.info.sid.clone();
        dp.kind = kind.proto() as i32;
        let mut override_identity = true;
        match dp.value.as_mut() {
            Some(lk::data_packet::Value::User(u)) => {
                u.participant_sid = sid;
                u.participant_identity = identity.clone();
                if !dp.destination_identities.is_empty() {
                    u.destination_identities = dp.destination_identities.clone();
                } else {
                    dp.destination_identities = u.destination_identities.clone();
                }
                if dp.destination_identities.is_empty() && !u.destination_sids.is_empty() {
                    let sids = u.destination_sids.clone();
                    dp.destination_identities = self.identities_for_sids(key, &sids);
                }
            }
            Some(lk::data_packet::Value::Metrics(_)) => return,
            Some(lk::data_packet::Value::Transcription(_)) if sender.info.kind != lk::participant_info::Kind::Agent => {
                return
            }
            Some(lk::data_packet::Value::ChatMessage(_)) | Some(lk::data_packet::Value::StreamHeader(_))
                if sender.info.kind == lk::participant_info::Kind::Agent
                    && !dp.participant_identity.is_empty()
                    && dp.participant_identity != sender.info.identity =>
            {
                override_identity = false;
            }
            None => return,
            _ => {}
        }
        if override_identity {
            dp.participant_identity = identity;
        }
        let destinations = dp.destination_identities.clone();
        let encoded: Arc<[u8]> = dp.encode_to_vec().into();
        self.deliver_to(Some(key), &destinations, kind, &encoded);
    }

    fn identities_for_sids(&self, key: u64, sids: &[String]) -> Vec<String> {
        let mut all = self.others(key);
        all.push(key);
        all.iter()
            .filter_map(|k| self.parts.get(k))
            .filter(|p| sids.contains(&p.info.sid))
            .map(|p| p.info.identity.clone())
            .collect()
    }

    /// Delivers an encoded data packet in `from`'s room (or in `room` for server-sent data):
    /// to `destinations` if any, else to everyone but the sender.
    pub(crate) fn deliver_to(&mut self, from: Option<u64>, destinations: &[String], kind: DataKind, encoded: &Arc<[u8]>) {
        let Some(room) = from.and_then(|k| self.parts.get(&k)).map(|p| p.room.clone()) else {
            return;
        };
        self.deliver_in_room(&room, from, destinations, kind, encoded);
    }

    pub(crate) fn deliver_in_room(
        &mut self,
        room: &str,
        from: Option<u64>,
        destinations: &[String],
        kind: DataKind,
        encoded: &Arc<[u8]>,
    ) {
        let members = self.rooms.get(room).map(|r| r.members.clone()).unwrap_or_default();
        for k in members {
            if Some(k) == from {
                continue;
            }
            let Some(p) = self.parts.get_mut(&k) else {
                continue;
            };
            if !destinations.is_empty() && !destinations.contains(&p.info.identity) {
                continue;
            }
            deliver_data(p, kind, encoded);
        }
    }

    fn negotiate_all(&mut self) -> bool {
        let keys: Vec<u64> = self
            .parts
            .values()
            .filter(|p| p.sub_dirty && p.subscriber.pending.is_none() && p.doomed.is_none())
            .map(|p| p.key)
            .collect();
        let mut any = false;
        for key in keys {
            any |= self.negotiate_subscriber(key);
        }
        any
    }

    /// Sends a new subscriber offer for pending subscription changes (one offer in flight at a time).
    fn negotiate_subscriber(&mut self, key: u64) -> bool {
        let Some(p) = self.parts.get_mut(&key) else {
            return false;
        };
        p.sub_dirty = false;
        if !p.subscriber.rtc.is_alive() {
            return false;
        }
        p.down.retain(|d| !(d.removed && d.state == DownState::ToOpen));
        let add_idx: Vec<usize> = p
            .down
            .iter()
            .enumerate()
            .filter(|(_, d)| d.state == DownState::ToOpen)
            .map(|(i, _)| i)
            .collect();
        let stop: Vec<(usize, str0m::media::Mid)> = p
            .down
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d.state {
                DownState::Open(m) if d.removed => Some((i, m)),
                _ => None,
            })
            .collect();
        let change = SubscriberChange {
            add: add_idx
                .iter()
                .map(|&i| {
                    let d = &p.down[i];
                    (
                        format!("{}|{}", d.publisher_sid, d.track_sid),
                        d.track_sid.clone(),
                        d.kind,
                    )
                })
                .collect(),
            stop: stop.iter().map(|(_, m)| *m).collect(),
            data_channels: p.sub_needs_channels,
            ice_restart: std::mem::take(&mut p.sub_ice_restart),
        };
        if change.add.is_empty() && change.stop.is_empty() && !change.data_channels && !change.ice_restart {
            return false;
        }
        p.subscriber.dirty = true;
        let Some((sdp, mids)) = p.subscriber.create_subscriber_offer(&change) else {
            return false;
        };
        p.sub_needs_channels = false;
        for (i, mid) in add_idx.iter().zip(mids) {
            p.down[*i].state = DownState::Negotiating(mid);
        }
        for (i, m) in &stop {
            p.down[*i].state = DownState::NegotiatingStop(*m);
        }
        p.offer_id += 1;
        let mid_to_track_id = p
            .down
            .iter()
            .filter_map(|d| match d.state {
                DownState::Negotiating(m) | DownState::Open(m) => Some((m.to_string(), d.track_sid.clone())),
                _ => None,
            })
            .collect();
        tracing::debug!(identity = %p.info.identity, adds = change.add.len(), stops = change.stop.len(), "subscriber offer");
        let offer = lk::SessionDescription {
            r#type: "offer".into(),
            sdp: crate::peer::strip_candidates(&sdp),
            id: p.offer_id,
            mid_to_track_id,
        };
        p.subscriber_sdp = sdp;
        p.last_offer = Some(offer.clone());
        p.offer_sent_at = Some(Instant::now());
        p.send(Resp::Offer(offer));
        p.trickle_candidates(lk::SignalTarget::Subscriber);
        true
    }
}

fn peer_mut(p: &mut Participant, role: Role) -> &mut Peer {
    match role {
        Role::Publisher => &mut p.publisher,
        Role::Subscriber => &mut p.subscriber,
    }
}

fn peer_ref(p: &Participant, role: Role) -> &Peer {
    match role {
        Role::Publisher => &p.publisher,
        Role::Subscriber => &p.subscriber,
    }
}

/// Writes a data packet on the participant's subscriber channel of that kind. Reliable data
/// waiting for the channel is queued (bounded); a reliable channel that cannot take more marks
/// the participant as too slow.
pub(crate) fn deliver_data(p: &mut Participant, kind: DataKind, encoded: &Arc<[u8]>) {
    let channel = p.subscriber.open_channels.get(&kind).copied();
    let Some(id) = channel else {
        if kind == DataKind::Reliable {
            if p.pending_reliable.len() >= PENDING_RELIABLE_MAX {
                p.pending_reliable.pop_front();
                tracing::warn!(identity = %p.info.identity, "reliable data backlog full; oldest packet dropped");
            }
            p.pending_reliable.push_back(encoded.clone());
        }
        return;
    };
    p.subscriber.dirty = true;
    let Some(mut ch) = p.subscriber.rtc.channel(id) else {
        return;
    };
    match ch.write(true, encoded) {
        Ok(true) => {}
        Ok(false) if kind == DataKind::Reliable => {
            tracing::warn!(identity = %p.info.identity, "reliable data channel full: dropping slow participant");
            p.doom(lk::DisconnectReason::StateMismatch, true);
        }
        Ok(false) => tracing::debug!(identity = %p.info.identity, "lossy data dropped (channel full)"),
        Err(e) => tracing::debug!(identity = %p.info.identity, error = %e, "data channel write failed"),
    }
}

fn poll_peer(
    socket: &UdpSocket,
    tcp: &std::collections::HashMap<std::net::SocketAddr, tokio::sync::mpsc::Sender<Vec<u8>>>,
    peer: &mut Peer,
    key: u64,
    events: &mut Vec<(u64, Role, Event)>,
) {
    let far = Instant::now() + Duration::from_secs(3600);
    if !peer.rtc.is_alive() {
        peer.next_timeout = far;
        peer.dirty = false;
        return;
    }
    loop {
        match peer.rtc.poll_output() {
            // Under the fuzzer the remote candidates come from its input: send nothing anywhere.
            Ok(Output::Transmit(_)) if cfg!(fuzzing) => {}
            Ok(Output::Transmit(t)) if t.proto == str0m::net::Protocol::Udp => {
                if let Err(e) = socket.try_send_to(&t.contents, t.destination) {
                    tracing::trace!(error = %e, dest = %t.destination, "udp send failed");
                }
            }
            Ok(Output::Transmit(t)) => match tcp.get(&t.destination) {
                // A full queue drops the packet (a client that does not read), never blocks.
                Some(tx) => {
                    let _ = tx.try_send(t.contents.to_vec());
                }
                None => tracing::trace!(dest = %t.destination, "no ICE-TCP connection to that address; packet dropped"),
            },
            Ok(Output::Timeout(t)) => {
                peer.next_timeout = t;
                peer.dirty = false;
                return;
            }
            Ok(Output::Event(e)) => events.push((key, peer.role, e)),
            Err(e) => {
                tracing::warn!(role = ?peer.role, error = %e, "peer failed; disconnecting it");
                peer.rtc.disconnect();
                peer.next_timeout = far;
                peer.dirty = false;
                return;
            }
        }
    }
}

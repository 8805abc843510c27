//! RoomService operations, executed inside the engine task (the HTTP side is `twirp.rs`).

use std::sync::Arc;
use std::time::Instant;

use livekit_protocol as lk;
use lk::signal_response::Message as Resp;
use prost::Message as _;

use crate::engine::{Admin, Engine};
use crate::peer::DataKind;
use crate::room::Room;
use crate::twirp::ApiError;

fn room_not_found() -> ApiError {
    ApiError::not_found("requested room does not exist")
}

fn participant_not_found() -> ApiError {
    ApiError::not_found("participant does not exist")
}

impl Engine {
    pub(crate) fn on_admin(&mut self, cmd: Admin) {
        match cmd {
            Admin::CreateRoom(req, reply) => {
                let _ = reply.send(self.create_room(req));
            }
            Admin::DeleteRoom(name, reply) => {
                let res = if self.rooms.contains_key(&name) {
                    tracing::info!(room = %name, "room deleted via API");
                    self.close_room(&name, lk::DisconnectReason::RoomDeleted);
                    Ok(())
                } else {
                    Err(room_not_found())
                };
                let _ = reply.send(res);
            }
            Admin::ListRooms(names, reply) => {
                let mut rooms: Vec<lk::Room> = self
                    .rooms
                    .keys()
                    .filter(|n| names.is_empty() || names.contains(n))
                    .filter_map(|n| self.room_proto(n))
                    .collect();
                rooms.sort_by_key(|r| r.creation_time_ms);
                let _ = reply.send(Ok(rooms));
            }
            Admin::ListParticipants(room, reply) => {
                let res = match self.rooms.get(&room) {
                    None => Err(room_not_found()),
                    Some(r) => Ok(r
                        .members
                        .iter()
                        .filter_map(|k| self.parts.get(k))
                        .map(|p| p.proto())
                        .collect()),
                };
                let _ = reply.send(res);
            }
            Admin::GetParticipant(room, identity, reply) => {
                let res = self.participant_key(&room, &identity).map(|k| self.parts[&k].proto());
                let _ = reply.send(res);
            }
            Admin::RemoveParticipant(room, identity, reply) => {
                let res = self.participant_key(&room, &identity).map(|k| {
                    self.remove_participant(k, lk::DisconnectReason::ParticipantRemoved, true);
                });
                let _ = reply.send(res);
            }
            Admin::UpdateParticipant(req, reply) => {
                let _ = reply.send(self.update_participant(req));
            }
            Admin::MutePublishedTrack(req, reply) => {
                let _ = reply.send(self.mute_published_track(req));
            }
            Admin::UpdateRoomMetadata(room, metadata, reply) => {
                let res = match self.rooms.get_mut(&room) {
                    None => Err(room_not_found()),
                    Some(r) => {
                        r.metadata = metadata;
                        let members = r.members.clone();
                        let proto = self.room_proto(&room).expect("exists");
                        for k in members {
                            if let Some(p) = self.parts.get_mut(&k) {
                                p.send(Resp::RoomUpdate(lk::RoomUpdate {
                                    room: Some(proto.clone()),
                                }));
                            }
                        }
                        Ok(proto)
                    }
                };
                let _ = reply.send(res);
            }
            Admin::UpdateSubscriptions(req, reply) => {
                let res = self.participant_key(&req.room, &req.identity).map(|k| {
                    self.on_subscription(
                        k,
                        lk::UpdateSubscription {
                            track_sids: req.track_sids,
                            subscribe: req.subscribe,
                            participant_tracks: req.participant_tracks,
                        },
                    );
                });
                let _ = reply.send(res);
            }
            Admin::SendData(req, reply) => {
                let _ = reply.send(self.send_data(req));
            }
            Admin::CreateDispatch(req, reply) => {
                let _ = reply.send(self.create_dispatch(req));
            }
            Admin::ListDispatch(req, reply) => {
                let _ = reply.send(self.list_dispatch(req));
            }
            Admin::DeleteDispatch(req, reply) => {
                let _ = reply.send(self.delete_dispatch(req));
            }
        }
    }

    fn participant_key(&self, room: &str, identity: &str) -> Result<u64, ApiError> {
        if !self.rooms.contains_key(room) {
            return Err(room_not_found());
        }
        self.find_participant(room, identity)
            .ok_or_else(participant_not_found)
    }

    fn create_room(&mut self, req: lk::CreateRoomRequest) -> Result<lk::Room, ApiError> {
        self.create_room_with_agents(req).map(|(room, _)| room)
    }

    /// Creates the room unless it exists; a new room gets its agent dispatches (`req.agents`,
    /// or automatic dispatch when empty), whose ids are returned.
    pub(crate) fn create_room_with_agents(
        &mut self,
        req: lk::CreateRoomRequest,
    ) -> Result<(lk::Room, Vec<String>), ApiError> {
        let name = req.name.trim().to_string();
        if name.is_empty() {
            return Err(ApiError::invalid_argument("room name is required"));
        }
        if req.agents.len() > crate::dispatch::MAX_DISPATCHES_PER_ROOM {
            return Err(ApiError::invalid_argument(format!(
                "at most {} agents per room",
                crate::dispatch::MAX_DISPATCHES_PER_ROOM
            )));
        }
        let mut dispatches = Vec::new();
        if !self.rooms.contains_key(&name) {
            let empty = if req.empty_timeout > 0 {
                req.empty_timeout
            } else {
                self.cfg.empty_timeout
            };
            let departure = if req.departure_timeout > 0 {
                req.departure_timeout
            } else {
                self.cfg.departure_timeout
            };
            let mut room = Room::new(&name, empty, departure, Instant::now());
            room.max_participants = req.max_participants;
            room.metadata = req.metadata;
            room.g711 = !self.cfg.g711_off;
            tracing::info!(room = %name, sid = %room.sid, empty_timeout = empty, "room created via API");
            self.rooms.insert(name.clone(), room);
            let proto = self.room_proto(&name);
            self.webhooks.emit("room_started", proto, None, None);
            dispatches = self.dispatch_room_started(&name, &req.agents);
        }
        let room = self
            .room_proto(&name)
            .ok_or_else(|| ApiError::internal("room vanished"))?;
        Ok((room, dispatches))
    }

    fn update_participant(&mut self, req: lk::UpdateParticipantRequest) -> Result<lk::ParticipantInfo, ApiError> {
        let key = self.participant_key(&req.room, &req.identity)?;
        let p = self.parts.get_mut(&key).expect("found");
        if !req.metadata.is_empty() {
            p.info.metadata = req.metadata;
        }
        if !req.name.is_empty() {
            p.info.name = req.name;
        }
        p.info.merge_attributes(&req.attributes);
        if let Some(perm) = req.permission {
            p.info.permission.can_publish = perm.can_publish;
            p.info.permission.can_subscribe = perm.can_subscribe;
            p.info.permission.can_publish_data = perm.can_publish_data;
            p.info.permission.can_update_metadata = perm.can_update_metadata;
            p.info.permission.hidden = perm.hidden;
        }
        p.bump();
        let info = p.proto();
        self.broadcast_info(key, true);
        Ok(info)
    }

    fn mute_published_track(&mut self, req: lk::MuteRoomTrackRequest) -> Result<lk::TrackInfo, ApiError> {
        let key = self.participant_key(&req.room, &req.identity)?;
        let p = self.parts.get_mut(&key).expect("found");
        let Some(t) = p.tracks.iter_mut().find(|t| t.sid == req.track_sid) else {
            return Err(ApiError::not_found("track does not exist"));
        };
        t.muted = req.muted;
        let info = t.to_proto();
        p.send(Resp::Mute(lk::MuteTrackRequest {
            sid: req.track_sid,
            muted: req.muted,
        }));
        p.bump();
        self.broadcast_info(key, true);
        Ok(info)
    }

    fn send_data(&mut self, req: lk::SendDataRequest) -> Result<(), ApiError> {
        if !self.rooms.contains_key(&req.room) {
            return Err(room_not_found());
        }
        if !req.nonce.is_empty() && req.nonce.len() != 16 {
            return Err(ApiError::invalid_argument(format!(
                "nonce should be 16-bytes or not present, got: {} bytes",
                req.nonce.len()
            )));
        }
        let kind = if req.kind == lk::data_packet::Kind::Lossy as i32 {
            DataKind::Lossy
        } else {
            DataKind::Reliable
        };
        let mut destinations = req.destination_identities.clone();
        if !req.destination_sids.is_empty() {
            if let Some(r) = self.rooms.get(&req.room) {
                for k in &r.members {
                    if let Some(p) = self.parts.get(k) {
                        if req.destination_sids.contains(&p.info.sid) && !destinations.contains(&p.info.identity) {
                            destinations.push(p.info.identity.clone());
                        }
                    }
                }
            }
        }
        let dp = lk::DataPacket {
            kind: kind.proto() as i32,
            destination_identities: destinations.clone(),
            value: Some(lk::data_packet::Value::User(lk::UserPacket {
                payload: req.data,
                destination_identities: destinations.clone(),
                topic: req.topic,
                nonce: req.nonce,
                ..Default::default()
            })),
            ..Default::default()
        };
        let encoded: Arc<[u8]> = dp.encode_to_vec().into();
        self.deliver_in_room(&req.room, None, &destinations, kind, &encoded);
        Ok(())
    }
}

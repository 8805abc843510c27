//! Entry points for the fuzz targets in `fuzz/`; not an API. Each feeds bytes to the driver
//! exactly as the signalling socket or a data channel hands them over, on a driver built
//! without a server or sockets. Datagrams the peers produce are dropped, never sent: in a fuzz
//! input the remote ICE candidates are the fuzzer's choice.

use super::*;

const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);

/// A driver just after `join`, with its first publisher offer in flight (as after
/// `Room::connect`), so an `answer` in the input reaches the SDP parser.
fn joined(now: Instant) -> (Engine, mpsc::Receiver<RoomEvent>) {
    let local_info = proto::ParticipantInfo {
        sid: "PA_fuzzlocal".into(),
        identity: "phone-CA00000000000000000000000000000000".into(),
        version: 1,
        ..Default::default()
    };
    let join = proto::JoinResponse {
        participant: Some(local_info.clone()),
        room: Some(proto::Room { name: "call-fuzz".into(), sid: "RM_fuzz".into(), ..Default::default() }),
        ping_interval: 5,
        ping_timeout: 15,
        ..Default::default()
    };
    // No resume and no full reconnect: either would redial from a background task.
    let opts = RoomOptions { resume: false, full_reconnect: false, event_capacity: 64, local_ip: Some(LOCAL.ip()), ..Default::default() };
    let publisher = Peer::new(Role::Publisher, LOCAL, false, now).expect("a loopback host candidate is valid");
    let subscriber = Peer::new(Role::Subscriber, LOCAL, false, now).expect("a loopback host candidate is valid");
    let (events_tx, events_rx) = mpsc::channel(opts.event_capacity);
    let shared = Arc::new(Shared::new(&join, &local_info));
    let setup = EngineSetup { url: "ws://127.0.0.1:9".into(), token: String::new(), params: JoinParams::default(), opts, signal: None, tcp: TcpLinks::new().0 };
    // No TURN servers in a fuzz input's join: the relay links are never used.
    let relay = RelaySetup { links: RelayLinks::new().0, tls: None, relay_only: false, local_ip: LOCAL.ip() };
    let mut engine = Engine::new(setup, relay, &join, local_info, (publisher, subscriber), events_tx, shared, None, now);
    engine.on_join_participants(join.other_participants.clone());
    let _ = engine.publisher.create_offer(None, &[], false);
    (engine, events_rx)
}

/// What the run loop does after every wake-up, minus the sockets.
fn settle(engine: &mut Engine, events: &mut mpsc::Receiver<RoomEvent>, now: Instant) {
    engine.on_timer(now);
    engine.handle_peer_events();
    engine.publisher.transmits.clear();
    engine.subscriber.transmits.clear();
    while events.try_recv().is_ok() {}
}

fn frame_time(t0: Instant, i: usize) -> Instant {
    t0 + Duration::from_millis(20 * i as u64)
}

/// Binary signalling frames (`SignalResponse`), one per element, 20 ms apart.
pub fn signal_responses(frames: &[&[u8]]) {
    let t0 = Instant::now();
    let (mut engine, mut events) = joined(t0);
    for (i, frame) in frames.iter().enumerate() {
        let now = frame_time(t0, i);
        engine.on_signal_incoming(Incoming::from_binary(frame), now);
        settle(&mut engine, &mut events, now);
    }
    engine.finish(DisconnectReason::ClientInitiated);
}

/// SDP text of a server `offer` for the subscriber peer connection.
pub fn subscriber_offer(sdp: &str) {
    let now = Instant::now();
    let (mut engine, mut events) = joined(now);
    engine.on_offer(proto::SessionDescription { r#type: "offer".into(), sdp: sdp.into(), ..Default::default() });
    settle(&mut engine, &mut events, now);
}

/// SDP text of a server `answer` to the publisher's first offer.
pub fn publisher_answer(sdp: &str) {
    let now = Instant::now();
    let (mut engine, mut events) = joined(now);
    engine.on_answer(proto::SessionDescription { r#type: "answer".into(), sdp: sdp.into(), ..Default::default() });
    settle(&mut engine, &mut events, now);
}

/// `DataPacket` bytes from another participant; the first byte picks the channel it came on.
pub fn data_packets(frames: &[&[u8]]) {
    let now = Instant::now();
    let (mut engine, mut events) = joined(now);
    for frame in frames {
        let Some((&channel, bytes)) = frame.split_first() else { continue };
        let kind = if channel & 1 == 0 { DataKind::Reliable } else { DataKind::Lossy };
        engine.on_data(Some(kind), bytes);
        while events.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzz/room_signal: `pong_resp` with `last_ping_timestamp` = i64::MIN overflowed
    /// the RTT subtraction (a panic of the driver; garbage RTT in release builds).
    #[test]
    fn pong_for_a_ping_never_sent_is_not_a_round_trip() {
        let now = Instant::now();
        let (mut engine, _events) = joined(now);
        let pong = |ts| Response::PongResp(proto::Pong { last_ping_timestamp: ts, timestamp: 0 });
        for ts in [i64::MIN, i64::MAX, -1, 0, signal::now_ms() + 60_000] {
            engine.on_signal(pong(ts), now);
        }
        assert_eq!(engine.rtt_ms, 0);
        assert_eq!(engine.shared.counters.signal_malformed.load(Ordering::Relaxed), 5);
        engine.on_signal(pong(signal::now_ms() - 25), now);
        assert!((25..5_000).contains(&engine.rtt_ms), "rtt {}", engine.rtt_ms);
    }

    /// Every entry point takes garbage without panicking (the fuzz targets' smoke test).
    #[test]
    fn entry_points_take_garbage() {
        signal_responses(&[b"", b"\x0a\xff", b"\xa2\x01\x0b\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]);
        subscriber_offer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
        publisher_answer("");
        data_packets(&[b"\x00\x12\x03abc", b"\x01"]);
    }
}

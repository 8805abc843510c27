//! Calls where the clients reach devroom only through its embedded TURN server: both
//! participants use relayed candidates only (`IceTransportPolicy::Relay`, libwebrtc's
//! `iceTransportPolicy: "relay"`), so every packet of theirs goes client → TURN server → relay
//! socket → SFU and back. Over TURN/UDP and over TURN/TLS (the server's self-signed certificate
//! trusted as a private CA); each hears the other's tone. Without the CA the TLS relay is
//! refused and the join fails at once with a clear error. Build devroom first:
//! `cargo build -p devroom`.

mod common;

use std::time::Duration;

use common::{tone, Devroom};
use room::{AudioTrackOptions, IceTransportPolicy, RemoteAudioTrack, Room, RoomError, RoomEvent, RoomOptions};
use tokio::sync::mpsc;

async fn subscribed_to(rx: &mut mpsc::Receiver<RoomEvent>, who: &str) -> RemoteAudioTrack {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(RoomEvent::TrackSubscribed { track, participant })) if participant.identity == who => return track,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event stream ended while waiting for {who}'s track"),
            Err(_) => panic!("timed out waiting for {who}'s track"),
        }
    }
}

/// Hear `freq` on `track`: 3 s of audio, judged on the last second.
async fn hear(track: &RemoteAudioTrack, freq: f64) {
    common::hear_tone_on(&mut track.stream(8_000).unwrap(), freq, 3).await;
}

/// Publish a steady tone at `freq` (8 kHz) until the task is aborted.
async fn publish_tone(room: &Room, freq: f64) -> tokio::task::JoinHandle<()> {
    let mut sink = room.publish_audio(AudioTrackOptions { sample_rate: 8_000, ..Default::default() }).await.expect("publish");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for f in 0..(50 * 60) {
            tick.tick().await;
            if sink.push(&tone(freq, 8_000, f * 160, 160, 10_000.0)).await.is_err() {
                break;
            }
        }
    })
}

fn relay_only(ca_pem: Vec<u8>) -> RoomOptions {
    RoomOptions { ice_transport_policy: IceTransportPolicy::Relay, turn_tls_ca_pem: ca_pem, ..Default::default() }
}

/// Two relay-only participants talk through devroom started with `args`.
async fn call_through_turn(dev: &Devroom, room_name: &str, ca_pem: Vec<u8>) {
    let (alice, mut alice_ev) = Room::connect(&dev.url(), &dev.token(room_name, "alice"), relay_only(ca_pem.clone())).await.expect("alice joins through TURN");
    let (bob, mut bob_ev) = Room::connect(&dev.url(), &dev.token(room_name, "bob"), relay_only(ca_pem)).await.expect("bob joins through TURN");
    let alice_tone = publish_tone(&alice, 440.0).await;
    let bob_tone = publish_tone(&bob, 660.0).await;

    let from_alice = subscribed_to(&mut bob_ev, "alice").await;
    let from_bob = subscribed_to(&mut alice_ev, "bob").await;
    hear(&from_alice, 440.0).await;
    hear(&from_bob, 660.0).await;

    for (who, room) in [("alice", &alice), ("bob", &bob)] {
        let s = room.stats();
        eprintln!(
            "{who}: relays {} (failed {}), relayed packets out {} in {}, audio frames out {} in {}",
            s.relay_allocations, s.relay_failures, s.relay_packets_out, s.relay_packets_in, s.audio_frames_out, s.audio_frames_in
        );
        // One allocation per peer connection (publisher and subscriber).
        assert!(s.relay_allocations >= 2, "{who}: {} allocations", s.relay_allocations);
        assert_eq!(s.relay_failures, 0, "{who}");
        // Three seconds of 50 packet/s audio each way at least, all of it relayed.
        assert!(s.relay_packets_out >= 150, "{who}: {} packets out through TURN", s.relay_packets_out);
        assert!(s.relay_packets_in >= 150, "{who}: {} packets in through TURN", s.relay_packets_in);
        assert!(s.audio_frames_in >= 150, "{who}: {} audio frames in", s.audio_frames_in);
    }
    alice_tone.abort();
    bob_tone.abort();
    alice.close().await;
    bob.close().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// TURN over UDP (`turn:127.0.0.1:<port>?transport=udp`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_through_turn_over_udp() {
    common::init_tracing();
    let dev = Devroom::start_on(free_port(), &["--turn-port", "0"]).await;
    call_through_turn(&dev, "turn-udp", Vec::new()).await;
}

/// A temporary file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// devroom with TURN over TLS only (`turns:localhost:<port>?transport=tcp`) and its
/// self-signed certificate's PEM.
async fn devroom_with_turn_tls(tag: &str) -> (Devroom, Vec<u8>, TempFile) {
    let port = free_port();
    let cert = TempFile(std::env::temp_dir().join(format!("devroom-turn-{tag}-{}-{port}.pem", std::process::id())));
    let path = cert.0.to_str().unwrap().to_string();
    let dev = Devroom::start_on(port, &["--turn-tls-port", "0", "--turn-cert-out", &path]).await;
    // Written before devroom listens for HTTP.
    let pem = std::fs::read(&cert.0).expect("TURN certificate written");
    assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
    (dev, pem, cert)
}

/// TURN over TLS on TCP, the server's certificate checked against the configured CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_through_turn_over_tls() {
    common::init_tracing();
    let (dev, pem, _cert) = devroom_with_turn_tls("ok").await;
    call_through_turn(&dev, "turn-tls", pem).await;
}

/// A TURN/TLS server whose certificate is not trusted is refused: with relayed candidates
/// only, the join fails with `RoomError::Relay` well before the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_turn_certificate_fails_the_join() {
    common::init_tracing();
    let (dev, _pem, _cert) = devroom_with_turn_tls("untrusted").await;
    let options = RoomOptions { connect_timeout: Duration::from_secs(60), ..relay_only(Vec::new()) };
    let r = tokio::time::timeout(Duration::from_secs(30), Room::connect(&dev.url(), &dev.token("turn-bad", "alice"), options))
        .await
        .expect("the join fails instead of waiting for the connect timeout");
    match r {
        Err(RoomError::Relay(why)) => {
            eprintln!("refused: {why}");
            assert!(why.to_lowercase().contains("certificate") || why.contains("TLS") || why.contains("tls"), "{why}");
        }
        Err(e) => panic!("expected RoomError::Relay, got {e}"),
        Ok(_) => panic!("joined through an untrusted TURN server"),
    }
}

/// TURN offered but not forced: relays are gathered (as libwebrtc does) and ICE still picks the
/// direct UDP path (host candidates outrank relayed ones, RFC 8445 §5.1.2): the relays carry
/// connectivity checks only, never the call's audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_preferred_when_turn_is_offered() {
    common::init_tracing();
    let dev = Devroom::start_on(free_port(), &["--turn-port", "0"]).await;
    let (alice, _alice_ev) = Room::connect(&dev.url(), &dev.token("turn-direct", "alice"), RoomOptions::default()).await.expect("alice");
    let (bob, mut bob_ev) = Room::connect(&dev.url(), &dev.token("turn-direct", "bob"), RoomOptions::default()).await.expect("bob");
    let alice_tone = publish_tone(&alice, 440.0).await;
    let from_alice = subscribed_to(&mut bob_ev, "alice").await;
    hear(&from_alice, 440.0).await;
    for (who, room) in [("alice", &alice), ("bob", &bob)] {
        let s = room.stats();
        eprintln!(
            "{who}: relays {} (failed {}), relayed packets out {} in {}, datagrams out {} in {}, audio frames out {} in {}",
            s.relay_allocations, s.relay_failures, s.relay_packets_out, s.relay_packets_in, s.datagrams_out, s.datagrams_in, s.audio_frames_out, s.audio_frames_in
        );
        assert!(s.relay_allocations >= 2, "{who}: relays gathered even when not forced");
    }
    let (a, b) = (alice.stats(), bob.stats());
    // Three seconds of audio (150+ packets) went from alice to bob; only checks went by TURN.
    assert!(a.audio_frames_out >= 150 && b.audio_frames_in >= 150, "{} out, {} in", a.audio_frames_out, b.audio_frames_in);
    assert!(a.relay_packets_out < 40, "alice sent {} packets through TURN", a.relay_packets_out);
    assert!(b.relay_packets_in < 40, "bob got {} packets through TURN", b.relay_packets_in);
    alice_tone.abort();
    alice.close().await;
    bob.close().await;
}

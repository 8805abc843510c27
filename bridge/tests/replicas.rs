//! Bridges as stateless replicas behind a load balancer: two `bridge` processes with the same
//! environment and one LiveKit (devroom). Twilio's webhook lands on replica A, its Media Stream
//! on replica B; the call works both ways; the stream token is one-time across replicas; a
//! replayed webhook is refused by either; killing A does not disturb B's call. Run once with
//! LiveKit as the shared state and once with Redis (`REDIS_URL`, Debian's redis-server).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use room::RoomEvent;
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// The load balancer's address: Twilio signs every request over it, whichever replica gets it.
const PUBLIC_URL: &str = "https://bridge.example.com";

struct Replica {
    base: String,
    child: Child,
}

impl Replica {
    async fn start(livekit: &devroom::Running, redis: Option<&str>) -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bridge"));
        cmd.env("BRIDGE_LISTEN", format!("127.0.0.1:{port}"))
            .env("PUBLIC_URL", PUBLIC_URL)
            .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
            .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
            .env("TWILIO_API_BASE", "http://127.0.0.1:9")
            .env("LIVEKIT_URL", format!("ws://{}", livekit.http_addr))
            .env("LIVEKIT_API_KEY", "devkey")
            .env("LIVEKIT_API_SECRET", "secret")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(url) = redis {
            cmd.env("REDIS_URL", url);
        }
        let child = cmd.spawn().expect("bridge binary");
        let base = format!("http://127.0.0.1:{port}");
        let http = callsim::webhook::client(Duration::from_secs(2)).unwrap();
        for _ in 0..150 {
            if http.get(format!("{base}/health")).send().await.is_ok() {
                return Replica { base, child };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("replica at {base} did not come up");
    }

    async fn metrics(&self) -> String {
        let http = callsim::webhook::client(Duration::from_secs(5)).unwrap();
        http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }
}

/// A throwaway redis-server on a free port (None when Debian's redis-server is not installed,
/// unless BRIDGE_REQUIRE_REDIS=1 makes that a failure).
struct Redis {
    url: String,
    _child: Child,
}

async fn start_redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(std::env::var_os("BRIDGE_REQUIRE_REDIS").is_none(), "redis-server: {e}");
            eprintln!("skipping the Redis case: redis-server: {e}");
            return None;
        }
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Some(Redis { url: format!("redis://127.0.0.1:{port}/0"), _child: child });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not come up");
}

async fn media_frames(ws: &mut RawWs, n: usize, within: Duration) -> usize {
    let mut got = 0;
    let _ = timeout(within, async {
        while let Some(Ok(m)) = ws.next().await {
            if m.to_text().unwrap_or("").contains("\"media\"") {
                got += 1;
                if got >= n {
                    return;
                }
            }
        }
    })
    .await;
    got
}

/// Two seconds of the caller's 1 kHz voice, in real time, from chunk `first` (modulated: Opus
/// DTX takes a steady tone for background noise after about a second).
async fn speak(ws: &mut RawWs, twilio: &RawTwilio, first: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for c in first..first + 100 {
        tick.tick().await;
        let amp = 7000.0 + 3000.0 * ((c as f64) * 0.4).sin();
        let pcm = tone(1000.0, 8_000, (c as usize) * 160, 160, amp);
        let msg = twilio.media_msg(c, pcm.iter().map(|s| proto::g711::ulaw_encode(*s)).collect());
        ws.send(text(&msg)).await.unwrap();
    }
}

async fn webhook_on_a_stream_on_b(redis: Option<&str>, n: u32) {
    let lk = start_devroom().await;
    let mut a = Replica::start(&lk, redis).await;
    let b = Replica::start(&lk, redis).await;
    let sid = call_sid(400 + n);
    let (agent, mut events) = join(&lk, &format!("agent-{n}"), &format!("call-{sid}")).await;

    // The webhook goes to A; the stream to B.
    let on_a = RawTwilio::at(&a.base, PUBLIC_URL, &sid);
    let (status, body) = on_a.webhook().await;
    assert_eq!(status, 200, "{body}");
    let token = RawTwilio::token_from(&body);
    let on_b = on_a.to(&b.base);
    let mut ws = on_b.stream(&token).await;

    // Both ways: the agent hears the caller through B, the caller hears the agent.
    let (heard_tx, mut heard) = tokio::sync::mpsc::channel::<usize>(1000);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let RoomEvent::TrackSubscribed { track, participant } = ev {
                if participant.identity == format!("phone-{}", call_sid(400 + n)) {
                    let mut s = track.stream(8_000).unwrap();
                    let tx = heard_tx.clone();
                    tokio::spawn(async move {
                        while let Some(f) = s.recv().await {
                            let loud = f.samples.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / f.samples.len() as f64 > 1e5;
                            if tx.send(loud as usize).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        }
    });
    let voice = {
        let mut sink = agent.publish_audio(room::AudioTrackOptions { sample_rate: 8_000, ..Default::default() }).await.unwrap();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for k in 0..1500usize {
                tick.tick().await;
                let amp = 6000.0 + 2000.0 * ((k as f64) * 0.3).sin();
                if sink.push(&tone(440.0, 8_000, k * 160, 160, amp)).await.is_err() {
                    break;
                }
            }
        })
    };
    speak(&mut ws, &on_b, 1).await;
    let mut loud = 0;
    while let Ok(Some(l)) = timeout(Duration::from_millis(300), heard.recv()).await {
        loud += l;
    }
    assert!(loud >= 50, "the agent heard {loud} loud frames of the caller through replica B");
    assert!(media_frames(&mut ws, 50, Duration::from_secs(5)).await >= 50, "the caller hears the agent through B");

    // The same token again, on A and on B: refused.
    for (name, replica) in [("A", &on_a), ("B", &on_b)] {
        let mut again = replica.stream(&token).await;
        assert!(closed_by_server(&mut again, Duration::from_secs(5)).await, "a second stream on {name} is refused");
    }
    assert!(a.metrics().await.contains("bridge_errors_total{kind=\"stream_token_reused\"} 1"));
    assert!(b.metrics().await.contains("bridge_errors_total{kind=\"stream_token_reused\"} 1"));
    // The webhook replayed to either replica: refused.
    assert_eq!(on_a.webhook().await.0, 409);
    assert_eq!(on_b.webhook().await.0, 409);

    // A dies; B's call goes on both ways.
    a.child.start_kill().unwrap();
    let _ = a.child.wait().await;
    while heard.try_recv().is_ok() {}
    speak(&mut ws, &on_b, 101).await;
    let mut loud = 0;
    while let Ok(Some(l)) = timeout(Duration::from_millis(300), heard.recv()).await {
        loud += l;
    }
    assert!(loud >= 50, "after A died the agent heard {loud} loud frames");
    assert!(media_frames(&mut ws, 50, Duration::from_secs(5)).await >= 50, "after A died the caller still hears the agent");
    let m = b.metrics().await;
    assert!(m.contains("bridge_active_calls 1"), "{m}");

    ws.send(text(&on_b.stop_msg())).await.unwrap();
    assert!(closed_by_server(&mut ws, Duration::from_secs(5)).await);
    voice.abort();
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_calls_through_livekit() {
    webhook_on_a_stream_on_b(None, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_calls_through_redis() {
    let Some(redis) = start_redis().await else { return };
    webhook_on_a_stream_on_b(Some(&redis.url), 2).await;
}

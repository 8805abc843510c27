//! CPU and memory per audio track: str0m vs webrtc-rs.
//!
//! N peer pairs over loopback, each pair one DTLS-SRTP connection carrying one Opus-sized RTP
//! stream one way (`--mode oneway`: one published + one subscribed track per pair) or one each
//! way (`--mode both`). Payloads are pre-made 20 ms "Opus" frames of 60-80 bytes (the same list
//! for both stacks), sent every 20 ms, so no codec runs: what is measured is the stack (ICE
//! keepalives, SRTP, RTP/RTCP, its event loop) plus the pacing timer common to both.
//!
//! ```text
//! rtc-compare --stack str0m|webrtc --pairs N --seconds T [--mode oneway|both] [--warmup S]
//! ```
//! Prints one line of `key=value` figures: process CPU (utime+stime from /proc/self/stat) over
//! the measuring window, per stream; RSS growth per peer; packets received vs expected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Counters shared by every receiving end.
#[derive(Default)]
struct Counters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    connected: AtomicU64,
    /// str0m only: wake-ups because str0m's timeout expired (its own timers, not I/O).
    timer_wakeups: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    OneWay,
    Both,
}

struct Args {
    stack: String,
    pairs: usize,
    seconds: u64,
    warmup: u64,
    mode: Mode,
    threads: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { stack: String::new(), pairs: 10, seconds: 30, warmup: 3, mode: Mode::OneWay, threads: 2 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| anyhow!("{k} needs a value"));
        match k.as_str() {
            "--stack" => a.stack = v()?,
            "--pairs" => a.pairs = v()?.parse()?,
            "--seconds" => a.seconds = v()?.parse()?,
            "--warmup" => a.warmup = v()?.parse()?,
            "--threads" => a.threads = v()?.parse()?,
            "--mode" => {
                a.mode = match v()?.as_str() {
                    "oneway" => Mode::OneWay,
                    "both" => Mode::Both,
                    m => bail!("--mode oneway|both, not {m}"),
                }
            }
            "-h" | "--help" => {
                println!("rtc-compare --stack str0m|webrtc --pairs N --seconds T [--mode oneway|both] [--warmup S] [--threads W]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if a.stack != "str0m" && a.stack != "webrtc" {
        bail!("--stack str0m|webrtc");
    }
    Ok(a)
}

/// 50 distinct payloads, 60-80 bytes, first byte an Opus TOC (config 15: hybrid fullband 20 ms,
/// mono, one frame). Deterministic, identical for both stacks.
fn payloads() -> Vec<Arc<[u8]>> {
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    (0..50)
        .map(|_| {
            let len = 60 + (next() % 21) as usize;
            let mut p = vec![0x78u8];
            p.extend((1..len).map(|_| next() as u8));
            p.into()
        })
        .collect()
}

/// utime + stime of this process, from /proc/self/stat.
fn cpu_time() -> Duration {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // CLK_TCK is 100 on Linux (x86_64, aarch64).
    Duration::from_millis(ticks * 10)
}

/// A `VmRSS` / `Threads`-style field of /proc/self/status (kB for sizes).
fn status_field(name: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.split_whitespace().next().unwrap_or("0").parse().unwrap_or(0)))
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(",")
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let rss_base = status_field("VmRSS");
    let counters = Arc::new(Counters::default());
    let payloads = Arc::new(payloads());
    let load_start = loadavg();
    let t_setup = Instant::now();
    let keep: Box<dyn std::any::Any + Send> = match args.stack.as_str() {
        "str0m" => Box::new(str0m_side::start(args.pairs, args.mode, counters.clone(), payloads.clone()).await?),
        _ => Box::new(webrtc_side::start(args.pairs, args.mode, counters.clone(), payloads.clone()).await?),
    };
    let streams = args.pairs as u64 * if args.mode == Mode::Both { 2 } else { 1 };
    // Every peer connected and every stream flowing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.connected.load(Ordering::Relaxed) < 2 * args.pairs as u64 {
        if Instant::now() > deadline {
            bail!("only {} of {} peers connected", counters.connected.load(Ordering::Relaxed), 2 * args.pairs);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let setup = t_setup.elapsed();
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    let (c0, w0, p0, b0, o0) = (
        cpu_time(),
        Instant::now(),
        counters.packets_in.load(Ordering::Relaxed),
        counters.bytes_in.load(Ordering::Relaxed),
        counters.packets_out.load(Ordering::Relaxed),
    );
    let t0 = counters.timer_wakeups.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let timer_wakeups = counters.timer_wakeups.load(Ordering::Relaxed) - t0;
    let (c1, wall) = (cpu_time(), w0.elapsed());
    let received = counters.packets_in.load(Ordering::Relaxed) - p0;
    let bytes = counters.bytes_in.load(Ordering::Relaxed) - b0;
    let sent = counters.packets_out.load(Ordering::Relaxed) - o0;
    let rss = status_field("VmRSS");
    let threads = status_field("Threads");
    let load_end = loadavg();

    let cpu = (c1 - c0).as_secs_f64() / wall.as_secs_f64();
    let expected = streams as f64 * 50.0 * wall.as_secs_f64();
    println!(
        "stack={} mode={:?} pairs={} streams={} seconds={:.1} setup_s={:.1} cpu_cores={:.3} cpu_pct_per_stream={:.3} \
         rss_mb={:.1} rss_base_mb={:.1} rss_kb_per_peer={:.0} sent={} received={} expected={:.0} delivery_pct={:.2} \
         payload_bytes_avg={:.1} threads={} timer_wakeups_per_peer_s={} load_start={} load_end={}",
        args.stack,
        args.mode,
        args.pairs,
        streams,
        wall.as_secs_f64(),
        setup.as_secs_f64(),
        cpu,
        100.0 * cpu / streams as f64,
        rss as f64 / 1024.0,
        rss_base as f64 / 1024.0,
        rss.saturating_sub(rss_base) as f64 / (2 * args.pairs) as f64,
        sent,
        received,
        expected,
        100.0 * received as f64 / expected,
        bytes as f64 / received.max(1) as f64,
        threads,
        if args.stack == "str0m" {
            format!("{:.1}", timer_wakeups as f64 / (2 * args.pairs) as f64 / wall.as_secs_f64())
        } else {
            "n/a".to_string()
        },
        load_start,
        load_end,
    );
    drop(keep);
    Ok(())
}

/// Staggers the senders over one 20 ms period, the same way for both stacks.
fn send_offset(i: usize, n: usize) -> Duration {
    Duration::from_micros((20_000 * i / n.max(1)) as u64)
}

// -------------------------------------------------------------------------------------------
// str0m: sans-IO; one tokio task per peer owns its Rtc and its UDP socket (the room crate's
// driver model) and paces its own sending.
// -------------------------------------------------------------------------------------------
mod str0m_side {
    use super::*;
    use str0m::format::Codec;
    use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output, Rtc};
    use tokio::net::UdpSocket;
    use tokio::task::JoinHandle;

    pub struct Running(Vec<JoinHandle<()>>);

    impl Drop for Running {
        fn drop(&mut self) {
            for h in &self.0 {
                h.abort();
            }
        }
    }

    fn new_rtc(local: SocketAddr) -> Result<Rtc> {
        // As room/src/peer.rs configures it.
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .set_stats_interval(None)
            .set_reordering_size_audio(0)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, Protocol::Udp)?);
        Ok(rtc)
    }

    pub async fn start(pairs: usize, mode: Mode, counters: Arc<Counters>, payloads: Arc<Vec<Arc<[u8]>>>) -> Result<Running> {
        let mut tasks = Vec::new();
        for i in 0..pairs {
            let sa = UdpSocket::bind("127.0.0.1:0").await?;
            let sb = UdpSocket::bind("127.0.0.1:0").await?;
            let (la, lb) = (sa.local_addr()?, sb.local_addr()?);
            let mut a = new_rtc(la)?;
            let mut b = new_rtc(lb)?;
            let dir = if mode == Mode::Both { Direction::SendRecv } else { Direction::SendOnly };
            let mut api = a.sdp_api();
            let mid = api.add_media(MediaKind::Audio, dir, Some(format!("s{i}")), Some(format!("t{i}")), None);
            let (offer, pending) = api.apply().context("offer")?;
            let answer = b.sdp_api().accept_offer(offer).context("accept offer")?;
            a.sdp_api().accept_answer(pending, answer).context("accept answer")?;
            let off = send_offset(i, pairs);
            // One m-line (one mid) carries the stream; both ends write on it in `both` mode.
            tasks.push(tokio::spawn(peer(a, sa, la, Some(mid), off, counters.clone(), payloads.clone())));
            let b_mid = (mode == Mode::Both).then_some(mid);
            tasks.push(tokio::spawn(peer(b, sb, lb, b_mid, off + Duration::from_millis(10), counters.clone(), payloads.clone())));
        }
        Ok(Running(tasks))
    }

    async fn peer(
        mut rtc: Rtc,
        sock: UdpSocket,
        local: SocketAddr,
        send_mid: Option<Mid>,
        offset: Duration,
        counters: Arc<Counters>,
        payloads: Arc<Vec<Arc<[u8]>>>,
    ) {
        let mut buf = vec![0u8; 2000];
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_millis(20));
        let mut connected = false;
        let mut frame: u64 = 0;
        loop {
            // Drain until str0m only has a timeout left.
            let timeout = loop {
                match rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Transmit(t)) => {
                        let _ = sock.try_send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(e)) => match e {
                        Event::Connected => {
                            connected = true;
                            counters.connected.fetch_add(1, Ordering::Relaxed);
                        }
                        Event::MediaData(d) => {
                            counters.packets_in.fetch_add(1, Ordering::Relaxed);
                            counters.bytes_in.fetch_add(d.data.len() as u64, Ordering::Relaxed);
                        }
                        _ => {}
                    },
                    Err(e) => {
                        eprintln!("str0m peer failed: {e}");
                        return;
                    }
                }
            };
            let sleep_until = tokio::time::Instant::from_std(timeout.max(Instant::now()));
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, source)) = r else { continue };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: local, contents });
                    let _ = rtc.handle_input(input);
                }
                _ = tokio::time::sleep_until(sleep_until) => {
                    counters.timer_wakeups.fetch_add(1, Ordering::Relaxed);
                    let _ = rtc.handle_input(Input::Timeout(Instant::now()));
                }
                _ = tick.tick(), if connected && send_mid.is_some() => {
                    let Some(mid) = send_mid else { continue };
                    let Some(w) = rtc.writer(mid) else { continue };
                    let Some(pt) = w.payload_params().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt()) else { continue };
                    let data = payloads[(frame % payloads.len() as u64) as usize].clone();
                    let t = MediaTime::new(frame * 960, Frequency::FORTY_EIGHT_KHZ);
                    if w.write(pt, Instant::now(), t, data).is_ok() {
                        counters.packets_out.fetch_add(1, Ordering::Relaxed);
                    }
                    frame += 1;
                }
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// webrtc-rs 0.21: async API over its sans-IO `rtc` core; each PeerConnection runs its own
// driver task (sockets, timers). One pacing task per published track writes RTP packets.
// -------------------------------------------------------------------------------------------
mod webrtc_side {
    use super::*;
    use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
    use rtc::rtp_transceiver::rtp_sender::{
        RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    };
    use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
    use webrtc::media_stream::track_local::TrackLocal;
    use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
    use webrtc::media_stream::MediaStreamTrack;
    use webrtc::peer_connection::{
        register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
        RTCPeerConnectionState, Registry,
    };
    use tokio::sync::{mpsc, watch};
    use tokio::task::JoinHandle;

    pub struct Running {
        pcs: Vec<Arc<dyn PeerConnection>>,
        tasks: Vec<JoinHandle<()>>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            for t in &self.tasks {
                t.abort();
            }
            self.pcs.clear();
        }
    }

    struct Handler {
        counters: Arc<Counters>,
        gathered: mpsc::Sender<()>,
        connected: watch::Sender<bool>,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Handler {
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            if state == RTCIceGatheringState::Complete {
                let _ = self.gathered.try_send(());
            }
        }
        async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
            if state == RTCPeerConnectionState::Connected && !*self.connected.borrow() {
                self.counters.connected.fetch_add(1, Ordering::Relaxed);
                let _ = self.connected.send(true);
            }
        }
        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let counters = self.counters.clone();
            tokio::spawn(async move {
                while let Some(ev) = track.poll().await {
                    match ev {
                        TrackRemoteEvent::OnRtpPacket(p) => {
                            counters.packets_in.fetch_add(1, Ordering::Relaxed);
                            counters.bytes_in.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                        }
                        TrackRemoteEvent::OnEnded => break,
                        _ => {}
                    }
                }
            });
        }
    }

    fn opus() -> RTCRtpCodec {
        RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        }
    }

    async fn new_pc(counters: &Arc<Counters>) -> Result<(Arc<dyn PeerConnection>, mpsc::Receiver<()>, watch::Receiver<bool>)> {
        // Opus only, the default interceptors (NACK, TWCC receiver, RTCP reports): what an
        // application gets from the crate's defaults.
        let mut media = MediaEngine::default();
        media.register_codec(RTCRtpCodecParameters { rtp_codec: opus(), payload_type: 111 }, RtpCodecKind::Audio)?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let (gtx, grx) = mpsc::channel(1);
        let (ctx, crx) = watch::channel(false);
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler { counters: counters.clone(), gathered: gtx, connected: ctx }))
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await?;
        Ok((Arc::new(pc), grx, crx))
    }

    fn new_track(i: usize, side: &str, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
        Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("s{i}{side}"),
            format!("t{i}{side}"),
            format!("audio {i}{side}"),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec: opus(),
                ..Default::default()
            }],
        )))
    }

    async fn gathered_sdp(pc: &Arc<dyn PeerConnection>, rx: &mut mpsc::Receiver<()>) -> Result<webrtc::peer_connection::RTCSessionDescription> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.context("ICE gathering")?;
        pc.local_description().await.ok_or_else(|| anyhow!("no local description"))
    }

    /// Paces one track: an RTP packet every 20 ms once its peer is connected.
    async fn pace(
        track: Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        offset: Duration,
        mut connected: watch::Receiver<bool>,
        counters: Arc<Counters>,
        payloads: Arc<Vec<Arc<[u8]>>>,
    ) {
        let _ = connected.wait_for(|c| *c).await;
        let payloads: Vec<bytes::Bytes> = payloads.iter().map(|p| bytes::Bytes::copy_from_slice(p)).collect();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_millis(20));
        let mut frame: u64 = 0;
        loop {
            tick.tick().await;
            let pkt = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: frame as u16,
                    timestamp: (frame * 960) as u32,
                    ssrc,
                    marker: frame == 0,
                    ..Default::default()
                },
                payload: payloads[(frame % payloads.len() as u64) as usize].clone(),
            };
            if track.write_rtp(pkt).await.is_ok() {
                counters.packets_out.fetch_add(1, Ordering::Relaxed);
            }
            frame += 1;
        }
    }

    pub async fn start(pairs: usize, mode: Mode, counters: Arc<Counters>, payloads: Arc<Vec<Arc<[u8]>>>) -> Result<Running> {
        let mut running = Running { pcs: Vec::new(), tasks: Vec::new() };
        for i in 0..pairs {
            let (a, mut ga, ca) = new_pc(&counters).await?;
            let (b, mut gb, cb) = new_pc(&counters).await?;
            let ssrc_a = 0x1000_0000 + i as u32;
            let ssrc_b = 0x2000_0000 + i as u32;
            let ta = new_track(i, "a", ssrc_a);
            a.add_track(ta.clone() as Arc<dyn TrackLocal>).await?;
            let offer = a.create_offer(None).await?;
            a.set_local_description(offer).await?;
            let offer = gathered_sdp(&a, &mut ga).await?;
            b.set_remote_description(offer).await?;
            let tb = if mode == Mode::Both {
                let t = new_track(i, "b", ssrc_b);
                b.add_track(t.clone() as Arc<dyn TrackLocal>).await?;
                Some(t)
            } else {
                None
            };
            let answer = b.create_answer(None).await?;
            b.set_local_description(answer).await?;
            let answer = gathered_sdp(&b, &mut gb).await?;
            a.set_remote_description(answer).await?;
            let off = send_offset(i, pairs);
            running.tasks.push(tokio::spawn(pace(ta, ssrc_a, off, ca, counters.clone(), payloads.clone())));
            if let Some(tb) = tb {
                running.tasks.push(tokio::spawn(pace(tb, ssrc_b, off + Duration::from_millis(10), cb, counters.clone(), payloads.clone())));
            }
            running.pcs.push(a);
            running.pcs.push(b);
        }
        Ok(running)
    }
}

#!/usr/bin/env python3
"""Two (three) official LiveKit Python SDK participants against a devroom.

- "speaker" publishes a 440 Hz sine through rtc.AudioSource / LocalAudioTrack;
- "listener" subscribes, reads AudioStream frames and checks the dominant frequency
  (~440 Hz) and the level (well above silence);
- data packets go both ways (topic, destination_identities), and a third participant
  "bystander" must not receive the packet addressed to someone else;
- token claims (kind, attributes, metadata, name) must show up on the remote participant.

Prints one JSON line with the measurements; exit code 0 on success, 1 on failure,
77 when the `livekit` module is missing (the Rust test decides whether that is a skip).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time

try:
    import numpy as np
    from livekit import rtc
except ImportError as e:  # pragma: no cover - reported to the Rust harness
    print(json.dumps({"ok": False, "missing": str(e)}))
    sys.exit(77)

SAMPLE_RATE = 48000
FREQ = 440.0


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_token(key, secret, identity, room, **extra):
    now = int(time.time())
    claims = {
        "iss": key,
        "sub": identity,
        "nbf": now - 5,
        "exp": now + 600,
        "video": {"roomJoin": True, "room": room, "canPublish": True, "canSubscribe": True, "canPublishData": True},
    }
    claims.update(extra)
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


class Inbox:
    """Collects data packets received by one room."""

    def __init__(self, room: rtc.Room):
        self.items = []
        self.event = asyncio.Event()

        @room.on("data_received")
        def _on_data(pkt: rtc.DataPacket):
            sender = pkt.participant.identity if pkt.participant else None
            self.items.append({"data": pkt.data.decode(errors="replace"), "topic": pkt.topic, "from": sender})
            self.event.set()

    async def wait_for(self, data, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for it in self.items:
                if it["data"] == data:
                    return it
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), timeout=max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
        return None


async def run(args) -> dict:
    result = {"ok": False}
    url, key, secret, room_name = args.url, args.api_key, args.api_secret, args.room
    opts = rtc.RoomOptions(auto_subscribe=True)

    listener = rtc.Room()
    speaker = rtc.Room()
    bystander = rtc.Room()
    listener_inbox = Inbox(listener)
    speaker_inbox = Inbox(speaker)
    bystander_inbox = Inbox(bystander)

    samples = []
    got_audio = asyncio.Event()
    audio_tasks = []

    async def read_audio(track):
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        async for ev in stream:
            frame = ev.frame
            data = np.frombuffer(frame.data, dtype=np.int16)
            samples.append(data.copy())
            if sum(len(s) for s in samples) >= SAMPLE_RATE * args.seconds + SAMPLE_RATE:
                got_audio.set()
                break
        await stream.aclose()

    @listener.on("track_subscribed")
    def _on_track(track, publication, participant):
        result["subscribed_track"] = {"sid": publication.sid, "from": participant.identity, "kind": int(track.kind)}
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            audio_tasks.append(asyncio.ensure_future(read_audio(track)))

    t0 = time.monotonic()
    await listener.connect(url, make_token(key, secret, "listener", room_name, name="Listener"), opts)
    result["listener_connect_s"] = round(time.monotonic() - t0, 3)
    t0 = time.monotonic()
    await speaker.connect(
        url,
        make_token(
            key, secret, "speaker", room_name,
            name="Speaker", kind="sip", metadata="speaker-meta",
            attributes={"sip.phoneNumber": "+15550001111", "sip.callStatus": "active"},
        ),
        opts,
    )
    result["speaker_connect_s"] = round(time.monotonic() - t0, 3)
    await bystander.connect(url, make_token(key, secret, "bystander", room_name), opts)

    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("sine", source)
    pub = await speaker.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    )
    result["published_sid"] = pub.sid

    async def play():
        frame_len = SAMPLE_RATE // 100  # 10 ms
        n = 0
        total = int((args.seconds + 6) * 100)
        start = time.monotonic()
        for i in range(total):
            t = (np.arange(frame_len) + n) / SAMPLE_RATE
            pcm = (0.5 * 32767 * np.sin(2 * np.pi * FREQ * t)).astype(np.int16)
            n += frame_len
            frame = rtc.AudioFrame(pcm.tobytes(), SAMPLE_RATE, 1, frame_len)
            await source.capture_frame(frame)
            if got_audio.is_set():
                break
            # capture_frame paces itself; keep real time in case it does not.
            ahead = start + (i + 1) * 0.01 - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    player = asyncio.ensure_future(play())

    # Data, both directions, while audio flows.
    await asyncio.sleep(0.5)
    await speaker.local_participant.publish_data(b"hello-all", topic="greeting", reliable=True)
    await listener.local_participant.publish_data(
        b"for-speaker-only", topic="reply", reliable=True, destination_identities=["speaker"]
    )
    await speaker.local_participant.publish_data(b"lossy-hi", topic="lossy", reliable=False)

    got_hello = await listener_inbox.wait_for("hello-all", 10)
    got_reply = await speaker_inbox.wait_for("for-speaker-only", 10)
    bystander_hello = await bystander_inbox.wait_for("hello-all", 5)
    await asyncio.sleep(0.5)
    bystander_leak = [i for i in bystander_inbox.items if i["data"] == "for-speaker-only"]
    result["data"] = {
        "listener_got": got_hello,
        "speaker_got": got_reply,
        "bystander_got_broadcast": bystander_hello is not None,
        "bystander_leak": bystander_leak,
    }

    # Participant info as seen by the listener.
    remote = listener.remote_participants.get("speaker")
    if remote is not None:
        result["speaker_info"] = {
            "kind": int(remote.kind),
            "attributes": dict(remote.attributes),
            "metadata": remote.metadata,
            "name": remote.name,
            "sid": remote.sid,
        }

    try:
        await asyncio.wait_for(got_audio.wait(), timeout=args.timeout)
    except asyncio.TimeoutError:
        result["error"] = "timed out waiting for audio"
    player.cancel()

    if samples:
        pcm = np.concatenate(samples).astype(np.float64)
        # Skip the first second (jitter buffer warm-up / possible initial silence).
        pcm = pcm[SAMPLE_RATE:] if len(pcm) > 2 * SAMPLE_RATE else pcm
        rms = float(np.sqrt(np.mean(pcm ** 2)))
        spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
        freqs = np.fft.rfftfreq(len(pcm), 1.0 / SAMPLE_RATE)
        peak = float(freqs[int(np.argmax(spectrum[1:])) + 1])
        result["audio"] = {"samples": int(len(pcm)), "rms": round(rms, 1), "peak_hz": round(peak, 1)}

    checks = {
        "audio_peak_440": "audio" in result and abs(result["audio"]["peak_hz"] - FREQ) < 10,
        "audio_level": "audio" in result and result["audio"]["rms"] > 1000,
        "data_broadcast": bool(got_hello) and got_hello["from"] == "speaker" and got_hello["topic"] == "greeting",
        "data_targeted": bool(got_reply) and got_reply["from"] == "listener" and got_reply["topic"] == "reply",
        "data_broadcast_reaches_all": bystander_hello is not None,
        "data_destination_honoured": not bystander_leak,
        "participant_attributes": result.get("speaker_info", {}).get("attributes", {}).get("sip.phoneNumber") == "+15550001111",
        "participant_kind_sip": result.get("speaker_info", {}).get("kind") == int(rtc.ParticipantKind.PARTICIPANT_KIND_SIP),
        "participant_metadata": result.get("speaker_info", {}).get("metadata") == "speaker-meta",
    }
    result["checks"] = checks
    result["ok"] = all(checks.values())

    for t in audio_tasks:
        t.cancel()
    for r in (speaker, listener, bystander):
        await r.disconnect()
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="devkey")
    ap.add_argument("--api-secret", default="secret")
    ap.add_argument("--room", default="py-audio")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds of audio to analyse")
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    try:
        result = asyncio.run(asyncio.wait_for(run(args), timeout=args.timeout + 30))
    except Exception as e:  # report, do not hide
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An official LiveKit Python SDK (PyPI `livekit`, libwebrtc inside) participant for the `room`
interop test: publishes a sine tone, measures the tone of another participant, exchanges data.

Prints one JSON line; exit 0 on success, 77 when the livekit/numpy modules are missing.
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
except ImportError as e:  # pragma: no cover
    print(json.dumps({"ok": False, "missing": str(e)}))
    sys.exit(77)

RATE = 48000


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(key, secret, identity, room):
    now = int(time.time())
    claims = {"iss": key, "sub": identity, "nbf": now - 5, "exp": now + 600, "name": identity,
              "video": {"roomJoin": True, "room": room, "canPublish": True, "canSubscribe": True,
                        "canPublishData": True}}
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def analyse(pcm):
    pcm = pcm.astype(np.float64)
    spec = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    freqs = np.fft.rfftfreq(len(pcm), 1.0 / RATE)
    k = int(np.argmax(spec[1:])) + 1
    # Signal: the peak's neighbourhood (Hann main lobe); noise: everything else.
    sig = float(np.sum(spec[max(k - 3, 1):k + 4] ** 2))
    noise = float(np.sum(spec[1:] ** 2)) - sig
    return {"peak_hz": round(float(freqs[k]), 1), "rms": round(float(np.sqrt(np.mean(pcm ** 2))), 1),
            "snr_db": round(10 * np.log10(sig / max(noise, 1e-9)), 1)}


async def play_tone(source, freq, seconds):
    """A sine at `freq` into `source` for `seconds`, in real time (10 ms frames)."""
    n, start, frame = 0, time.monotonic(), RATE // 100
    for i in range(int(seconds * 100)):
        t = (np.arange(frame) + n) / RATE
        n += frame
        pcm = (0.4 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        await source.capture_frame(rtc.AudioFrame(pcm.tobytes(), RATE, 1, frame))
        ahead = start + (i + 1) * 0.01 - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)


async def run(a):
    room = rtc.Room()
    got = []
    data_event = asyncio.Event()

    @room.on("data_received")
    def _on_data(pkt):
        got.append({"data": pkt.data.decode(errors="replace"), "topic": pkt.topic,
                    "from": pkt.participant.identity if pkt.participant else None})
        data_event.set()

    track_fut = asyncio.get_event_loop().create_future()

    @room.on("track_subscribed")
    def _on_track(track, pub, participant):
        if participant.identity == a.measure_from and track.kind == rtc.TrackKind.KIND_AUDIO and not track_fut.done():
            track_fut.set_result(track)

    await room.connect(a.url, token(a.api_key, a.api_secret, a.identity, a.room), rtc.RoomOptions(auto_subscribe=True))
    for p in room.remote_participants.values():
        for pub in p.track_publications.values():
            if p.identity == a.measure_from and pub.track is not None and not track_fut.done():
                track_fut.set_result(pub.track)

    source = rtc.AudioSource(RATE, 1)
    local = rtc.LocalAudioTrack.create_audio_track("py-tone", source)
    await room.local_participant.publish_track(local, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))

    player = asyncio.ensure_future(play_tone(source, a.freq, a.seconds))
    result = {"ok": True, "sid": room.local_participant.sid}
    await room.local_participant.publish_data(b"hello from python", topic="py", reliable=True,
                                              destination_identities=[a.measure_from])
    track = await asyncio.wait_for(track_fut, timeout=20)
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
    chunks, total = [], 0
    async for ev in stream:
        chunks.append(np.frombuffer(ev.frame.data, dtype=np.int16).copy())
        total += len(chunks[-1])
        if total >= RATE * 2.5:
            break
    await stream.aclose()
    result["heard"] = analyse(np.concatenate(chunks)[RATE // 2:])
    try:
        await asyncio.wait_for(data_event.wait(), timeout=10)
    except asyncio.TimeoutError:
        pass
    result["received"] = got
    await player
    await room.disconnect()
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="devkey")
    ap.add_argument("--api-secret", default="secret")
    ap.add_argument("--room", required=True)
    ap.add_argument("--identity", default="py")
    ap.add_argument("--measure-from", required=True)
    ap.add_argument("--freq", type=float, default=440.0)
    ap.add_argument("--seconds", type=float, default=6.0)
    a = ap.parse_args()
    try:
        result = asyncio.run(asyncio.wait_for(run(a), timeout=a.seconds + 40))
    except Exception as e:  # noqa: BLE001
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()

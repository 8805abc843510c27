#!/usr/bin/env python3
"""Join a LiveKit room with the official Python SDK, publish a sine tone, leave.

Handy as a stand-in publisher when testing another client against devroom, e.g.:

    python3 devroom/tests/py/publish_tone.py --url ws://127.0.0.1:7880 --room demo --seconds 30

Prints one JSON line (joined sid, published track sid, data received); exit 0 on success,
77 if the livekit module is missing.
"""

import argparse
import asyncio
import json
import sys
import time

try:
    import numpy as np
    from livekit import rtc
except ImportError as e:  # pragma: no cover
    print(json.dumps({"ok": False, "missing": str(e)}))
    sys.exit(77)

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from audio_data import make_token  # noqa: E402  (same directory)

SAMPLE_RATE = 48000


async def measure(room, identity, seconds=1.5, skip=0.5):
    """Dominant frequency / RMS of `identity`'s audio track."""
    fut = asyncio.get_event_loop().create_future()

    def offer(track, participant):
        if participant.identity == identity and track.kind == rtc.TrackKind.KIND_AUDIO and not fut.done():
            fut.set_result(track)

    room.on("track_subscribed", lambda track, pub, participant: offer(track, participant))
    for p in room.remote_participants.values():
        for pub in p.track_publications.values():
            if pub.track is not None:
                offer(pub.track, p)
    track = await asyncio.wait_for(fut, timeout=20)
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    chunks, total = [], 0
    async for ev in stream:
        d = np.frombuffer(ev.frame.data, dtype=np.int16)
        chunks.append(d.copy())
        total += len(d)
        if total >= SAMPLE_RATE * (seconds + skip):
            break
    await stream.aclose()
    pcm = np.concatenate(chunks).astype(np.float64)[int(SAMPLE_RATE * skip):]
    spec = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    freqs = np.fft.rfftfreq(len(pcm), 1.0 / SAMPLE_RATE)
    return {"peak_hz": round(float(freqs[int(np.argmax(spec[1:])) + 1]), 1),
            "rms": round(float(np.sqrt(np.mean(pcm ** 2))), 1)}


async def run(args):
    room = rtc.Room()
    received = []

    @room.on("data_received")
    def _on_data(pkt):
        received.append({"data": pkt.data.decode(errors="replace"), "topic": pkt.topic,
                         "from": pkt.participant.identity if pkt.participant else None})

    extra = {"name": args.identity}
    if args.kind:
        extra["kind"] = args.kind
    if args.attributes:
        extra["attributes"] = json.loads(args.attributes)
    token = make_token(args.api_key, args.api_secret, args.identity, args.room, **extra)
    await room.connect(args.url, token, rtc.RoomOptions(auto_subscribe=True))
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    pub = await room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    if args.send_data:
        await room.local_participant.publish_data(args.send_data.encode(), topic="tone", reliable=True)

    async def play():
        frame_len = SAMPLE_RATE // 100
        n = 0
        start = time.monotonic()
        for i in range(int(args.seconds * 100)):
            t = (np.arange(frame_len) + n) / SAMPLE_RATE
            pcm = (0.5 * 32767 * np.sin(2 * np.pi * args.freq * t)).astype(np.int16)
            n += frame_len
            await source.capture_frame(rtc.AudioFrame(pcm.tobytes(), SAMPLE_RATE, 1, frame_len))
            ahead = start + (i + 1) * 0.01 - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    result = {"ok": True, "sid": room.local_participant.sid, "track_sid": pub.sid, "received": received}
    player = asyncio.ensure_future(play())
    if args.measure_from:
        result["heard"] = await measure(room, args.measure_from)
    await player
    await room.disconnect()
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="devkey")
    ap.add_argument("--api-secret", default="secret")
    ap.add_argument("--room", default="demo")
    ap.add_argument("--identity", default="tone")
    ap.add_argument("--kind", default="")
    ap.add_argument("--attributes", default="", help="JSON object of participant attributes")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--freq", type=float, default=440.0)
    ap.add_argument("--send-data", default="", help="publish this string on topic 'tone' after joining")
    ap.add_argument("--measure-from", default="", help="also measure the tone of this participant's audio")
    args = ap.parse_args()
    try:
        result = asyncio.run(asyncio.wait_for(run(args), timeout=args.seconds + 30))
    except Exception as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()

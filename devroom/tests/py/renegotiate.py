#!/usr/bin/env python3
"""Subscriber renegotiation with the official Python SDK against devroom.

1. "alice" joins and publishes 440 Hz before anyone else is there;
2. "bob" joins late: he must be subscribed to the existing track and hear 440 Hz;
3. alice unpublishes: bob gets track_unpublished;
4. alice publishes a new 880 Hz track: bob is subscribed again (new server offer) and hears 880 Hz;
5. alice leaves: bob gets participant_disconnected.

Prints one JSON line; exit 0 on success, 1 on failure, 77 if `livekit` is missing.
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
from audio_data import make_token  # noqa: E402

SR = 48000


class Tone:
    def __init__(self, freq):
        self.freq = freq
        self.source = rtc.AudioSource(SR, 1)
        self.track = rtc.LocalAudioTrack.create_audio_track(f"tone-{int(freq)}", self.source)
        self.task = None

    async def _run(self):
        n, fl = 0, SR // 100
        start = time.monotonic()
        i = 0
        while True:
            t = (np.arange(fl) + n) / SR
            pcm = (0.5 * 32767 * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)
            n += fl
            await self.source.capture_frame(rtc.AudioFrame(pcm.tobytes(), SR, 1, fl))
            i += 1
            ahead = start + i * 0.01 - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    def start(self):
        self.task = asyncio.ensure_future(self._run())

    def stop(self):
        if self.task:
            self.task.cancel()


async def listen(track, seconds=1.5, skip=0.5):
    """Dominant frequency and RMS of `seconds` of audio after `skip` seconds."""
    stream = rtc.AudioStream(track, sample_rate=SR, num_channels=1)
    chunks, total = [], 0
    async for ev in stream:
        d = np.frombuffer(ev.frame.data, dtype=np.int16)
        chunks.append(d.copy())
        total += len(d)
        if total >= SR * (seconds + skip):
            break
    await stream.aclose()
    pcm = np.concatenate(chunks).astype(np.float64)[int(SR * skip):]
    spec = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    freqs = np.fft.rfftfreq(len(pcm), 1.0 / SR)
    return {"peak_hz": round(float(freqs[int(np.argmax(spec[1:])) + 1]), 1),
            "rms": round(float(np.sqrt(np.mean(pcm ** 2))), 1)}


async def run(args):
    res = {"ok": False, "steps": {}}
    steps = res["steps"]
    key, secret, room_name = args.api_key, args.api_secret, args.room
    alice, bob = rtc.Room(), rtc.Room()
    events = asyncio.Queue()

    @bob.on("track_subscribed")
    def _sub(track, pub, participant):
        events.put_nowait(("subscribed", track, pub.sid, participant.identity))

    @bob.on("track_unpublished")
    def _unpub(pub, participant):
        events.put_nowait(("unpublished", None, pub.sid, participant.identity))

    @bob.on("participant_disconnected")
    def _gone(participant):
        events.put_nowait(("disconnected", None, None, participant.identity))

    async def expect(kind, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} event")
            ev = await asyncio.wait_for(events.get(), timeout=left)
            if ev[0] == kind:
                return ev

    await alice.connect(args.url, make_token(key, secret, "alice", room_name))
    t1 = Tone(440.0)
    t1.start()
    pub1 = await alice.local_participant.publish_track(
        t1.track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    await asyncio.sleep(0.5)

    await bob.connect(args.url, make_token(key, secret, "bob", room_name))
    _, track, sid, who = await expect("subscribed")
    a = await listen(track)
    steps["late_join"] = {"sid_matches": sid == pub1.sid, "from": who, **a}

    await alice.local_participant.unpublish_track(pub1.sid)
    t1.stop()
    _, _, sid, who = await expect("unpublished")
    steps["unpublish"] = {"sid_matches": sid == pub1.sid, "from": who}

    t2 = Tone(880.0)
    t2.start()
    pub2 = await alice.local_participant.publish_track(
        t2.track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    _, track2, sid, who = await expect("subscribed")
    b = await listen(track2)
    steps["republish"] = {"sid_matches": sid == pub2.sid, "new_sid": pub2.sid != pub1.sid, **b}

    await alice.disconnect()
    t2.stop()
    _, _, _, who = await expect("disconnected")
    steps["leave"] = {"who": who}
    await bob.disconnect()

    checks = {
        "late_join_hears_440": steps["late_join"]["sid_matches"] and abs(steps["late_join"]["peak_hz"] - 440) < 10
        and steps["late_join"]["rms"] > 1000,
        "unpublish_seen": steps["unpublish"]["sid_matches"] and steps["unpublish"]["from"] == "alice",
        "republish_hears_880": steps["republish"]["sid_matches"] and steps["republish"]["new_sid"]
        and abs(steps["republish"]["peak_hz"] - 880) < 10 and steps["republish"]["rms"] > 1000,
        "leave_seen": steps["leave"]["who"] == "alice",
    }
    res["checks"] = checks
    res["ok"] = all(checks.values())
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="devkey")
    ap.add_argument("--api-secret", default="secret")
    ap.add_argument("--room", default="py-reneg")
    args = ap.parse_args()
    try:
        result = asyncio.run(asyncio.wait_for(run(args), timeout=90))
    except BaseException as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()

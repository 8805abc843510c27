// @livekit/rtc-node participant for devroom's tests.
// Joins, publishes a sine tone, measures the tone of --listen-to's audio track (zero crossings),
// publishes/receives data. Prints one JSON line; exit 0 on success.
//
//   node rtc_node.mjs --url ws://127.0.0.1:7880 --token <jwt> --freq 523 --seconds 8 --listen-to python
import {
  AudioFrame,
  AudioSource,
  AudioStream,
  LocalAudioTrack,
  Room,
  RoomEvent,
  TrackKind,
  TrackPublishOptions,
  TrackSource,
  dispose,
} from '@livekit/rtc-node';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const SR = 48000;
const freq = Number(args.freq || 523);
const seconds = Number(args.seconds || 8);
const listenTo = args['listen-to'] || '';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function measure(track) {
  const stream = new AudioStream(track, SR, 1);
  const samples = [];
  let total = 0;
  for await (const frame of stream) {
    samples.push(Int16Array.from(frame.data));
    total += frame.data.length;
    if (total >= SR * 2) break;
  }
  const pcm = new Int16Array(total);
  let o = 0;
  for (const s of samples) {
    pcm.set(s, o);
    o += s.length;
  }
  const x = pcm.subarray(SR / 2); // skip warm-up
  let crossings = 0;
  let sq = 0;
  for (let i = 1; i < x.length; i++) {
    if ((x[i - 1] < 0 && x[i] >= 0) || (x[i - 1] >= 0 && x[i] < 0)) crossings++;
    sq += x[i] * x[i];
  }
  return { freq_hz: crossings / 2 / (x.length / SR), rms: Math.sqrt(sq / x.length) };
}

async function main() {
  const res = { ok: false, data: [] };
  const room = new Room();
  room.on(RoomEvent.DataReceived, (payload, participant, kind, topic) => {
    res.data.push({ text: new TextDecoder().decode(payload), from: participant ? participant.identity : null, topic });
  });
  let heard = null;
  room.on(RoomEvent.TrackSubscribed, (track, pub, participant) => {
    if (participant.identity === listenTo && track.kind === TrackKind.KIND_AUDIO && !heard) {
      heard = measure(track);
    }
  });
  await room.connect(args.url, args.token, { autoSubscribe: true, dynacast: false });
  res.sid = room.localParticipant.sid;
  console.log(`joined ${res.sid}`);

  const source = new AudioSource(SR, 1);
  const track = LocalAudioTrack.createAudioTrack('node-tone', source);
  const pub = await room.localParticipant.publishTrack(
    track,
    new TrackPublishOptions({ source: TrackSource.SOURCE_MICROPHONE }),
  );
  res.track_sid = pub.sid;

  const frameLen = SR / 100;
  let n = 0;
  const start = Date.now();
  let sentData = false;
  for (let i = 0; i < seconds * 100; i++) {
    const pcm = new Int16Array(frameLen);
    for (let k = 0; k < frameLen; k++) pcm[k] = Math.round(0.5 * 32767 * Math.sin((2 * Math.PI * freq * (n + k)) / SR));
    n += frameLen;
    await source.captureFrame(new AudioFrame(pcm, SR, 1, frameLen));
    if (!sentData && room.remoteParticipants.size > 0 && i > 100) {
      await room.localParticipant.publishData(new TextEncoder().encode('hello-from-node'), { reliable: true, topic: 'node' });
      sentData = true;
    }
    const ahead = start + (i + 1) * 10 - Date.now();
    if (ahead > 0) await sleep(ahead);
  }
  if (listenTo) res.heard = heard ? await heard : null;
  res.ok = true;
  await room.disconnect();
  return res;
}

let out;
try {
  out = await Promise.race([main(), sleep((seconds + 30) * 1000).then(() => ({ ok: false, error: 'timeout' }))]);
} catch (e) {
  out = { ok: false, error: String(e && e.stack ? e.stack : e) };
}
console.log(JSON.stringify(out));
await dispose().catch(() => {});
process.exit(out.ok ? 0 : 1);

// A/V sync as the page plays it, for `facecast bench browser` (added to the browser client as an init
// script, so it runs before the client's own code). On one clock, performance.now():
// - each video frame the <video> element presents (requestVideoFrameCallback's expectedDisplayTime),
//   with the mouth's opening in it: the fraction of dark pixels in the mouth box, as the offline
//   lip-sync bench reads it;
// - each ~10.7 ms block of the remote audio as it is played (an AudioWorklet on the remote audio
//   track; getOutputTimestamp maps the audio context's clock to performance.now at the speaker),
//   with its RMS level.
// The mouth box comes from the bench: window.facecastSync.box = [x0, y0, x1, y1] in the video frame.
(() => {
  const DARK_LUMA = 60; // facecast.bench.metrics.DARK_LUMA
  const BLOCKS_PER_SAMPLE = 4; // 4 × 128 frames ≈ 10.7 ms at 48 kHz
  const sync = { box: null, video: [], audio: [], streams: {}, sdp: null, reports: {}, buffers: [], errors: [] };
  window.facecastSync = sync;

  // Record the client's peer connection: the stream each remote track arrives in, and the answer.
  const NativePeerConnection = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...args) {
    const pc = new NativePeerConnection(...args);
    pc.addEventListener("track", (ev) => {
      sync.streams[ev.track.kind] = ev.streams.map((s) => s.id);
      if (ev.track.kind === "audio") watchAudio(ev.track).catch((err) => sync.errors.push(String(err)));
      sync.sdp = pc.remoteDescription ? pc.remoteDescription.sdp : null;
    });
    watchReports(pc);
    return pc;
  };

  // When the second RTCP sender report of each kind arrived (the browser can map that track's RTP
  // timestamps to the sender's clock from then on), and each track's jitter buffer: cumulative
  // [performance.now(), kind, jitterBufferDelay, jitterBufferTargetDelay, jitterBufferEmittedCount,
  // jitterBufferMinimumDelay] (target above minimum: the synchroniser holds that track back).
  function watchReports(pc) {
    const timer = setInterval(async () => {
      if (pc.connectionState === "closed") { clearInterval(timer); return; }
      const stats = await pc.getStats();
      const now = performance.now();
      stats.forEach((s) => {
        if (s.type === "remote-outbound-rtp" && s.reportsSent >= 2 && !(s.kind in sync.reports)) {
          sync.reports[s.kind] = now;
        }
        if (s.type === "inbound-rtp" && s.jitterBufferEmittedCount) {
          sync.buffers.push([
            now, s.kind, s.jitterBufferDelay, s.jitterBufferTargetDelay, s.jitterBufferEmittedCount,
            s.jitterBufferMinimumDelay,
          ]);
        }
      });
    }, 100);
  }
  window.RTCPeerConnection.prototype = NativePeerConnection.prototype;

  const WORKLET = `
    class Level extends AudioWorkletProcessor {
      constructor() { super(); this.sum = 0; this.n = 0; this.blocks = 0; this.start = 0; }
      process(inputs) {
        const x = inputs[0] && inputs[0][0];
        if (this.blocks === 0) this.start = currentTime;
        if (x) { for (let i = 0; i < x.length; i++) this.sum += x[i] * x[i]; this.n += x.length; }
        if (++this.blocks === ${BLOCKS_PER_SAMPLE}) {
          this.port.postMessage([this.start, this.n ? Math.sqrt(this.sum / this.n) : 0]);
          this.sum = 0; this.n = 0; this.blocks = 0;
        }
        return true;
      }
    }
    registerProcessor("facecast-level", Level);`;

  async function watchAudio(track) {
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" })));
    const source = ctx.createMediaStreamSource(new MediaStream([track]));
    const level = new AudioWorkletNode(ctx, "facecast-level");
    level.port.onmessage = ({ data: [contextTime, rms] }) => {
      // When this block plays, on the performance.now() clock.
      const stamp = ctx.getOutputTimestamp();
      sync.audio.push([stamp.performanceTime + (contextTime - stamp.contextTime) * 1000, rms * 32768]);
    };
    source.connect(level);
    level.connect(ctx.destination); // a node feeding nothing is not pulled
    if (ctx.state !== "running") await ctx.resume();
  }

  function watchVideo(video) {
    const canvas = document.createElement("canvas");
    const g = canvas.getContext("2d", { willReadFrequently: true });
    const onFrame = (_now, meta) => {
      let open = null;
      const box = sync.box;
      if (box && meta.width >= box[2] && meta.height >= box[3]) {
        const [x0, y0, x1, y1] = box;
        canvas.width = x1 - x0;
        canvas.height = y1 - y0;
        g.drawImage(video, x0, y0, x1 - x0, y1 - y0, 0, 0, x1 - x0, y1 - y0);
        const px = g.getImageData(0, 0, x1 - x0, y1 - y0).data;
        let dark = 0;
        for (let i = 0; i < px.length; i += 4) {
          if (0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2] < DARK_LUMA) dark++;
        }
        open = dark / (px.length / 4);
      }
      sync.video.push([meta.expectedDisplayTime, open]);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  document.addEventListener("DOMContentLoaded", () => watchVideo(document.getElementById("video")));
})();

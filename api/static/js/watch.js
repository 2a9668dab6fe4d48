// Following one job: its event stream when that works, polling when it does not; it stops at the end.
// A Watch owns only the transport. What it learns goes to the listener its owner passes in:
//   view(jobView)        a job view from the API (snapshot, poll)
//   progress(event)      a progress event from the stream
//   wantsFrames()        false once the final picture is shown: live frames then stay away
//   frame(blob)          the latest intermediate picture
//   stall(text)          why a queued job is not starting ("" when nothing is wrong)
//   result(jobView)      the job succeeded: show its final picture (may return a promise)
//   finished()           the job ended and its last picture is shown
//   ended()              after the end, whether or not its result could be loaded
//   transport(name)      "events" or "polling"
//   showError(error, context), hideError()

import { TERMINAL, ApiError, api, apiError, apiKey, authHeaders, detailItems } from "./api.js";

const POLL_MS = 500; // frame and state polling when the event stream is unavailable
const QUEUE_POLL_MS = 1000; // queue position: the event stream says nothing until a job starts
const CHECK_MS = 5000; // while streaming, re-read the job now and then so a lost stream never stalls the page
const QUEUE_STALL_MS = 8000; // queued this long: ask /readyz whether any worker is alive, and say so

export class Watch {
  /** Follows a job: the event stream when it works, polling when it does not; stops at the end. */
  constructor(job, listener) {
    this.id = job.id;
    this.on = listener;
    this.status = job.status; // the last state seen, which sets the slow loop's pace
    this.closed = false;
    this.finished = false;
    this.stream = null;
    this.polling = false;
    this.timer = null;
    this.frameEtag = null;
    this.frameBusy = false;
    this.framePending = false;
    this.lastEventAt = Date.now();
    this.queuedSince = null;
    this.readyCheckedAt = 0;
  }

  start() {
    this.openStream();
    this.schedule();
  }

  close() {
    this.closed = true;
    if (this.stream) this.stream.close();
    clearTimeout(this.timer);
  }

  /** The slow loop: queue position while queued, a safety re-read while streaming, everything while polling. */
  schedule() {
    clearTimeout(this.timer);
    if (this.closed || this.finished) return;
    const delay = this.polling ? POLL_MS : this.status === "queued" ? QUEUE_POLL_MS : CHECK_MS;
    this.timer = setTimeout(() => this.tick(), delay);
  }

  async tick() {
    if (this.closed || this.finished) return;
    try {
      const response = await api(`/v1/jobs/${this.id}`);
      const view = await response.json();
      if (this.closed) return;
      this.clearTrouble();
      this.seeView(view);
      if (TERMINAL.has(view.status)) return this.onFinished();
      if (view.status === "queued") await this.checkStall();
      if (this.polling && view.status !== "queued") await this.loadFrame();
    } catch (error) {
      if (this.closed) return;
      if (error instanceof ApiError && (error.status === 404 || error.status === 401)) {
        this.close();
        this.on.showError(error, "Stopped following this painting.");
        return;
      }
      this.trouble(error, "Lost contact with the service; still trying.");
    }
    this.schedule();
  }

  seeView(view) {
    this.status = view.status;
    this.on.view(view);
  }

  /** A job queued for long may have no worker to run it: /readyz says whether any is alive. */
  async checkStall() {
    const now = Date.now();
    this.queuedSince = this.queuedSince || now;
    if (now - this.queuedSince < QUEUE_STALL_MS || now - this.readyCheckedAt < QUEUE_STALL_MS) return;
    this.readyCheckedAt = now;
    let stall = "";
    try {
      await api("/readyz");
    } catch (error) {
      stall = error instanceof ApiError ? error.headline : String(error);
    }
    if (this.closed) return;
    this.on.stall(stall);
  }

  trouble(error, context) {
    this.troubled = true;
    this.on.showError(error, context);
  }

  clearTrouble() {
    if (this.troubled) this.on.hideError();
    this.troubled = false;
  }

  startPolling(reason) {
    if (this.polling || this.closed || this.finished) return;
    console.info(`artgen: polling job ${this.id} because ${reason}`);
    if (this.stream) this.stream.close();
    this.stream = null;
    this.polling = true;
    this.on.transport("polling");
    clearTimeout(this.timer);
    this.tick();
  }

  openStream() {
    const url = `/v1/jobs/${this.id}/events`;
    this.on.transport("events");
    // EventSource cannot send an Authorization header: with a key, read the stream through fetch.
    if (apiKey()) return this.openFetchStream(url);
    if (!("EventSource" in window)) return this.startPolling("this browser has no EventSource");
    const source = new EventSource(url);
    this.stream = { close: () => source.close() };
    let failures = 0;
    let opened = false;
    source.addEventListener("open", () => {
      opened = true;
    });
    for (const name of ["snapshot", "progress", "frame", "finished"]) {
      source.addEventListener(name, (event) => {
        failures = 0;
        this.dispatch(name, event.data);
      });
    }
    source.addEventListener("error", (event) => {
      if (this.closed || this.finished) return;
      // The server's own `error` event carries data (Redis went away); a connection error does not.
      if (event.data) this.trouble(new ApiError(503, detailItems(JSON.parse(event.data).detail)[0].text), "The live view paused:");
      failures += 1;
      // Never opened (blocked, refused): poll now. A stream that worked gets a few reconnects first.
      if (!opened || source.readyState === EventSource.CLOSED || failures >= 3) this.startPolling("the event stream failed");
    });
  }

  async openFetchStream(url) {
    const controller = new AbortController();
    this.stream = { close: () => controller.abort() };
    try {
      const response = await api(url, { signal: controller.signal, headers: { Accept: "text/event-stream" } });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) this.dispatch(name, data.join("\n"));
        }
      }
      if (!this.finished) this.startPolling("the event stream ended early");
    } catch (error) {
      if (this.closed || this.finished) return;
      if (error instanceof ApiError && (error.status === 401 || error.status === 404)) {
        this.on.showError(error, "Cannot follow this painting.");
        this.close();
        return;
      }
      this.startPolling(`the event stream failed (${error.message})`);
    }
  }

  dispatch(name, raw) {
    if (this.closed || this.finished) return;
    this.lastEventAt = Date.now();
    let data;
    try {
      data = JSON.parse(raw);
    } catch (error) {
      this.trouble(new ApiError(0, `The service sent an unreadable ${name} event (${error.message}).`), "");
      return;
    }
    if (name === "snapshot") {
      this.seeView(data);
      if (data.status !== "queued") this.loadFrame();
    } else if (name === "progress") {
      if (!TERMINAL.has(this.status)) this.status = "running";
      this.on.progress(data);
    } else if (name === "frame") {
      this.loadFrame();
    } else if (name === "finished") {
      this.onFinished();
    } else if (name === "error") {
      this.trouble(new ApiError(503, detailItems(data.detail)[0].text), "The live view paused:");
    }
  }

  /** The latest frame, one request at a time; a frame event during a request asks for one more. */
  async loadFrame() {
    if (this.frameBusy) {
      this.framePending = true;
      return;
    }
    this.frameBusy = true;
    try {
      do {
        this.framePending = false;
        const headers = this.frameEtag ? { "If-None-Match": this.frameEtag } : {};
        const response = await fetch(`/v1/jobs/${this.id}/frame`, { headers: authHeaders(headers), cache: "no-store" });
        if (this.closed || !this.on.wantsFrames()) return;
        if (response.status === 200) {
          this.frameEtag = response.headers.get("ETag");
          const blob = await response.blob();
          if (this.closed || !this.on.wantsFrames()) return;
          this.on.frame(blob);
        } else if (response.status !== 304 && response.status !== 404) {
          throw await apiError(response);
        }
      } while (this.framePending && !this.closed);
    } catch (error) {
      if (!this.closed) this.trouble(error, "Could not load the latest picture:");
    } finally {
      this.frameBusy = false;
    }
  }

  async onFinished() {
    if (this.finished || this.closed) return;
    this.finished = true;
    if (this.stream) this.stream.close();
    clearTimeout(this.timer);
    try {
      const response = await api(`/v1/jobs/${this.id}`);
      const view = await response.json();
      if (this.closed) return;
      this.clearTrouble();
      this.seeView(view);
      if (view.status === "succeeded") await this.on.result(view);
      else await this.loadLastFrame();
      this.on.finished();
    } catch (error) {
      if (!this.closed) this.on.showError(error, "The painting ended, but its result could not be loaded.");
    }
    this.on.ended();
  }

  async loadLastFrame() {
    // A canceled or failed job keeps its last frame: show it rather than an empty canvas.
    this.frameEtag = null;
    await this.loadFrame();
  }
}

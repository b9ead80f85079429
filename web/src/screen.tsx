// A session's screen, live: the screenshot is fetched about once a second with If-None-Match, so an
// unchanged screen costs a 304 and no image decode. It waits while the sandbox is not connected,
// stops while the tab is hidden or the image is scrolled out of view, and after a stopped
// session's final screenshot has been shown.

import { useEffect, useRef, useState } from "preact/hooks";
import { ApiFailure, call, describeFailure } from "./api.ts";

const REFRESH_MS = 1000;
/** Ended for good: the stored final screenshot (if any) is all there is to show. */
const ENDED = new Set(["stopped", "failed"]);
const WITHOUT_SCREEN = new Set(["pending"]);

export interface ScreenProps {
  sessionId: string;
  status: string;
  /** The sandbox's tunnel is up: only then can a live screen be fetched. */
  connected: boolean;
  label: string;
  large?: boolean;
}

export function Screen({ sessionId, status, connected, label, large }: ScreenProps) {
  const [src, setSrc] = useState<string | null>(null);
  const [note, setNote] = useState<string | null>(null);
  const box = useRef<HTMLDivElement>(null);
  // The image shown stays until a newer one replaces it (or the component goes), across status changes.
  const shown = useRef<string | null>(null);
  const show = (url: string) => {
    if (shown.current) URL.revokeObjectURL(shown.current);
    shown.current = url;
    setSrc(url);
  };
  useEffect(
    () => () => {
      if (shown.current) URL.revokeObjectURL(shown.current);
    },
    [],
  );

  useEffect(() => {
    if (WITHOUT_SCREEN.has(status)) {
      setNote("No screen yet: the session is waiting for a host");
      return;
    }
    if (status === "stopping") {
      // The sandbox is going: its tunnel is cut any moment. The final screenshot comes with `stopped`.
      setNote("Stopping…");
      return;
    }
    const ended = ENDED.has(status);
    if (!ended && !connected) {
      // Asking now would be a 503: the stream says when the sandbox connects.
      setNote("Waiting for the sandbox to connect");
      return;
    }
    let etag: string | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let inView = true;
    let busy = false;
    let done = false;
    // Cancels the request in flight when the screen goes or its session changes (a stop cuts the
    // sandbox's tunnel: a request still running then would fail for nothing).
    const abort = new AbortController();
    const visible = () => document.visibilityState === "visible" && inView;
    const tick = async () => {
      timer = undefined;
      if (done || busy || !visible()) return;
      busy = true;
      try {
        const headers: Record<string, string> = etag ? { "if-none-match": etag } : {};
        const res = await call(`/api/v1/external-agents/${encodeURIComponent(sessionId)}/screenshot`, {
          headers,
          cache: "no-store",
          signal: abort.signal,
        });
        if (res.status === 200) {
          const blob = await res.blob();
          etag = res.headers.get("etag");
          if (!done) show(URL.createObjectURL(blob));
          setNote(res.headers.get("x-paused-screenshot") ? "Final screenshot" : null);
        }
        if (ended) done = true;
      } catch (err) {
        if (abort.signal.aborted) return;
        const waiting = err instanceof ApiFailure && err.status === 503;
        setNote(waiting ? "Waiting for the sandbox to connect" : describeFailure(err));
        if (ended && !waiting) done = true;
      } finally {
        busy = false;
      }
      schedule();
    };
    const schedule = () => {
      if (!done && timer === undefined && visible()) timer = setTimeout(tick, REFRESH_MS);
    };
    const wake = () => {
      if (visible() && timer === undefined && !busy) void tick();
    };
    const seen = new IntersectionObserver((entries) => {
      inView = entries.some((e) => e.isIntersecting);
      wake();
    });
    if (box.current) seen.observe(box.current);
    document.addEventListener("visibilitychange", wake);
    void tick();
    return () => {
      done = true;
      abort.abort();
      clearTimeout(timer);
      seen.disconnect();
      document.removeEventListener("visibilitychange", wake);
    };
  }, [sessionId, status, connected]);

  return (
    <div ref={box} class={large ? "screen screen-large" : "screen"}>
      {src ? (
        <img src={src} alt={label} data-session={sessionId} />
      ) : (
        <div class="screen-empty">{note ?? "Loading…"}</div>
      )}
      {src && note ? <div class="screen-note">{note}</div> : null}
    </div>
  );
}

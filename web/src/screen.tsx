// A session's screen, live: the screenshot is fetched about once a second with If-None-Match, so an
// unchanged screen costs a 304 and no image decode. It stops while the tab is hidden or the image is
// scrolled out of view, and after a stopped session's final screenshot has been shown.

import { useEffect, useRef, useState } from "preact/hooks";
import { ApiFailure, call, describeFailure } from "./api.ts";

const REFRESH_MS = 1000;
const ENDED = new Set(["stopping", "stopped", "failed"]);
const WITHOUT_SCREEN = new Set(["pending"]);

export interface ScreenProps {
  sessionId: string;
  status: string;
  label: string;
  large?: boolean;
}

export function Screen({ sessionId, status, label, large }: ScreenProps) {
  const [src, setSrc] = useState<string | null>(null);
  const [note, setNote] = useState<string | null>(null);
  const box = useRef<HTMLDivElement>(null);

  useEffect(() => {
    if (WITHOUT_SCREEN.has(status)) {
      setNote("No screen yet: the session is waiting for a host");
      return;
    }
    let etag: string | null = null;
    let url: string | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let inView = true;
    let busy = false;
    let done = false;
    const ended = ENDED.has(status);
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
        });
        if (res.status === 200) {
          const blob = await res.blob();
          etag = res.headers.get("etag");
          if (url) URL.revokeObjectURL(url);
          url = URL.createObjectURL(blob);
          if (!done) setSrc(url);
          setNote(res.headers.get("x-paused-screenshot") ? "Final screenshot" : null);
        }
        if (ended) done = true;
      } catch (err) {
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
      clearTimeout(timer);
      seen.disconnect();
      document.removeEventListener("visibilitychange", wake);
      if (url) URL.revokeObjectURL(url);
    };
  }, [sessionId, status]);

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

// Small pieces every page uses: the message line for API answers, relative times, status badges.

import type { ComponentChildren } from "preact";

export type Tone = "ok" | "error" | "info";

export interface Message {
  tone: Tone;
  text: string;
}

export function Notice({ message }: { message: Message | null }) {
  if (!message) return null;
  return (
    <p class={`notice notice-${message.tone}`} role={message.tone === "error" ? "alert" : "status"}>
      {message.text}
    </p>
  );
}

export function age(iso: string | null, now = Date.now()): string {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function Badge({ value, children }: { value: string; children?: ComponentChildren }) {
  return <span class={`badge badge-${value.replace(/[^a-z-]/g, "")}`}>{children ?? value}</span>;
}

export function bytes(n: number | undefined): string {
  if (n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

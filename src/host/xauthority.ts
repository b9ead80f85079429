// The X cookie of one sandbox: a MIT-MAGIC-COOKIE-1 in an Xauthority file (libXau's format: for each
// entry a 16-bit big-endian family, then address, display number, auth name and auth data, each a
// 16-bit length and its bytes). The host writes it into the sandbox's 0700 dirs before the sandbox
// starts; Xvfb reads it with -auth, and clients (the agent, the app, xclip) find it by XAUTHORITY.
// One entry of family Wild with an empty display number matches every address and display, so the
// file does not depend on the display number Xvfb picks or on the hostname.

import { randomBytes } from "node:crypto";

const FAMILY_WILD = 0xffff;
/** 128 bits, what `xauth generate` uses. */
export const COOKIE_BYTES = 16;

export function newCookie(): Buffer {
  return randomBytes(COOKIE_BYTES);
}

/** The Xauthority file holding `cookie` for any display. */
export function xauthorityFile(cookie: Buffer): Buffer {
  const field = (b: Buffer) => {
    const len = Buffer.alloc(2);
    len.writeUInt16BE(b.length);
    return Buffer.concat([len, b]);
  };
  const family = Buffer.alloc(2);
  family.writeUInt16BE(FAMILY_WILD);
  return Buffer.concat([
    family,
    field(Buffer.alloc(0)),
    field(Buffer.alloc(0)),
    field(Buffer.from("MIT-MAGIC-COOKIE-1")),
    field(cookie),
  ]);
}

// Tells an image's type from its first bytes, so the Content-Type the API sends is true to the
// bytes even when a sandbox labels them wrongly (a JPEG sent as image/png breaks viewers).

/** Bytes needed to recognise every signature below. */
export const IMAGE_SIGNATURE_BYTES = 12;

export function sniffImageType(head: Buffer): string | null {
  if (
    head.length >= 8 &&
    head.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))
  ) {
    return "image/png";
  }
  if (head.length >= 3 && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return "image/jpeg";
  if (
    head.length >= 12 &&
    head.toString("latin1", 0, 4) === "RIFF" &&
    head.toString("latin1", 8, 12) === "WEBP"
  ) {
    return "image/webp";
  }
  if (head.length >= 6 && /^GIF8[79]a$/.test(head.toString("latin1", 0, 6))) return "image/gif";
  return null;
}

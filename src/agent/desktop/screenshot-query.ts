// Parses the query of GET /screenshot: format=png|jpeg (default png), quality=1-100 (JPEG only,
// default 80), include_cursor=true|false (default false). Anything else given for these is a 400 that
// names the parameter; unknown parameters are ignored.

import type { CaptureRequest, ImageFormat } from "./desktop-types.ts";
import { BadRequestError } from "./errors.ts";

export const SCREENSHOT_DEFAULTS: Readonly<CaptureRequest> = Object.freeze({
  format: "png",
  quality: 80,
  includeCursor: false,
});

export function parseScreenshotQuery(query: URLSearchParams): CaptureRequest {
  return {
    format: parseFormat(query.get("format")),
    quality: parseQuality(query.get("quality")),
    includeCursor: parseBoolean("include_cursor", query.get("include_cursor")),
  };
}

function parseFormat(value: string | null): ImageFormat {
  if (value === null) return SCREENSHOT_DEFAULTS.format;
  if (value === "png" || value === "jpeg") return value;
  throw new BadRequestError(`format must be png or jpeg, not "${value}"`);
}

function parseQuality(value: string | null): number {
  if (value === null) return SCREENSHOT_DEFAULTS.quality;
  const quality = /^\d{1,3}$/.test(value) ? Number(value) : Number.NaN;
  if (quality >= 1 && quality <= 100) return quality;
  throw new BadRequestError(`quality must be an integer from 1 to 100, not "${value}"`);
}

function parseBoolean(name: string, value: string | null): boolean {
  if (value === null) return SCREENSHOT_DEFAULTS.includeCursor;
  if (value === "true") return true;
  if (value === "false") return false;
  throw new BadRequestError(`${name} must be true or false, not "${value}"`);
}

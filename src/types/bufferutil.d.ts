// bufferutil (the native WebSocket masking helper ws uses) ships no types of its own.
declare module "bufferutil" {
  /** output[offset + i] = source[i] ^ mask[i & 3], for i < length. */
  export function mask(source: Buffer, mask: Buffer, output: Buffer, offset: number, length: number): void;
  /** buffer[i] ^= mask[i & 3], in place. */
  export function unmask(buffer: Buffer, mask: Buffer): void;
  const bufferUtil: { mask: typeof mask; unmask: typeof unmask };
  export default bufferUtil;
}

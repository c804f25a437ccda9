// What the benchmark's raw HTTP clients (loadgen.ts, instructions.ts) read of a response.

/**
 * Whether a response is all here: true (a 200, whole), false (another status, whole), undefined
 * (more to come). The field answers with Content-Length, or chunked (ends with the last chunk).
 */
export function responseComplete(text: string): boolean | undefined {
  const end = text.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  const headLower = text.slice(0, end).toLowerCase();
  const length = /\r\ncontent-length: *(\d+)/.exec(headLower);
  const whole = length ? text.length >= end + 4 + Number(length[1]) : /\r\ntransfer-encoding: *chunked/.test(headLower) ? text.endsWith('\r\n0\r\n\r\n') || text.slice(end + 4) === '0\r\n\r\n' : true;
  if (!whole) return undefined;
  return text.startsWith('HTTP/1.1 200 ');
}

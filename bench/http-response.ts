// What the benchmark's raw HTTP clients (loadgen.ts, instructions.ts) write, and read of a response.

/** Header fields as head lines, each ending in CRLF. */
export function fieldLines(headers: Record<string, string>): string {
  let lines = '';
  for (const [k, v] of Object.entries(headers)) lines += `${k}: ${v}\r\n`;
  return lines;
}

/** The benchmark's request, GET / on a kept-alive connection, as the bytes written each time. */
export function getRequest(host: string, headers: Record<string, string>): Buffer {
  return Buffer.from(`GET / HTTP/1.1\r\nhost: ${host}\r\n${fieldLines(headers)}\r\n`, 'latin1');
}

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

// A client leaving a long-poll: all a waiting status poll needs to hear. Not an AbortSignal: in
// Node 20 creating one (AbortController's lazy `signal`) and adding and removing its listener cost
// about 7 µs, a quarter of answering a status poll on the lane in the cold-start herd's CPU profile,
// and a herd is two thousand polls (README, "What was tried").

/** Told once that its client left; one waiter at a time listens (a poll waits on one change). */
export class Departure {
  left = false;
  private listener: (() => void) | undefined = undefined;

  /** `fn` runs when the client leaves (at once if it already has); the last one set wins. */
  onLeave(fn: () => void): void {
    if (this.left) { fn(); return; }
    this.listener = fn;
  }

  /** The waiter is done: nothing runs when the client leaves. */
  offLeave(): void { this.listener = undefined; }

  leave(): void {
    if (this.left) return;
    this.left = true;
    const fn = this.listener;
    this.listener = undefined;
    fn?.();
  }
}

// The activity verdict (issue 5): evidence of a person, from what one browser WebSocket sent.
// Pure: the caller supplies the evidence window, the time and the thresholds.

import type { Classified } from './vscode.js';

export interface ActivityConfig {
  /** Decode VS Code messages (the rule below); false applies the decode-free rule to every socket, e.g. while a
   *  code-server upgrade has renamed the calls and the recorded-traffic test has not been re-run yet. */
  decode: boolean;
  /** Ignore editor changes while VS Code reports its window inactive: a file rewritten on disk while the tab
   *  sits unused changes the open editor's model ~50 times a minute with nobody there (issue 5's table). */
  editorNeedsActiveWindow: boolean;
  /** Before the first focus flag of a socket, treat the window as active (it has just been loaded). */
  focusUnknownIsActive: boolean;
  /** Decode-free rule, used when messages cannot be decoded: at least this many client data frames ... */
  fallbackMinFrames: number;
  /** ... with at least this many payload bytes on the wire ... */
  fallbackMinPayloadBytes: number;
  /** ... within this sliding window. */
  fallbackWindowMs: number;
  /** Client LZ77 window the gateway asks browsers for (negotiateExtensions' windowBits; RFC 7692 7.1.2.2).
   *  12 (4 KB): typing uploads ~6% more than at 15 and a page load ~70% more, for ~26 KB per tab here;
   *  10 and below make typing upload 5x more (bench/activity-window.ts). */
  clientWindowBits: number;
  /** Largest client window (permessage-deflate) the tap decodes; above it the decode-free rule applies
   *  (window 15, browsers that cannot be asked for less, costs ~82 KB per tab: over issue 5's 64 KB). */
  maxDecodeWindowBits: number;
  /** Bytes of each protocol message body kept for classification (method names sit in the first ~40). */
  messagePrefixBytes: number;
  /** Activity is reported at most once per this interval per socket (the count is in memory anyway). */
  reportEveryMs: number;
}

/** Defaults, with the reasons in README.md (gateway/activity). */
export const DEFAULT_ACTIVITY_CONFIG: Readonly<ActivityConfig> = Object.freeze({
  decode: true,
  editorNeedsActiveWindow: true,
  focusUnknownIsActive: true,
  fallbackMinFrames: 20,
  fallbackMinPayloadBytes: 16,
  fallbackWindowMs: 60_000,
  clientWindowBits: 12,
  maxDecodeWindowBits: 14,
  messagePrefixBytes: 512,
  reportEveryMs: 1_000,
});

/** One piece of evidence: a decoded message, or (decode-free) a data frame and its wire payload size. */
export type Evidence = { t: number } & (Classified | { kind: 'frame'; bytes: number });

export interface EvidenceWindow {
  /** The focus flag in force before the first item (null: none seen yet). */
  focus: boolean | null;
  /** Items in time order. */
  items: readonly Evidence[];
}

/** Verdict for one socket's evidence: the latest time at or before `now` a person was evidently there, or null. */
export function judge(window: EvidenceWindow, now: number, config: ActivityConfig): number | null {
  let focus = window.focus;
  let activeAt: number | null = null;
  let frames = 0;
  let firstFrame = 0; // index of the oldest qualifying frame still inside the sliding window
  const frameTimes: number[] = [];
  for (const e of window.items) {
    if (e.t > now) break;
    switch (e.kind) {
      case 'focus':
        focus = e.active;
        break;
      case 'input':
        activeAt = e.t;
        break;
      case 'editor': {
        const active = focus ?? config.focusUnknownIsActive;
        if (active || !config.editorNeedsActiveWindow) activeAt = e.t;
        break;
      }
      case 'frame': {
        if (e.bytes < config.fallbackMinPayloadBytes) break;
        frameTimes.push(e.t);
        frames++;
        while (frameTimes[firstFrame]! <= e.t - config.fallbackWindowMs) { firstFrame++; frames--; }
        if (frames >= config.fallbackMinFrames) activeAt = e.t;
        break;
      }
      case 'housekeeping':
        break;
    }
  }
  return activeAt;
}

// The WebSocket activity signal (issue 5): see README.md in this folder.
export { negotiateExtensions, parseExtensions, type InflateParams, type Negotiated } from './negotiate.js';
export { createWsActivityTap, TAP_OBJECT_OVERHEAD_BYTES, type WsActivityTap, type WsActivityTapOptions, type TapMode } from './tap.js';
export { judge, DEFAULT_ACTIVITY_CONFIG, type ActivityConfig, type Evidence, type EvidenceWindow } from './verdict.js';
export { CALLS, connectionIdentity, classifyRegular, classifyMessage, ProtocolReader, type Classified } from './vscode.js';
export { FrameParser, type FrameSink } from './frames.js';
export { RawInflater, type InflateSink } from './inflate.js';

// The shape every benchmark scenario returns to bench/run.ts (issue 7). Part B's scenarios
// (cold-herd, class-start surge, state scale) and part A's (HTTP, WebSocket, bookkeeping) use it alike,
// so the runner can print one table and write one JSON file without knowing any scenario's internals.
export interface Figure { name: string; value: number; unit: string }
export interface Target { name: string; value: number; limit: number; unit: string; op: '<=' | '>='; met: boolean }
export interface ScenarioResult { scenario: string; systems: Array<{ system: string; figures: Figure[] }>; targets: Target[]; notes: string[] }

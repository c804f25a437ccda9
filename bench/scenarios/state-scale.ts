import type { ScenarioResult } from '../result.js';
export async function run(_o: { quick: boolean; log: (s: string) => void }): Promise<ScenarioResult> { throw new Error('todo'); }

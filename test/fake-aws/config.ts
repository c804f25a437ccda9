// Ready-made settings pointing the ECS provisioner at a fake endpoint: as an environment map
// (for a gateway process, parsed by ecsOptionsFromEnv) or as options (for in-process tests).
import { ecsOptionsFromEnv } from '../../provisioner/ecs-config.js';
import type { EcsProvisionerOptions } from '../../provisioner/ecs-types.js';
import type { FakeAws } from './index.js';

export const FAKE_CREDENTIALS = { accessKeyId: 'AKIAFAKEFAKEFAKEFAKE', secretAccessKey: 'fake-secret-key-for-loopback-tests' };

/** Environment for `PROVISIONER=ecs` against the fake (includes static credentials for the SDK). */
export function fakeAwsEnv(fake: FakeAws, extra: Record<string, string> = {}): Record<string, string> {
  return {
    PROVISIONER: 'ecs',
    AWS_REGION: fake.region,
    AWS_ENDPOINT_URL: fake.url,
    AWS_ACCESS_KEY_ID: FAKE_CREDENTIALS.accessKeyId,
    AWS_SECRET_ACCESS_KEY: FAKE_CREDENTIALS.secretAccessKey,
    ECS_CLUSTER: 'workspaces',
    ECS_SUBNETS: 'subnet-0aaaaaaaaaaaaaaa1,subnet-0aaaaaaaaaaaaaaa2',
    ECS_SECURITY_GROUPS: 'sg-0bbbbbbbbbbbbbbb1',
    ECS_BASE_TASK_DEFINITION: fake.baseFamily,
    EFS_FILE_SYSTEM_ID: fake.fileSystemIds.join(','),
    CLOUDMAP_SERVICE_IDS: fake.serviceIds.join(','),
    WORKSPACE_PORT: String(fake.workspacePort),
    ...extra,
  };
}

/** Provisioner options for the fake; `overrides` win (e.g. faster polling, short deadlines). */
export function fakeEcsOptions(fake: FakeAws, overrides: Partial<EcsProvisionerOptions> = {}, env: Record<string, string> = {}): EcsProvisionerOptions {
  return {
    ...ecsOptionsFromEnv(fakeAwsEnv(fake, env)),
    credentials: FAKE_CREDENTIALS,
    describePollMs: 100,
    probeIntervalMs: 50,
    ...overrides,
  };
}

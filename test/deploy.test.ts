// The CDK app synthesised in-process (no credentials, no network): one listener rule and one target
// group whatever the number of students, nothing per workspace, every ECS / Cloud Map / EFS
// permission scoped, the security-group matrix, and the settings the gateway's drain depends on.
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { join, resolve } from 'node:path';
import t from 'tap';
import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { cloudMapShards, parseDeployConfig } from '../deploy/config.js';
import { WorkspaceGatewayStack } from '../deploy/stack.js';
import { loadConfig } from '../gateway/config.js';
import { ecsOptionsFromEnv } from '../provisioner/ecs-config.js';

type Json = Record<string, any>;

function synth(context: Record<string, unknown> = {}): Template {
  const app = new App({ context });
  const stack = new WorkspaceGatewayStack(app, 'Test', { config: parseDeployConfig((k) => app.node.tryGetContext(k)) });
  return Template.fromStack(stack);
}

function resources(tpl: Template): Array<[string, Json]> {
  return Object.entries(tpl.toJSON().Resources as Record<string, Json>);
}

function countByType(tpl: Template): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const [, r] of resources(tpl)) counts[r.Type] = (counts[r.Type] ?? 0) + 1;
  return counts;
}

const asList = <T>(v: T | T[] | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

const NEW_SECRET_ARN = 'arn:aws:secretsmanager:eu-west-1:111122223333:secret:gw-secret-new-AbC123';
const OLD_SECRET_ARN = 'arn:aws:secretsmanager:eu-west-1:111122223333:secret:gw-secret-old-XyZ789';

const EXISTING_VPC = {
  vpcId: 'vpc-0abc0abc0abc0abc0',
  vpcCidr: '10.9.0.0/16',
  availabilityZones: 'eu-west-1a,eu-west-1b,eu-west-1c',
  publicSubnetIds: 'subnet-0000000000000000a,subnet-0000000000000000b,subnet-0000000000000000c',
  privateSubnetIds: 'subnet-1111111111111111a,subnet-1111111111111111b,subnet-1111111111111111c',
};

const small = synth({ students: 1 });

t.test('one listener rule and one target group, whatever the number of students', async (t) => {
  const big = synth({ students: 10_000 });
  for (const [name, tpl] of [['1 student', small], ['10,000 students', big]] as const) {
    tpl.resourceCountIs('AWS::ElasticLoadBalancingV2::ListenerRule', 1);
    tpl.resourceCountIs('AWS::ElasticLoadBalancingV2::TargetGroup', 1);
    tpl.resourceCountIs('AWS::ElasticLoadBalancingV2::LoadBalancer', 1);
    tpl.resourceCountIs('AWS::ECS::Service', 1);
    tpl.resourceCountIs('AWS::ECS::TaskDefinition', 2);
    tpl.resourceCountIs('AWS::EFS::AccessPoint', 0);
    t.pass(name);
  }
  // Nothing grows with the students but the Cloud Map shards (1,000 instances per service).
  const a = countByType(small);
  const b = countByType(big);
  t.equal(a['AWS::ServiceDiscovery::Service'], 1);
  t.equal(b['AWS::ServiceDiscovery::Service'], 10);
  delete a['AWS::ServiceDiscovery::Service'];
  delete b['AWS::ServiceDiscovery::Service'];
  t.same(b, a, 'every other resource count is the same for 1 and 10,000 students');
  t.same(countByType(synth({ students: 1000 })), countByType(small), '1,000 students: the very same resources as 1');

  big.hasResourceProperties('AWS::ElasticLoadBalancingV2::ListenerRule', {
    Conditions: [{ Field: 'host-header', HostHeaderConfig: { Values: ['*.ecombinators.com'] } }],
    Actions: [{ Type: 'forward', TargetGroupArn: Match.anyValue() }],
  });
});

t.test('the ALB: HTTPS forwards to the gateway, HTTP redirects, idle timeout under the keep-alive', async (t) => {
  small.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', {
    Port: 80,
    DefaultActions: [{ Type: 'redirect', RedirectConfig: { Protocol: 'HTTPS', Port: '443', StatusCode: 'HTTP_301' } }],
  });
  small.hasResourceProperties('AWS::ElasticLoadBalancingV2::Listener', {
    Port: 443,
    Protocol: 'HTTPS',
    Certificates: [{ CertificateArn: { Ref: 'CertificateArn' } }],
  });
  small.hasResourceProperties('AWS::ElasticLoadBalancingV2::TargetGroup', {
    TargetType: 'ip',
    Port: 8080,
    HealthCheckPath: '/readyz',
    HealthCheckPort: '9090',
  });
  const lb = resources(small).find(([, r]) => r.Type === 'AWS::ElasticLoadBalancingV2::LoadBalancer')![1];
  const idle = Number(lb.Properties.LoadBalancerAttributes.find((a: Json) => a.Key === 'idle_timeout.timeout_seconds').Value);
  t.equal(idle, 300);
  const env = gatewayEnv(small);
  t.ok(parseInt(env.KEEPALIVE_TIMEOUT, 10) > idle, `KEEPALIVE_TIMEOUT ${env.KEEPALIVE_TIMEOUT} exceeds the ALB idle timeout`);
});

function gatewayContainer(tpl: Template): Json {
  for (const [, r] of resources(tpl)) {
    if (r.Type !== 'AWS::ECS::TaskDefinition') continue;
    const c = (r.Properties.ContainerDefinitions as Json[]).find((d) => d.Name === 'gateway');
    if (c) return c;
  }
  throw new Error('no gateway container');
}

function gatewayEnv(tpl: Template): Record<string, any> {
  return Object.fromEntries((gatewayContainer(tpl).Environment as Json[]).map((e) => [e.Name, e.Value]));
}

t.test('the gateway service drains before it is killed', async (t) => {
  const c = gatewayContainer(small);
  t.equal(c.StopTimeout, 120, 'stopTimeout at the Fargate maximum');
  t.equal(c.LinuxParameters.InitProcessEnabled, true, 'an init as PID 1');
  const env = gatewayEnv(small);
  const drain = parseInt(env.DRAIN_PERIOD, 10);
  const tg = resources(small).find(([, r]) => r.Type === 'AWS::ElasticLoadBalancingV2::TargetGroup')![1];
  const dereg = Number(tg.Properties.TargetGroupAttributes.find((a: Json) => a.Key === 'deregistration_delay.timeout_seconds').Value);
  t.ok(dereg < c.StopTimeout, `deregistration delay ${dereg}s below the stop timeout`);
  t.ok(drain <= c.StopTimeout - 10, `DRAIN_PERIOD ${drain}s leaves a margin before SIGKILL`);
  t.same(
    (c.Secrets as Json[]).map((s) => s.Name).sort(),
    ['ADMIN_TOKEN', 'GATEWAY_SECRET', 'REDIS_PASSWORD'],
    'secrets come from Secrets Manager, not the environment',
  );
  for (const name of ['ADMIN_TOKEN', 'GATEWAY_SECRET', 'REDIS_PASSWORD']) t.notOk(name in env, `${name} is not a plain variable`);
  t.equal(env.PROVISIONER, 'ecs');
  t.equal(env.ECS_TASK_FAMILY_PREFIX, 'ws');
  t.equal(env.ECS_CONTAINER_NAME, 'code-server');
  t.match(JSON.stringify(env.REDIS_URL), /rediss:\/\//);
  t.equal(c.LogConfiguration.LogDriver, 'awslogs');

  small.hasResourceProperties('AWS::ECS::Service', {
    DesiredCount: 2,
    DeploymentConfiguration: Match.objectLike({ MinimumHealthyPercent: 100, MaximumPercent: 200 }),
    CapacityProviderStrategy: [{ CapacityProvider: 'FARGATE', Base: 2, Weight: 1 }],
  });
  small.hasResourceProperties('AWS::ApplicationAutoScaling::ScalableTarget', { MinCapacity: 2, MaxCapacity: 6 });
  small.hasResourceProperties('AWS::ECS::ClusterCapacityProviderAssociations', {
    CapacityProviders: Match.arrayWith(['FARGATE', 'FARGATE_SPOT']),
  });
});

t.test('the workspace base task definition, EFS and Redis', async (t) => {
  small.hasResourceProperties('AWS::ECS::TaskDefinition', {
    Family: 'wsbase-code-server',
    ContainerDefinitions: [
      Match.objectLike({
        Name: 'code-server',
        PortMappings: [Match.objectLike({ ContainerPort: 8080 })],
        LinuxParameters: { InitProcessEnabled: true },
        MountPoints: [{ ContainerPath: '/home/coder/workspace', SourceVolume: 'workspace', ReadOnly: false }],
      }),
    ],
    Volumes: [Match.objectLike({ EFSVolumeConfiguration: Match.objectLike({ TransitEncryption: 'ENABLED', AuthorizationConfig: { IAM: 'ENABLED' } }) })],
  });
  small.hasResourceProperties('AWS::EFS::FileSystem', { Encrypted: true, ThroughputMode: 'elastic' });
  small.resourceCountIs('AWS::EFS::MountTarget', 2);
  const fsPolicy = resources(small).find(([, r]) => r.Type === 'AWS::EFS::FileSystem')![1].Properties.FileSystemPolicy;
  const denyNoAp = (fsPolicy.Statement as Json[]).find((s) => s.Effect === 'Deny' && s.Condition?.Null?.['elasticfilesystem:AccessPointArn'] === 'true');
  t.ok(denyNoAp, 'the file-system policy denies every mount that is not through an access point');
  t.same(asList(denyNoAp!.Principal.AWS), ['*']);
  const allows = (fsPolicy.Statement as Json[]).filter((s) => s.Effect === 'Allow');
  t.equal(allows.length, 1, 'one Allow: the workspace task role');
  t.notSame(allows[0].Principal.AWS, '*', 'no anonymous or any-principal allow');
  t.notOk(allows.some((s) => asList<string>(s.Action).includes('elasticfilesystem:ClientRootAccess')), 'nobody is granted root');

  small.hasResourceProperties('AWS::ElastiCache::ReplicationGroup', {
    AtRestEncryptionEnabled: true,
    TransitEncryptionEnabled: true,
    AuthToken: Match.anyValue(),
    MultiAZEnabled: true,
  });
  const redis = resources(small).find(([, r]) => r.Type === 'AWS::ElastiCache::ReplicationGroup')![1];
  t.match(JSON.stringify(redis.Properties.AuthToken), /resolve:secretsmanager/, 'AUTH token is a Secrets Manager dynamic reference');
  small.resourceCountIs('AWS::ServiceDiscovery::HttpNamespace', 1);
  small.resourceCountIs('AWS::ServiceDiscovery::PrivateDnsNamespace', 0);
});

// Every statement of every identity policy in the template.
function identityStatements(tpl: Template): Array<{ where: string; s: Json }> {
  const out: Array<{ where: string; s: Json }> = [];
  for (const [id, r] of resources(tpl)) {
    const docs: Json[] = [];
    if (r.Type === 'AWS::IAM::Policy' || r.Type === 'AWS::IAM::ManagedPolicy') docs.push(r.Properties.PolicyDocument);
    if (r.Type === 'AWS::IAM::Role') for (const p of r.Properties.Policies ?? []) docs.push(p.PolicyDocument);
    for (const d of docs) for (const s of d.Statement as Json[]) out.push({ where: id, s });
  }
  return out;
}

/** Actions with no resource type in the Service Authorization Reference: only `"Resource": "*"` grants them. */
const UNSCOPABLE = new Set(['ecs:DescribeTaskDefinition']);

t.test('every ECS, Cloud Map and EFS permission is scoped', async (t) => {
  const statements = identityStatements(synth({ students: 2500 }));
  const scoped = /^(ecs|servicediscovery|elasticfilesystem):/;
  let checked = 0;
  for (const { where, s } of statements) {
    const actions = asList<string>(s.Action);
    for (const a of actions) t.notMatch(a, /\*/, `${where}: no wildcard action (${a})`);
    if (!actions.some((a) => scoped.test(a))) continue;
    checked++;
    t.equal(s.Effect, 'Allow');
    // The one exception: an action without a resource type takes only "*" (checked against the
    // provisioner's calls in 'the gateway role allows every AWS call the provisioner makes').
    if (actions.length === 1 && UNSCOPABLE.has(actions[0])) {
      t.same(s.Resource, '*', `${actions[0]} authorizes on "*" only`);
      continue;
    }
    for (const r of asList<unknown>(s.Resource)) {
      t.not(r, '*', `${where} ${s.Sid}: no "*" resource for ${actions.join(',')}`);
      t.notMatch(JSON.stringify(r), /^"arn:[^"]*:\*"$/, `${where} ${s.Sid}: not a whole-service wildcard`);
    }
  }
  t.ok(checked >= 8, `checked ${checked} statements`);

  const gw = (sid: string) => statements.find(({ s }) => s.Sid === sid)?.s;
  const run = gw('RunWorkspacesInThisCluster')!;
  t.same(run.Action, 'ecs:RunTask');
  t.match(JSON.stringify(run.Resource), /task-definition\/ws-\*:\*/, 'RunTask only on the workspace families');
  t.ok(run.Condition.ArnEquals['ecs:cluster'], 'RunTask only in this cluster');
  for (const sid of ['ManageTasksInThisCluster', 'ListTasksInThisCluster']) {
    t.ok(gw(sid)!.Condition.ArnEquals['ecs:cluster'], `${sid} conditioned on the cluster`);
  }
  const pass = gw('PassOnlyWorkspaceRoles')!;
  t.same(pass.Condition, { StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } });
  t.same(
    asList<Json>(pass.Resource).map((r) => (r['Fn::GetAtt'][0] as string).replace(/[0-9A-F]{8}$/, '')).sort(),
    ['WorkspaceExecutionRole', 'WorkspaceTaskRole'],
    'PassRole only for the workspace task and execution roles',
  );
  const sd = gw('RegisterWorkspaceInstances')!;
  t.equal(asList(sd.Resource).length, cloudMapShards(2500), 'Cloud Map permissions on exactly this app\'s services');
  const fsId = resources(small).find(([, r]) => r.Type === 'AWS::EFS::FileSystem')![0];
  t.same(gw('CreateTaggedAccessPoints')!.Resource, { 'Fn::GetAtt': [fsId, 'Arn'] }, 'access points only on this file system');
  t.ok(gw('CreateTaggedAccessPoints')!.Condition.StringEquals['aws:RequestTag/ManagedBy'], 'with a tag condition');
  t.ok(gw('TagOnCreate')!.Condition.StringEquals['ecs:CreateAction'], 'ECS tags only when creating');
  // Route 53 is not needed with an HTTP namespace.
  t.notOk(statements.some(({ s }) => asList<string>(s.Action).some((a) => a.startsWith('route53:'))), 'no Route 53 permissions');
});

// Ingress rules as "TARGET <- SOURCE:port", from inline rules and standalone ingress resources.
function ingressMatrix(tpl: Template): string[] {
  const name = (ref: unknown): string => {
    const id = (ref as Json)?.['Fn::GetAtt']?.[0] as string | undefined;
    if (id) return id.replace(/[0-9A-F]{8}$/, '');
    if (typeof ref === 'string') return ref;
    if ((ref as Json)?.['Fn::GetAtt']) return 'VPC-CIDR';
    return JSON.stringify(ref);
  };
  const rule = (target: string, r: Json) =>
    `${target} <- ${r.SourceSecurityGroupId ? name(r.SourceSecurityGroupId) : typeof r.CidrIp === 'string' ? r.CidrIp : 'VPC-CIDR'}:${r.FromPort === r.ToPort ? r.FromPort : `${r.FromPort}-${r.ToPort}`}/${r.IpProtocol}`;
  const out: string[] = [];
  for (const [id, r] of resources(tpl)) {
    if (r.Type === 'AWS::EC2::SecurityGroup') for (const i of r.Properties.SecurityGroupIngress ?? []) out.push(rule(id.replace(/[0-9A-F]{8}$/, ''), i));
    if (r.Type === 'AWS::EC2::SecurityGroupIngress') out.push(rule(name(r.Properties.GroupId), r.Properties));
  }
  return out.sort();
}

t.test('the security-group matrix', async (t) => {
  const expected = [
    'AlbSg <- 0.0.0.0/0:443/tcp',
    'AlbSg <- 0.0.0.0/0:80/tcp',
    'EfsSg <- WorkspaceSg:2049/tcp',
    'GatewaySg <- AlbSg:8080/tcp',
    'GatewaySg <- AlbSg:9090/tcp',
    'GatewaySg <- VPC-CIDR:9090/tcp',
    'RedisSg <- GatewaySg:6379/tcp',
    'WorkspaceSg <- GatewaySg:8080/tcp',
  ].sort();
  t.same(ingressMatrix(small), expected, 'new VPC');
  const imported = synth({ ...EXISTING_VPC, students: 1 });
  t.same(ingressMatrix(imported), expected.map((r) => r.replace('VPC-CIDR', '10.9.0.0/16')).sort(), 'existing VPC');
  const gwEgress = resources(small)
    .filter(([, r]) => r.Type === 'AWS::EC2::SecurityGroupEgress' && r.Properties.GroupId['Fn::GetAtt'][0].startsWith('GatewaySg'))
    .map(([, r]) => `${r.Properties.DestinationSecurityGroupId['Fn::GetAtt'][0].replace(/[0-9A-F]{8}$/, '')}:${r.Properties.FromPort}`)
    .sort();
  t.same(gwEgress, ['RedisSg:6379', 'WorkspaceSg:8080'], 'the gateway reaches workspaces and Redis on their ports only');
});

t.test('an existing VPC is imported without lookups', async (t) => {
  const tpl = synth({ ...EXISTING_VPC, students: 1 });
  tpl.resourceCountIs('AWS::EC2::VPC', 0);
  tpl.resourceCountIs('AWS::EC2::Subnet', 0);
  tpl.resourceCountIs('AWS::EFS::MountTarget', 3);
  t.equal(gatewayEnv(tpl).TRUSTED_PROXIES, '10.9.0.0/16');
  t.equal(gatewayEnv(tpl).ECS_SUBNETS, EXISTING_VPC.privateSubnetIds);
  tpl.hasResourceProperties('AWS::ElastiCache::SubnetGroup', { SubnetIds: EXISTING_VPC.privateSubnetIds.split(',') });
});

t.test('rotating GATEWAY_SECRET: GATEWAY_SECRET_ACCEPTED from a named secret, as GATEWAY_SECRET, and the generated one kept', async (t) => {
  const generated = (tpl: Template) => resources(tpl).filter(([, r]) => r.Type === 'AWS::SecretsManager::Secret' && /GATEWAY_SECRET/.test(r.Properties.Description)).map(([id]) => id);
  const secrets = (tpl: Template) => Object.fromEntries((gatewayContainer(tpl).Secrets as Json[]).map((x) => [x.Name, x.ValueFrom]));
  const [id] = generated(small);
  t.same(secrets(small).GATEWAY_SECRET, { Ref: id }, 'by default: the generated secret');
  t.notOk('GATEWAY_SECRET_ACCEPTED' in secrets(small), 'and none accepted');
  const step1 = synth({ students: 1, gatewaySecretAcceptedArn: NEW_SECRET_ARN });
  t.same([secrets(step1).GATEWAY_SECRET, secrets(step1).GATEWAY_SECRET_ACCEPTED], [{ Ref: id }, NEW_SECRET_ARN], 'step 1: the generated one signs, the new one is accepted');
  const step2 = synth({ students: 1, gatewaySecretArn: NEW_SECRET_ARN, gatewaySecretAcceptedArn: OLD_SECRET_ARN });
  t.same([secrets(step2).GATEWAY_SECRET, secrets(step2).GATEWAY_SECRET_ACCEPTED], [NEW_SECRET_ARN, OLD_SECRET_ARN], 'step 2: the new one signs, the old one is accepted');
  t.same(generated(step2), [id], 'the generated secret stays in the stack');
  const policies = JSON.stringify(resources(step2).filter(([, r]) => r.Type === 'AWS::IAM::Policy').map(([, r]) => r.Properties));
  for (const arn of [NEW_SECRET_ARN, OLD_SECRET_ARN]) t.ok(policies.includes(arn), `the execution role may read ${arn.split(':').pop()}`);
});

t.test('configuration is validated before anything is synthesised', async (t) => {
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['too many students for one file system', { students: 10_001 }, /students/],
    ['not a number', { students: 'many' }, /students/],
    ['a single zone', { ...EXISTING_VPC, availabilityZones: 'eu-west-1a', publicSubnetIds: 'subnet-p1', privateSubnetIds: 'subnet-a1' }, /two zones/],
    ['subnets not one per zone', { ...EXISTING_VPC, privateSubnetIds: 'subnet-a1,subnet-a2' }, /privateSubnetIds/],
    ['existing VPC without its CIDR', { ...EXISTING_VPC, vpcCidr: undefined }, /vpcCidr/],
    ['one gateway task', { gatewayMinTasks: 1 }, /gatewayMinTasks/],
    ['max below min', { gatewayMinTasks: 4, gatewayMaxTasks: 3 }, /gatewayMaxTasks/],
    ['invalid Fargate size', { gatewayCpu: 1024, gatewayMemoryMiB: 1024 }, /gatewayMemoryMiB/],
    ['drain longer than the stop timeout allows', { drainSeconds: 115 }, /drainSeconds/],
    ['deregistration delay at the stop timeout', { deregistrationDelaySeconds: 120 }, /deregistrationDelaySeconds/],
    ['bad domain', { domain: 'not a domain' }, /domain/],
    ['bad capacity', { workspaceCapacity: 'spot' }, /workspaceCapacity/],
    ['bad log retention', { logRetentionDays: 2 }, /logRetentionDays/],
    ['a secret named without its ARN suffix', { gatewaySecretAcceptedArn: 'arn:aws:secretsmanager:eu-west-1:111122223333:secret:gw' }, /gatewaySecretAcceptedArn/],
    ['not a secret', { gatewaySecretArn: 'gw-secret' }, /gatewaySecretArn/],
    ['the accepted secret the current one', { gatewaySecretArn: NEW_SECRET_ARN, gatewaySecretAcceptedArn: NEW_SECRET_ARN }, /gatewaySecretAcceptedArn/],
  ];
  for (const [name, ctx, err] of cases) t.throws(() => parseDeployConfig((k) => ctx[k]), err, name);
  const d = parseDeployConfig(() => undefined);
  t.same(
    { domain: d.domain, students: d.students, gw: d.gateway, drain: d.drainSeconds, dereg: d.deregistrationDelaySeconds },
    { domain: 'ecombinators.com', students: 500, gw: { cpu: 1024, memoryMiB: 2048, minTasks: 2, maxTasks: 6, logLevel: 'info' }, drain: 90, dereg: 60 },
    'defaults',
  );
  t.same([1, 1000, 1001, 10_000].map(cloudMapShards), [1, 1, 2, 10]);
});

// ---------------------------------------------------------------- the template as the gateway meets it
// CloudFormation references resolved to values of the shape AWS returns, so the gateway's own config
// parsers and an IAM evaluation can run on the synthesized template.
const ACCOUNT = '111122223333';
const REGION = 'eu-west-1';

function resolver(tpl: Template) {
  const res = tpl.toJSON().Resources as Record<string, Json>;
  const arn = (service: string, rest: string) => (service === 'iam' ? `arn:aws:iam::${ACCOUNT}:${rest}` : `arn:aws:${service}:${REGION}:${ACCOUNT}:${rest}`);
  const slug = (id: string) => id.toLowerCase().replace(/[^a-z0-9]/g, '');
  const ref = (id: string): string => {
    const pseudo: Record<string, string> = { 'AWS::Region': REGION, 'AWS::Partition': 'aws', 'AWS::AccountId': ACCOUNT, 'AWS::URLSuffix': 'amazonaws.com', 'AWS::StackName': 'Test' };
    if (id in pseudo) return pseudo[id];
    if (id === 'PlatformLoginUrl') return 'https://example.edu/login';
    const type = res[id]?.Type;
    switch (type) {
      case 'AWS::ECS::Cluster': return `cluster-${slug(id)}`;
      case 'AWS::EFS::FileSystem': return 'fs-0123456789abcdef0';
      case 'AWS::EC2::Subnet': return `subnet-${slug(id).slice(0, 17)}`;
      case 'AWS::ECS::TaskDefinition': return arn('ecs', `task-definition/${res[id].Properties.Family}:1`);
      default: throw new Error(`no value for Ref ${id} (${type})`);
    }
  };
  const getAtt = (id: string, attr: string): string => {
    const type = res[id]?.Type;
    const key = `${type} ${attr}`;
    switch (key) {
      case 'AWS::ECS::Cluster Arn': return arn('ecs', `cluster/${ref(id)}`);
      case 'AWS::EFS::FileSystem Arn': return arn('elasticfilesystem', `file-system/${ref(id)}`);
      case 'AWS::IAM::Role Arn': return arn('iam', `role/${id}`);
      case 'AWS::ServiceDiscovery::Service Id': return `srv-${slug(id)}`;
      case 'AWS::ServiceDiscovery::Service Arn': return arn('servicediscovery', `service/srv-${slug(id)}`);
      case 'AWS::EC2::SecurityGroup GroupId': return `sg-${slug(id).slice(0, 17)}`;
      case 'AWS::EC2::VPC CidrBlock': return '10.40.0.0/16';
      case 'AWS::ElastiCache::ReplicationGroup PrimaryEndPoint.Address': return 'master.wsgw.abcdef.euw1.cache.amazonaws.com';
      case 'AWS::ElastiCache::ReplicationGroup PrimaryEndPoint.Port': return '6379';
      default: throw new Error(`no value for GetAtt ${id}.${attr} (${type})`);
    }
  };
  const value = (v: unknown): string => {
    if (typeof v === 'string') return v;
    const o = v as Json;
    if (o.Ref) return ref(o.Ref);
    if (o['Fn::GetAtt']) return getAtt(o['Fn::GetAtt'][0], o['Fn::GetAtt'][1]);
    if (o['Fn::Join']) return (o['Fn::Join'][1] as unknown[]).map(value).join(o['Fn::Join'][0]);
    throw new Error(`cannot resolve ${JSON.stringify(v)}`);
  };
  return value;
}

/** The gateway container's environment as the task gets it: variables, and secrets with stand-in values. */
function deployedEnv(tpl: Template): { env: Record<string, string>; names: string[] } {
  const value = resolver(tpl);
  const c = gatewayContainer(tpl);
  const env: Record<string, string> = {};
  for (const e of c.Environment as Json[]) env[e.Name] = value(e.Value);
  for (const s of c.Secrets as Json[]) env[s.Name] = 'x'.repeat(64);
  return { env, names: Object.keys(env) };
}

t.test('the gateway accepts the environment the stack gives it, and reads every variable', async (t) => {
  for (const albIdleTimeoutSeconds of [60, 289, 300, 4000]) {
    const tpl = synth({ students: 1, albIdleTimeoutSeconds });
    const { env, names } = deployedEnv(tpl);
    const read = new Set<string>();
    const tracked = new Proxy(env, { get: (o, k: string) => { read.add(k); return o[k]; } });
    // What gateway/main.ts does: loadConfig, then (PROVISIONER=ecs) the provisioner's parser on config.env.
    const config = loadConfig(tracked);
    t.equal(config.provisioner, 'ecs');
    t.equal(config.publicScheme, 'https');
    t.same(config.trustedProxies.map((c) => `${c.address}/${c.prefix}`), ['10.40.0.0/16'], 'X-Forwarded-For believed from the VPC (the ALB)');
    const ecs = ecsOptionsFromEnv(config.env);
    t.equal(ecs.cloudMapServiceIds.length, 1);
    t.same(names.filter((n) => !read.has(n)), [], `idle ${albIdleTimeoutSeconds}s: every variable the stack sets is one the gateway reads (no typo)`);
    t.ok(config.keepAliveTimeoutMs > albIdleTimeoutSeconds * 1000, 'the gateway outlasts the ALB on idle keep-alive connections');
    // The options gateway/app.ts hands http.createServer; node refuses headersTimeout > requestTimeout.
    t.doesNotThrow(() => http.createServer({
      keepAliveTimeout: config.keepAliveTimeoutMs, headersTimeout: config.headersTimeoutMs, requestTimeout: config.requestTimeoutMs,
    }), `idle ${albIdleTimeoutSeconds}s: the public listener can be created with these timeouts`);
  }
  // The longest drain the deploy settings take: the hard exit still comes after it and its grace.
  for (const drainSeconds of [1, 90, 104]) {
    const config = loadConfig(deployedEnv(synth({ students: 1, drainSeconds })).env);
    t.equal(config.drainPeriodMs, drainSeconds * 1000);
    t.ok(config.shutdownTimeoutMs < 120_000, `drain ${drainSeconds}s: the gateway starts, and exits before ECS's SIGKILL`);
  }
  t.throws(() => synth({ students: 1, drainSeconds: 105 }), /drainSeconds/, 'a drain the hard exit would cut is refused at synth');
});

// ---------------------------------------------------------------- IAM against the provisioner's calls
interface Request { action: string; resource: string; context?: Record<string, string> }

/** Allow/Deny evaluation of identity statements for one request (the operators these policies use). */
function allowed(statements: Json[], req: Request, value: (v: unknown) => string): boolean {
  const glob = (pattern: string, s: string) => new RegExp(`^${pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`).test(s);
  const matches = (st: Json) => {
    if (!asList<string>(st.Action).some((a) => glob(a, req.action))) return false;
    if (!asList<unknown>(st.Resource).map(value).some((r) => glob(r, req.resource))) return false;
    for (const [op, block] of Object.entries((st.Condition ?? {}) as Record<string, Json>)) {
      for (const [key, want] of Object.entries(block)) {
        const got = req.context?.[key];
        const wants = asList<unknown>(want).map(value);
        if (got === undefined) return false;
        if (op === 'StringEquals' || op === 'ArnEquals') { if (!wants.includes(got)) return false; }
        else if (op === 'StringLike' || op === 'ArnLike') { if (!wants.some((w) => glob(w, got))) return false; }
        else throw new Error(`condition operator ${op} not evaluated here`);
      }
    }
    return true;
  };
  const hits = statements.filter(matches);
  return hits.some((s) => s.Effect === 'Allow') && !hits.some((s) => s.Effect === 'Deny');
}

t.test('the gateway role allows every AWS call the provisioner makes', async (t) => {
  const tpl = synth({ students: 2500 });
  const value = resolver(tpl);
  const { env } = deployedEnv(tpl);
  const o = ecsOptionsFromEnv(env);
  const role = Object.keys(tpl.toJSON().Resources).find((id) => id.startsWith('GatewayTaskRole') && !id.includes('Policy'))!;
  const statements = identityStatements(tpl).filter(({ where }) => where.startsWith(`${role.replace(/[0-9A-F]{8}$/, '')}DefaultPolicy`)).map(({ s }) => s);
  t.ok(statements.length > 0, 'the gateway task role has a policy');

  const ecsArn = (rest: string) => `arn:aws:ecs:${REGION}:${ACCOUNT}:${rest}`;
  const cluster = ecsArn(`cluster/${o.cluster}`);
  const inCluster = { 'ecs:cluster': cluster };
  const family = `${o.taskFamilyPrefix}-alice`;
  const taskDef = ecsArn(`task-definition/${family}:3`);
  const task = ecsArn(`task/${o.cluster}/0123456789abcdef0123456789abcdef`);
  const fsArn = `arn:aws:elasticfilesystem:${REGION}:${ACCOUNT}:file-system/${o.efsFileSystemIds[0]}`;
  const apArn = `arn:aws:elasticfilesystem:${REGION}:${ACCOUNT}:access-point/fsap-0123456789abcdef0`;
  const roles = ['WorkspaceTaskRole', 'WorkspaceExecutionRole'].map((r) => value({ 'Fn::GetAtt': [Object.keys(tpl.toJSON().Resources).find((id) => id.startsWith(r))!, 'Arn'] }));
  const passRoles = roles.map((resource) => ({ action: 'iam:PassRole', resource, context: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } }));
  const services = o.cloudMapServiceIds.map((id) => `arn:aws:servicediscovery:${REGION}:${ACCOUNT}:service/${id}`);
  t.equal(services.length, 3);

  // Each command the provisioner sends, as IAM authorizes it: the resource type and condition keys
  // of the Service Authorization Reference for ECS, EFS and Cloud Map ("*" where an action has no
  // resource type), and the dependent actions (tag on create, iam:PassRole).
  const calls: Record<string, Request[]> = {
    DescribeTaskDefinition: [{ action: 'ecs:DescribeTaskDefinition', resource: '*' }],
    RegisterTaskDefinition: [
      { action: 'ecs:RegisterTaskDefinition', resource: taskDef },
      { action: 'ecs:TagResource', resource: taskDef, context: { 'ecs:CreateAction': 'RegisterTaskDefinition' } },
      ...passRoles,
    ],
    RunTask: [
      { action: 'ecs:RunTask', resource: taskDef, context: inCluster },
      { action: 'ecs:TagResource', resource: task, context: { 'ecs:CreateAction': 'RunTask' } },
      ...passRoles,
    ],
    DescribeTasks: [{ action: 'ecs:DescribeTasks', resource: task, context: inCluster }],
    StopTask: [{ action: 'ecs:StopTask', resource: task, context: inCluster }],
    ListTasks: [{ action: 'ecs:ListTasks', resource: ecsArn(`container-instance/${o.cluster}/*`), context: inCluster }],
    CreateAccessPoint: [
      { action: 'elasticfilesystem:CreateAccessPoint', resource: fsArn, context: { 'aws:RequestTag/ManagedBy': o.startedBy } },
      { action: 'elasticfilesystem:TagResource', resource: apArn, context: { 'elasticfilesystem:CreateAction': 'CreateAccessPoint' } },
    ],
    DescribeAccessPoints: [{ action: 'elasticfilesystem:DescribeAccessPoints', resource: fsArn }],
    RegisterInstance: services.map((resource) => ({ action: 'servicediscovery:RegisterInstance', resource })),
    DeregisterInstance: services.map((resource) => ({ action: 'servicediscovery:DeregisterInstance', resource })),
    GetInstance: services.map((resource) => ({ action: 'servicediscovery:GetInstance', resource })),
    ListInstances: services.map((resource) => ({ action: 'servicediscovery:ListInstances', resource })),
  };

  // Every command class the provisioner uses has a row above: a new AWS call cannot go unchecked.
  const dir = resolve(import.meta.dirname, '..', '..', 'provisioner');
  const used = new Set<string>();
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.ts'))) {
    for (const m of readFileSync(join(dir, f), 'utf8').matchAll(/new (\w+)Command\(/g)) used.add(m[1]);
  }
  t.same([...used].filter((c) => !(c in calls)).sort(), [], 'every provisioner command is in the table');
  t.ok(used.size >= 12, `${used.size} commands found`);

  for (const [command, requests] of Object.entries(calls)) {
    for (const req of requests) t.ok(allowed(statements, req, value), `${command}: ${req.action} on ${req.resource}`);
  }
  // And what it must not do.
  const denied: Request[] = [
    { action: 'ecs:RunTask', resource: ecsArn('task-definition/wsbase-code-server:1'), context: inCluster },
    { action: 'ecs:RunTask', resource: taskDef, context: { 'ecs:cluster': ecsArn('cluster/other') } },
    { action: 'ecs:StopTask', resource: ecsArn('task/other/0123'), context: { 'ecs:cluster': ecsArn('cluster/other') } },
    { action: 'ecs:RegisterTaskDefinition', resource: ecsArn('task-definition/other:1') },
    { action: 'elasticfilesystem:CreateAccessPoint', resource: fsArn, context: { 'aws:RequestTag/ManagedBy': 'someone-else' } },
    { action: 'elasticfilesystem:CreateAccessPoint', resource: fsArn },
    { action: 'iam:PassRole', resource: `arn:aws:iam::${ACCOUNT}:role/Admin`, context: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } },
    { action: 'servicediscovery:RegisterInstance', resource: `arn:aws:servicediscovery:${REGION}:${ACCOUNT}:service/srv-other` },
  ];
  for (const req of denied) t.notOk(allowed(statements, req, value), `denied: ${req.action} on ${req.resource}`);
});

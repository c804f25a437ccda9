// The whole system on AWS in one stack (issue 9): one ALB rule and one target group (the gateway
// service) for any number of workspaces, the ECS cluster the gateway launches workspaces into, Cloud
// Map, EFS, ElastiCache Redis, the security-group matrix, least-privilege IAM and alarms.
// Nothing here is per workspace: the gateway creates a student's access point, task-definition
// family and task at run time, inside the bounds the IAM policy below draws.

import { Annotations, Aws, CfnOutput, CfnParameter, Duration, Fn, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as efs from 'aws-cdk-lib/aws-efs';
import * as elasticache from 'aws-cdk-lib/aws-elasticache';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as route53 from 'aws-cdk-lib/aws-route53';
import * as route53Targets from 'aws-cdk-lib/aws-route53-targets';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as servicediscovery from 'aws-cdk-lib/aws-servicediscovery';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as snsSubscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import type { Construct } from 'constructs';
import {
  ADMIN_PORT,
  cloudMapShards,
  type DeployConfig,
  FARGATE_MAX_STOP_TIMEOUT_SECONDS,
  SHUTDOWN_TIMEOUT_SECONDS,
  GATEWAY_PORT,
  REDIS_PORT,
  WORKSPACE_PORT,
} from './config.js';

/** The gateway's ECS_STARTED_BY, and the tag value it must put on what it creates (see gatewayPolicy). */
export const STARTED_BY = 'workspace-gateway';
/** Tag key the gateway must set on access points it creates (aws:RequestTag condition). */
export const MANAGED_BY_TAG = 'ManagedBy';
export const WORKSPACE_MOUNT = '/home/coder/workspace';

export interface WorkspaceGatewayStackProps extends StackProps {
  config: DeployConfig;
}

export class WorkspaceGatewayStack extends Stack {
  constructor(scope: Construct, id: string, props: WorkspaceGatewayStackProps) {
    super(scope, id, props);
    const cfg = props.config;

    // Deploy-time values: they never change the template's shape, so synth needs none of them.
    const certificateArn = new CfnParameter(this, 'CertificateArn', {
      type: 'String',
      description: `ACM certificate ARN covering *.${cfg.domain} (in this stack's region)`,
      allowedPattern: '^arn:aws[a-z-]*:acm:.+$',
    }).valueAsString;
    const gatewayImage = new CfnParameter(this, 'GatewayImage', {
      type: 'String',
      description: 'Gateway image URI built from the repository Dockerfile, e.g. ACCOUNT.dkr.ecr.REGION.amazonaws.com/workspace-gateway:1.2.3',
      minLength: 1,
    }).valueAsString;
    const codeServerImage = new CfnParameter(this, 'CodeServerImage', {
      type: 'String',
      description: 'Workspace image URI built from codeserver/Dockerfile',
      minLength: 1,
    }).valueAsString;
    const platformLoginUrl = new CfnParameter(this, 'PlatformLoginUrl', {
      type: 'String',
      description: 'Where the gateway sends a student without a session (PLATFORM_LOGIN_URL)',
      allowedPattern: '^https://.+$',
    }).valueAsString;

    // ---------------------------------------------------------------- network
    const vpc: ec2.IVpc =
      'existing' in cfg.vpc
        ? ec2.Vpc.fromVpcAttributes(this, 'Vpc', {
            vpcId: cfg.vpc.existing.vpcId,
            vpcCidrBlock: cfg.vpc.existing.cidr,
            availabilityZones: cfg.vpc.existing.availabilityZones,
            publicSubnetIds: cfg.vpc.existing.publicSubnetIds,
            privateSubnetIds: cfg.vpc.existing.privateSubnetIds,
          })
        : new ec2.Vpc(this, 'Vpc', {
            ipAddresses: ec2.IpAddresses.cidr(cfg.vpc.create.cidr),
            maxAzs: cfg.vpc.create.maxAzs,
            natGateways: cfg.vpc.create.natGateways,
            subnetConfiguration: [
              { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 22 },
              // One IP per running workspace task (awsvpc): /18 per zone leaves room for 10,000 students.
              { name: 'private', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 18 },
            ],
          });
    if ('existing' in cfg.vpc) {
      // Route-table ids only matter for gateway VPC endpoints, which this stack does not add.
      Annotations.of(this).acknowledgeWarning('@aws-cdk/aws-ec2:noSubnetRouteTableId', 'no gateway endpoints are created');
    }
    const vpcCidr = 'existing' in cfg.vpc ? cfg.vpc.existing.cidr : vpc.vpcCidrBlock;
    const privateSubnets = vpc.selectSubnets({ subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS });

    // ---------------------------------------------------------------- security groups
    // The matrix (issue 9): internet -> ALB 80/443; ALB -> gateway 8080 (+9090 health check);
    // VPC -> gateway 9090 (Prometheus, admin API with its bearer token); gateway -> workspaces 8080;
    // workspaces -> EFS 2049; gateway -> Redis 6379. Nothing else is let in.
    const albSg = new ec2.SecurityGroup(this, 'AlbSg', { vpc, description: 'ALB: HTTPS and the HTTP redirect from anywhere', allowAllOutbound: false });
    const gatewaySg = new ec2.SecurityGroup(this, 'GatewaySg', { vpc, description: 'Gateway tasks', allowAllOutbound: false });
    const workspaceSg = new ec2.SecurityGroup(this, 'WorkspaceSg', {
      vpc,
      description: 'Workspace (code-server) tasks: only the gateway gets in',
      // Students install packages and clone repositories; the images come from ECR.
      allowAllOutbound: true,
    });
    const efsSg = new ec2.SecurityGroup(this, 'EfsSg', { vpc, description: 'EFS mount targets: workspaces only', allowAllOutbound: false });
    const redisSg = new ec2.SecurityGroup(this, 'RedisSg', { vpc, description: 'Redis: gateway only', allowAllOutbound: false });

    albSg.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS from browsers');
    albSg.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(80), 'HTTP, redirected to HTTPS');
    gatewaySg.connections.allowFrom(albSg, ec2.Port.tcp(GATEWAY_PORT), 'ALB to the gateway listener');
    gatewaySg.connections.allowFrom(albSg, ec2.Port.tcp(ADMIN_PORT), 'ALB health check on /readyz');
    gatewaySg.addIngressRule(ec2.Peer.ipv4(vpcCidr), ec2.Port.tcp(ADMIN_PORT), 'Prometheus and the admin API from inside the VPC');
    gatewaySg.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'AWS APIs (ECS, EFS, Cloud Map), ECR, CloudWatch Logs');
    workspaceSg.connections.allowFrom(gatewaySg, ec2.Port.tcp(WORKSPACE_PORT), 'gateway to code-server');
    efsSg.connections.allowFrom(workspaceSg, ec2.Port.tcp(2049), 'NFS from workspaces');
    redisSg.connections.allowFrom(gatewaySg, ec2.Port.tcp(REDIS_PORT), 'gateway to Redis');

    // ---------------------------------------------------------------- secrets
    const secret = (id: string, description: string) =>
      new secretsmanager.Secret(this, id, {
        description,
        // ElastiCache AUTH tokens refuse some punctuation; letters and digits suit all three.
        generateSecretString: { passwordLength: 64, excludePunctuation: true },
      });
    const generatedGatewaySecret = secret('GatewaySecret', 'GATEWAY_SECRET: signs the gateway session cookies');
    // A rotation (README "Rotating GATEWAY_SECRET") names existing secrets by ARN; the generated one
    // stays in the stack either way, so a step that still accepts it cannot lose it.
    const byArn = (id: string, arn: string | undefined) => (arn === undefined ? undefined : secretsmanager.Secret.fromSecretCompleteArn(this, id, arn));
    const gatewaySecret = byArn('GatewaySecretInUse', cfg.gatewaySecretArns.current) ?? generatedGatewaySecret;
    const gatewaySecretAccepted = byArn('GatewaySecretAccepted', cfg.gatewaySecretArns.accepted);
    const adminToken = secret('AdminToken', 'ADMIN_TOKEN: bearer token of the gateway admin API');
    const redisAuth = secret('RedisAuth', 'REDIS_PASSWORD: the ElastiCache AUTH token');

    // ---------------------------------------------------------------- Redis
    const redisSubnets = new elasticache.CfnSubnetGroup(this, 'RedisSubnets', {
      description: 'Private subnets for the gateway state store',
      subnetIds: privateSubnets.subnetIds,
    });
    const redis = new elasticache.CfnReplicationGroup(this, 'Redis', {
      replicationGroupDescription: 'Workspace gateway state (leases, sessions, activity)',
      engine: 'redis',
      engineVersion: '7.1',
      cacheNodeType: cfg.redisNodeType,
      numCacheClusters: 2,
      automaticFailoverEnabled: true,
      multiAzEnabled: true,
      port: REDIS_PORT,
      cacheSubnetGroupName: redisSubnets.ref,
      securityGroupIds: [redisSg.securityGroupId],
      atRestEncryptionEnabled: true,
      transitEncryptionEnabled: true,
      transitEncryptionMode: 'required',
      // A dynamic reference: CloudFormation resolves it, the template never holds the token.
      authToken: redisAuth.secretValue.unsafeUnwrap(),
      snapshotRetentionLimit: 1,
    });

    // ---------------------------------------------------------------- EFS
    const workspaceTaskRole = new iam.Role(this, 'WorkspaceTaskRole', {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: 'code-server tasks: mount their own EFS access point, nothing else',
    });
    const workspaceExecutionRole = new iam.Role(this, 'WorkspaceExecutionRole', {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: 'ECS agent for workspace tasks: pull the image, write logs',
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AmazonECSTaskExecutionRolePolicy')],
    });
    const fileSystem = new efs.FileSystem(this, 'StudentFiles', {
      vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, onePerAz: true },
      securityGroup: efsSg,
      encrypted: true,
      throughputMode: efs.ThroughputMode.ELASTIC,
      performanceMode: efs.PerformanceMode.GENERAL_PURPOSE,
      lifecyclePolicy: efs.LifecyclePolicy.AFTER_30_DAYS,
      outOfInfrequentAccessPolicy: efs.OutOfInfrequentAccessPolicy.AFTER_1_ACCESS,
      enableAutomaticBackups: true,
      // Students' work outlives the stack.
      removalPolicy: RemovalPolicy.RETAIN,
      // `true` only stops CDK adding its own statement (ClientWrite + ClientRootAccess for any IAM
      // principal); the policy below admits no anonymous client: once a file-system policy exists,
      // EFS grants only what it allows.
      allowAnonymousAccess: true,
    });
    const clientActions = ['elasticfilesystem:ClientMount', 'elasticfilesystem:ClientWrite', 'elasticfilesystem:ClientRootAccess'];
    // Only through an access point (each pins a student's uid/gid and directory), only over TLS
    // (https://docs.aws.amazon.com/efs/latest/ug/iam-access-control-nfs-efs.html).
    const denyClients = (sid: string, conditions: Record<string, unknown>) =>
      fileSystem.addToResourcePolicy(
        new iam.PolicyStatement({ sid, effect: iam.Effect.DENY, principals: [new iam.AnyPrincipal()], actions: clientActions, resources: ['*'], conditions }),
      );
    denyClients('DenyWithoutAccessPoint', { Null: { 'elasticfilesystem:AccessPointArn': 'true' } });
    denyClients('DenyWithoutTls', { Bool: { 'aws:SecureTransport': 'false' } });
    fileSystem.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'WorkspacesThroughMountTargets',
        effect: iam.Effect.ALLOW,
        principals: [workspaceTaskRole],
        actions: ['elasticfilesystem:ClientMount', 'elasticfilesystem:ClientWrite'],
        resources: ['*'],
        conditions: { Bool: { 'elasticfilesystem:AccessedViaMountTarget': 'true' } },
      }),
    );
    workspaceTaskRole.addToPolicy(
      new iam.PolicyStatement({
        sid: 'MountOwnAccessPoint',
        actions: ['elasticfilesystem:ClientMount', 'elasticfilesystem:ClientWrite'],
        resources: [fileSystem.fileSystemArn],
        conditions: { Bool: { 'elasticfilesystem:AccessedViaMountTarget': 'true' } },
      }),
    );

    // ---------------------------------------------------------------- ECS cluster, Cloud Map
    const cluster = new ecs.Cluster(this, 'Cluster', {
      vpc,
      enableFargateCapacityProviders: true,
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });
    // An HTTP namespace: the gateway finds workspaces with ListInstances, never by DNS, so
    // RegisterInstance needs no Route 53 permissions (a DNS namespace would need
    // route53:ChangeResourceRecordSets and friends on a hosted zone) and there is no TTL to wait out.
    const namespace = new servicediscovery.HttpNamespace(this, 'Workspaces', {
      name: `${Aws.STACK_NAME}-workspaces`,
      description: 'Running workspaces, registered by the gateway',
    });
    // Sharded by a stable hash of the workspace id in the gateway; one service per 1,000 students
    // (Cloud Map's instances-per-service quota), never one per student.
    const cloudMapServices = Array.from({ length: cloudMapShards(cfg.students) }, (_, i) =>
      namespace.createService(`Shard${i}`, { name: `workspaces-${i}`, description: `Workspaces, shard ${i}` }),
    );

    // ---------------------------------------------------------------- workspace base task definition
    const workspaceLogs = new logs.LogGroup(this, 'WorkspaceLogs', { retention: cfg.logRetentionDays, removalPolicy: RemovalPolicy.DESTROY });
    const workspaceTaskDef = new ecs.FargateTaskDefinition(this, 'WorkspaceBase', {
      family: cfg.workspace.baseFamily,
      cpu: cfg.workspace.cpu,
      memoryLimitMiB: cfg.workspace.memoryMiB,
      taskRole: workspaceTaskRole,
      executionRole: workspaceExecutionRole,
      runtimePlatform: { cpuArchitecture: ecs.CpuArchitecture.X86_64, operatingSystemFamily: ecs.OperatingSystemFamily.LINUX },
      // The gateway copies this definition into `<prefix>-<id>` with the student's access point.
      volumes: [
        {
          name: 'workspace',
          efsVolumeConfiguration: {
            fileSystemId: fileSystem.fileSystemId,
            transitEncryption: 'ENABLED',
            authorizationConfig: { iam: 'ENABLED' },
          },
        },
      ],
    });
    const codeServer = workspaceTaskDef.addContainer('code-server', {
      containerName: 'code-server',
      image: ecs.ContainerImage.fromRegistry(codeServerImage),
      essential: true,
      portMappings: [{ containerPort: WORKSPACE_PORT, name: 'http' }],
      environment: { WORKSPACE_PORT: String(WORKSPACE_PORT), WORKSPACE_DIR: WORKSPACE_MOUNT },
      logging: ecs.LogDrivers.awsLogs({ logGroup: workspaceLogs, streamPrefix: 'ws' }),
      linuxParameters: new ecs.LinuxParameters(this, 'WorkspaceLinux', { initProcessEnabled: true }),
      stopTimeout: Duration.seconds(30),
      healthCheck: {
        command: ['CMD-SHELL', `curl -fsS http://127.0.0.1:${WORKSPACE_PORT}/healthz || exit 1`],
        interval: Duration.seconds(15),
        timeout: Duration.seconds(5),
        retries: 3,
        startPeriod: Duration.seconds(60),
      },
    });
    codeServer.addMountPoints({ sourceVolume: 'workspace', containerPath: WORKSPACE_MOUNT, readOnly: false });

    // ---------------------------------------------------------------- gateway
    const gatewayTaskRole = new iam.Role(this, 'GatewayTaskRole', {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: 'Workspace gateway: start/stop workspaces in this cluster only',
    });
    const gatewayExecutionRole = new iam.Role(this, 'GatewayExecutionRole', {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: 'ECS agent for gateway tasks: pull the image, read its secrets, write logs',
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AmazonECSTaskExecutionRolePolicy')],
    });
    for (const statement of gatewayPolicy(this, {
      cluster,
      fileSystem,
      taskFamilyPrefix: cfg.workspace.taskFamilyPrefix,
      passRoles: [workspaceTaskRole, workspaceExecutionRole],
      cloudMapServices,
    })) {
      gatewayTaskRole.addToPolicy(statement);
    }

    const keepAliveSeconds = cfg.albIdleTimeoutSeconds + 10;
    const gatewayLogs = new logs.LogGroup(this, 'GatewayLogs', { retention: cfg.logRetentionDays, removalPolicy: RemovalPolicy.DESTROY });
    const gatewayTaskDef = new ecs.FargateTaskDefinition(this, 'GatewayTaskDef', {
      cpu: cfg.gateway.cpu,
      memoryLimitMiB: cfg.gateway.memoryMiB,
      taskRole: gatewayTaskRole,
      executionRole: gatewayExecutionRole,
      runtimePlatform: { cpuArchitecture: ecs.CpuArchitecture.X86_64, operatingSystemFamily: ecs.OperatingSystemFamily.LINUX },
    });
    gatewayTaskDef.addContainer('gateway', {
      containerName: 'gateway',
      image: ecs.ContainerImage.fromRegistry(gatewayImage),
      essential: true,
      portMappings: [
        { containerPort: GATEWAY_PORT, name: 'public' },
        { containerPort: ADMIN_PORT, name: 'admin' },
      ],
      environment: {
        GATEWAY_PORT: String(GATEWAY_PORT),
        ADMIN_PORT: String(ADMIN_PORT),
        BASE_DOMAIN: cfg.domain,
        PUBLIC_SCHEME: 'https',
        PLATFORM_LOGIN_URL: platformLoginUrl,
        REDIS_URL: Fn.join('', ['rediss://', redis.attrPrimaryEndPointAddress, ':', redis.attrPrimaryEndPointPort]),
        TRUSTED_PROXIES: vpcCidr,
        // Longer than the ALB idle timeout, so the ALB, not the gateway, closes idle keep-alive
        // connections and never sends a request on a socket the gateway just closed (502).
        KEEPALIVE_TIMEOUT: `${keepAliveSeconds}s`,
        // node:http refuses a headersTimeout above requestTimeout (ERR_OUT_OF_RANGE from
        // http.createServer): the gateway's defaults, keep-alive + 1 s and 300 s, crashed it at start
        // whenever the ALB idle timeout is 290 s or more, the 300 s default included.
        HEADERS_TIMEOUT: `${keepAliveSeconds + 1}s`,
        REQUEST_TIMEOUT: `${Math.max(300, keepAliveSeconds + 1)}s`,
        DRAIN_PERIOD: `${cfg.drainSeconds}s`,
        SHUTDOWN_TIMEOUT: `${SHUTDOWN_TIMEOUT_SECONDS}s`,
        IDLE_TIMEOUT: cfg.idleTimeout,
        MAX_SESSION: cfg.maxSession,
        LOG_LEVEL: cfg.gateway.logLevel,
        PROVISIONER: 'ecs',
        AWS_REGION: Aws.REGION,
        ECS_CLUSTER: cluster.clusterName,
        ECS_SUBNETS: privateSubnets.subnetIds.join(','),
        ECS_SECURITY_GROUPS: workspaceSg.securityGroupId,
        ECS_BASE_TASK_DEFINITION: workspaceTaskDef.taskDefinitionArn,
        ECS_TASK_FAMILY_PREFIX: cfg.workspace.taskFamilyPrefix,
        ECS_CONTAINER_NAME: codeServer.containerName,
        ECS_CAPACITY: cfg.workspace.capacity,
        ECS_STARTED_BY: STARTED_BY,
        EFS_FILE_SYSTEM_ID: fileSystem.fileSystemId,
        EFS_ROOT_DIR: '/students',
        EFS_POSIX_UID: '1000',
        EFS_POSIX_GID: '1000',
        CLOUDMAP_SERVICE_IDS: Fn.join(',', cloudMapServices.map((s) => s.serviceId)),
        WORKSPACE_PORT: String(WORKSPACE_PORT),
      },
      secrets: {
        GATEWAY_SECRET: ecs.Secret.fromSecretsManager(gatewaySecret),
        ...(gatewaySecretAccepted ? { GATEWAY_SECRET_ACCEPTED: ecs.Secret.fromSecretsManager(gatewaySecretAccepted) } : {}),
        ADMIN_TOKEN: ecs.Secret.fromSecretsManager(adminToken),
        REDIS_PASSWORD: ecs.Secret.fromSecretsManager(redisAuth),
      },
      logging: ecs.LogDrivers.awsLogs({ logGroup: gatewayLogs, streamPrefix: 'gateway' }),
      // ECS's own init (docker --init) as PID 1 reaps and forwards SIGTERM; the image also has tini.
      linuxParameters: new ecs.LinuxParameters(this, 'GatewayLinux', { initProcessEnabled: true }),
      // SIGTERM -> DRAIN_PERIOD of open WebSockets -> 1001 -> exit, before SIGKILL.
      stopTimeout: Duration.seconds(FARGATE_MAX_STOP_TIMEOUT_SECONDS),
      readonlyRootFilesystem: true,
      // One file descriptor per proxied socket, two per WebSocket.
      ulimits: [{ name: ecs.UlimitName.NOFILE, softLimit: 65535, hardLimit: 65535 }],
      healthCheck: {
        command: ['CMD', 'node', '-e', `fetch('http://127.0.0.1:${ADMIN_PORT}/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))`],
        interval: Duration.seconds(15),
        timeout: Duration.seconds(5),
        retries: 3,
        startPeriod: Duration.seconds(30),
      },
    });

    const gatewayService = new ecs.FargateService(this, 'GatewayService', {
      cluster,
      taskDefinition: gatewayTaskDef,
      desiredCount: cfg.gateway.minTasks,
      securityGroups: [gatewaySg],
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      assignPublicIp: false,
      // On-demand only: a Spot reclaim would cut every student on that replica at once.
      capacityProviderStrategies: [{ capacityProvider: 'FARGATE', weight: 1, base: cfg.gateway.minTasks }],
      // Rolling update: new tasks are healthy behind the ALB before an old one starts draining.
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { enable: true, rollback: true },
      healthCheckGracePeriod: Duration.seconds(60),
      availabilityZoneRebalancing: ecs.AvailabilityZoneRebalancing.ENABLED,
      propagateTags: ecs.PropagatedTagSource.SERVICE,
    });
    const scaling = gatewayService.autoScaleTaskCount({ minCapacity: cfg.gateway.minTasks, maxCapacity: cfg.gateway.maxTasks });
    // Scale in slowly: every task removed closes its WebSockets (students reconnect to another one).
    scaling.scaleOnCpuUtilization('Cpu', { targetUtilizationPercent: 60, scaleOutCooldown: Duration.seconds(60), scaleInCooldown: Duration.minutes(10) });
    scaling.scaleOnMemoryUtilization('Memory', { targetUtilizationPercent: 70, scaleOutCooldown: Duration.seconds(60), scaleInCooldown: Duration.minutes(10) });

    // ---------------------------------------------------------------- ALB: one rule, one target group
    const alb = new elbv2.ApplicationLoadBalancer(this, 'Alb', {
      vpc,
      internetFacing: true,
      securityGroup: albSg,
      vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC },
      // WebSockets sit idle between VS Code's 5 s keep-alives, but terminals and long reads may not.
      idleTimeout: Duration.seconds(cfg.albIdleTimeoutSeconds),
      http2Enabled: true,
      dropInvalidHeaderFields: true,
    });
    const targets = new elbv2.ApplicationTargetGroup(this, 'GatewayTargets', {
      vpc,
      targetType: elbv2.TargetType.IP,
      protocol: elbv2.ApplicationProtocol.HTTP,
      port: GATEWAY_PORT,
      // Below the stop timeout: ECS deregisters a task and waits this long before SIGTERM.
      deregistrationDelay: Duration.seconds(cfg.deregistrationDelaySeconds),
      healthCheck: {
        path: '/readyz',
        port: String(ADMIN_PORT),
        protocol: elbv2.Protocol.HTTP,
        healthyHttpCodes: '200',
        interval: Duration.seconds(10),
        timeout: Duration.seconds(5),
        healthyThresholdCount: 2,
        unhealthyThresholdCount: 2,
      },
    });
    gatewayService.attachToApplicationTargetGroup(targets);
    const https = alb.addListener('Https', {
      port: 443,
      protocol: elbv2.ApplicationProtocol.HTTPS,
      certificates: [elbv2.ListenerCertificate.fromArn(certificateArn)],
      sslPolicy: elbv2.SslPolicy.RECOMMENDED_TLS,
      open: false,
      defaultAction: elbv2.ListenerAction.fixedResponse(404, { contentType: 'text/plain', messageBody: 'No such workspace host' }),
    });
    new elbv2.ApplicationListenerRule(this, 'WorkspacesRule', {
      listener: https,
      priority: 10,
      conditions: [elbv2.ListenerCondition.hostHeaders([`*.${cfg.domain}`])],
      action: elbv2.ListenerAction.forward([targets]),
    });
    alb.addListener('Http', {
      port: 80,
      protocol: elbv2.ApplicationProtocol.HTTP,
      open: false,
      defaultAction: elbv2.ListenerAction.redirect({ protocol: 'HTTPS', port: '443', permanent: true }),
    });

    if (cfg.hostedZoneId !== undefined) {
      const zone = route53.HostedZone.fromHostedZoneAttributes(this, 'Zone', { hostedZoneId: cfg.hostedZoneId, zoneName: cfg.domain });
      new route53.ARecord(this, 'WildcardAlias', {
        zone,
        recordName: `*.${cfg.domain}.`,
        target: route53.RecordTarget.fromAlias(new route53Targets.LoadBalancerTarget(alb)),
      });
    }

    // ---------------------------------------------------------------- alarms
    // AWS-side symptoms here; the gateway's own signals (start failures, queue depth, stuck starts)
    // are Prometheus rules in deploy/prometheus/*.rules.yml, scraped from port 9090.
    const topic = new sns.Topic(this, 'Alarms', { displayName: 'Workspace gateway alarms' });
    if (cfg.alarmEmail !== undefined) topic.addSubscription(new snsSubscriptions.EmailSubscription(cfg.alarmEmail));
    const alarm = (id: string, metric: cloudwatch.IMetric, threshold: number, description: string, op = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD, periods = 3) => {
      const a = new cloudwatch.Alarm(this, id, {
        metric,
        threshold,
        evaluationPeriods: periods,
        datapointsToAlarm: periods,
        comparisonOperator: op,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        alarmDescription: description,
      });
      a.addAlarmAction(new cwActions.SnsAction(topic));
      return a;
    };
    const minute = Duration.minutes(1);
    alarm('HealthyGatewaysLow', targets.metrics.healthyHostCount({ period: minute, statistic: 'Minimum' }), cfg.gateway.minTasks,
      'Fewer ready gateway tasks than the minimum: a zone or a rollout is failing', cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD);
    alarm('AlbGatewayUnreachable', alb.metrics.httpCodeElb(elbv2.HttpCodeElb.ELB_5XX_COUNT, { period: minute, statistic: 'Sum' }), 25,
      'ALB 5xx: no healthy gateway, or gateways closing connections under the ALB (keep-alive mismatch)');
    alarm('GatewayErrors', targets.metrics.httpCodeTarget(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, { period: minute, statistic: 'Sum' }), 50,
      'Gateway 5xx: workspace starts failing or workspaces unreachable');
    alarm('GatewayCpuHigh', gatewayService.metricCpuUtilization({ period: minute }), 85,
      'Gateway CPU high although autoscaling should add tasks: maxTasks reached?', cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD, 5);
    alarm('GatewayMemoryHigh', gatewayService.metricMemoryUtilization({ period: minute }), 85,
      'Gateway memory high: too many sockets per task, or a leak', cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD, 5);
    const redisMetric = (metricName: string) =>
      new cloudwatch.Metric({ namespace: 'AWS/ElastiCache', metricName, dimensionsMap: { ReplicationGroupId: redis.ref }, period: minute, statistic: 'Maximum' });
    alarm('RedisCpuHigh', redisMetric('EngineCPUUtilization'), 80, 'Redis engine CPU high: every proxied request depends on it', cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD, 5);
    alarm('RedisMemoryHigh', redisMetric('DatabaseMemoryUsagePercentage'), 80, 'Redis memory high: evictions would drop leases and sessions');

    // ---------------------------------------------------------------- outputs
    new CfnOutput(this, 'LoadBalancerDns', { value: alb.loadBalancerDnsName, description: `Point *.${cfg.domain} here (alias or CNAME)` });
    new CfnOutput(this, 'ClusterName', { value: cluster.clusterName });
    new CfnOutput(this, 'GatewayServiceName', { value: gatewayService.serviceName });
    new CfnOutput(this, 'FileSystemId', { value: fileSystem.fileSystemId });
    new CfnOutput(this, 'CloudMapServiceIds', { value: Fn.join(',', cloudMapServices.map((s) => s.serviceId)) });
    new CfnOutput(this, 'AdminTokenSecret', { value: adminToken.secretArn });
    new CfnOutput(this, 'GeneratedGatewaySecret', { value: generatedGatewaySecret.secretArn, description: 'The generated GATEWAY_SECRET, for gatewaySecretArn or gatewaySecretAcceptedArn in a rotation' });
    new CfnOutput(this, 'AlarmTopic', { value: topic.topicArn });
  }
}

export interface GatewayPolicyScope {
  cluster: ecs.ICluster;
  fileSystem: efs.IFileSystem;
  taskFamilyPrefix: string;
  passRoles: iam.IRole[];
  cloudMapServices: servicediscovery.IService[];
}

/**
 * What the gateway's task role may do, and nothing more: run, stop and describe tasks of the
 * workspace families in this cluster, pass only the workspace roles, register instances only in
 * these Cloud Map services, create access points only on this file system, tagged as ours.
 * Resource types and condition keys: Service Authorization Reference for ECS, EFS, Cloud Map.
 */
export function gatewayPolicy(stack: Stack, s: GatewayPolicyScope): iam.PolicyStatement[] {
  const arn = (service: string, resource: string, resourceName: string) =>
    stack.formatArn({ service, resource, resourceName });
  const workspaceFamilies = arn('ecs', 'task-definition', `${s.taskFamilyPrefix}-*:*`);
  const clusterTasks = arn('ecs', 'task', `${s.cluster.clusterName}/*`);
  const clusterInstances = arn('ecs', 'container-instance', `${s.cluster.clusterName}/*`);
  const accessPoints = arn('elasticfilesystem', 'access-point', '*');
  const inCluster = { ArnEquals: { 'ecs:cluster': s.cluster.clusterArn } };
  return [
    new iam.PolicyStatement({
      sid: 'CreateTaggedAccessPoints',
      actions: ['elasticfilesystem:CreateAccessPoint'],
      resources: [s.fileSystem.fileSystemArn],
      conditions: { StringEquals: { [`aws:RequestTag/${MANAGED_BY_TAG}`]: STARTED_BY } },
    }),
    new iam.PolicyStatement({
      sid: 'DescribeAccessPoints',
      actions: ['elasticfilesystem:DescribeAccessPoints'],
      resources: [s.fileSystem.fileSystemArn, accessPoints],
    }),
    new iam.PolicyStatement({
      sid: 'TagAccessPointsOnCreate',
      actions: ['elasticfilesystem:TagResource'],
      resources: [s.fileSystem.fileSystemArn, accessPoints],
      conditions: { StringEquals: { 'elasticfilesystem:CreateAction': 'CreateAccessPoint' } },
    }),
    new iam.PolicyStatement({
      sid: 'RegisterWorkspaceFamilies',
      actions: ['ecs:RegisterTaskDefinition'],
      resources: [workspaceFamilies],
    }),
    new iam.PolicyStatement({
      sid: 'DescribeTaskDefinitions',
      actions: ['ecs:DescribeTaskDefinition'],
      // DescribeTaskDefinition has no resource type in the Service Authorization Reference for ECS
      // ("specify all resources"): a statement scoped to family ARNs never matches it, and every
      // start, which reads the base first, was denied. Read-only, and no condition key exists.
      resources: ['*'],
    }),
    new iam.PolicyStatement({
      sid: 'RunWorkspacesInThisCluster',
      actions: ['ecs:RunTask'],
      resources: [workspaceFamilies],
      conditions: inCluster,
    }),
    new iam.PolicyStatement({
      sid: 'ManageTasksInThisCluster',
      actions: ['ecs:StopTask', 'ecs:DescribeTasks'],
      resources: [clusterTasks],
      conditions: inCluster,
    }),
    new iam.PolicyStatement({
      sid: 'ListTasksInThisCluster',
      actions: ['ecs:ListTasks'],
      resources: [clusterInstances],
      conditions: inCluster,
    }),
    new iam.PolicyStatement({
      sid: 'TagOnCreate',
      actions: ['ecs:TagResource'],
      resources: [clusterTasks, workspaceFamilies],
      conditions: { StringEquals: { 'ecs:CreateAction': ['RunTask', 'RegisterTaskDefinition'] } },
    }),
    new iam.PolicyStatement({
      sid: 'PassOnlyWorkspaceRoles',
      actions: ['iam:PassRole'],
      resources: s.passRoles.map((r) => r.roleArn),
      conditions: { StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } },
    }),
    new iam.PolicyStatement({
      sid: 'RegisterWorkspaceInstances',
      // GetInstance, not GetOperation: describe and stop find a workspace's registration with
      // GetInstance (provisioner/ecs.ts findInstance); GetOperation is never called, and authorizes
      // on a namespace, not a service (Service Authorization Reference for Cloud Map).
      actions: ['servicediscovery:RegisterInstance', 'servicediscovery:DeregisterInstance', 'servicediscovery:GetInstance', 'servicediscovery:ListInstances'],
      resources: s.cloudMapServices.map((svc) => svc.serviceArn),
    }),
  ];
}

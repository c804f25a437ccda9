// CDK entry point: `npm run deploy:synth` (offline) or `cd deploy && npx cdk deploy` (credentials).
// Settings come from CDK context (`-c key=value`, see deploy/README.md); the stack is
// environment-agnostic so synthesis never looks anything up in an AWS account.
import { App } from 'aws-cdk-lib';
import { parseDeployConfig } from '../config.js';
import { WorkspaceGatewayStack } from '../stack.js';

const app = new App();
const config = parseDeployConfig((key) => app.node.tryGetContext(key));
const stackName = (app.node.tryGetContext('stackName') as string | undefined) ?? 'WorkspaceGateway';
new WorkspaceGatewayStack(app, stackName, {
  config,
  description: `Workspace gateway for *.${config.domain}: ALB, gateway service, workspace cluster, EFS, Redis (issue 9)`,
});
app.synth();

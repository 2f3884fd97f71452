// The AfterAllowTraffic hook written the usual way: Node.js and the AWS SDK v3, a Lambda custom-runtime loop,
// clients built at init. Same work as the Python baseline: read the planned flip, modify the private listener,
// verify against the public listener, record, report to CodeDeploy.
import { DynamoDBClient, GetItemCommand, PutItemCommand } from "@aws-sdk/client-dynamodb";
import { ElasticLoadBalancingV2Client, ModifyListenerCommand, DescribeListenersCommand } from "@aws-sdk/client-elastic-load-balancing-v2";
import { CodeDeployClient, PutLifecycleEventHookExecutionStatusCommand } from "@aws-sdk/client-codedeploy";

const API = `http://${process.env.AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime`;
const TABLE = process.env.BLUEGREEN_MIRROR_TABLE;
const BINDINGS = JSON.parse(process.env.BLUEGREEN_MIRROR_BINDINGS).bindings;
const ddb = new DynamoDBClient({});
const elb = new ElasticLoadBalancingV2Client({});
const codedeploy = new CodeDeployClient({});

function shares(actions) {
  for (const a of actions) {
    const fc = a.ForwardConfig?.TargetGroups;
    if (fc && fc.length) {
      const total = fc.reduce((s, t) => s + (t.Weight ?? 1), 0) || 1;
      return Object.fromEntries(fc.filter((t) => (t.Weight ?? 1) > 0).map((t) => [t.TargetGroupArn, (t.Weight ?? 1) / total]));
    }
    if (a.TargetGroupArn) return { [a.TargetGroupArn]: 1 };
  }
  return {};
}

async function handler(event) {
  const { DeploymentId: deployment, LifecycleEventHookExecutionId: execution } = event;
  let status = "Succeeded";
  try {
    const key = { pk: { S: `deployment#${deployment}` } };
    const { Item } = await ddb.send(new GetItemCommand({ TableName: TABLE, Key: key, ConsistentRead: true }));
    const record = JSON.parse(Item.doc.S);
    const binding = BINDINGS.find((b) => b.application === record.application && b.deployment_group === record.deployment_group);
    const listener = binding.private_production_route.listener;
    await elb.send(new ModifyListenerCommand({
      ListenerArn: listener,
      DefaultActions: [{ Type: "forward", ForwardConfig: { TargetGroups: record.planned_private_route.target_groups.map((t) => ({ TargetGroupArn: t.target_group, Weight: t.weight })) } }],
    }));
    const mirror = Object.fromEntries(binding.pairs.map((p) => [p.public_target_group, p.private_target_group]));
    const [pub, prv] = await Promise.all([
      elb.send(new DescribeListenersCommand({ ListenerArns: [record.public_production_listener] })),
      elb.send(new DescribeListenersCommand({ ListenerArns: [listener] })),
    ]);
    const want = Object.fromEntries(Object.entries(shares(pub.Listeners[0].DefaultActions)).map(([tg, s]) => [mirror[tg], s]));
    const got = shares(prv.Listeners[0].DefaultActions);
    if (JSON.stringify(Object.entries(got).sort()) !== JSON.stringify(Object.entries(want).sort())) throw new Error("private route does not mirror the public one");
    record.private_flip_at_ms = Date.now();
    record.version += 1;
    await ddb.send(new PutItemCommand({ TableName: TABLE, Item: { ...key, doc: { S: JSON.stringify(record) }, version: { N: String(record.version) } } }));
  } catch (e) {
    console.log(`failed: ${e}`);
    status = "Failed";
  }
  await codedeploy.send(new PutLifecycleEventHookExecutionStatusCommand({ deploymentId: deployment, lifecycleEventHookExecutionId: execution, status }));
  return { status };
}

for (;;) {
  const next = await fetch(`${API}/invocation/next`);
  const requestId = next.headers.get("lambda-runtime-aws-request-id");
  const result = await handler(await next.json());
  await fetch(`${API}/invocation/${requestId}/response`, { method: "POST", body: JSON.stringify(result) });
}

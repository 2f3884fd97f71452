"""The AfterAllowTraffic hook written the usual way: Python and boto3, a Lambda custom-runtime loop, clients built
at init. It does the flip's work: read the planned flip from DynamoDB, modify the private listener, verify it
against the public listener, record, report to CodeDeploy."""

import json
import os
import time
import urllib.request

import boto3

API = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime"
TABLE = os.environ["BLUEGREEN_MIRROR_TABLE"]
BINDINGS = json.loads(os.environ["BLUEGREEN_MIRROR_BINDINGS"])["bindings"]
ddb = boto3.client("dynamodb")
elb = boto3.client("elbv2")
codedeploy = boto3.client("codedeploy")


def shares(actions):
    for a in actions:
        fc = a.get("ForwardConfig", {}).get("TargetGroups")
        if fc:
            total = sum(t.get("Weight", 1) for t in fc) or 1
            return {t["TargetGroupArn"]: t.get("Weight", 1) / total for t in fc if t.get("Weight", 1)}
        if a.get("TargetGroupArn"):
            return {a["TargetGroupArn"]: 1.0}
    return {}


def handler(event):
    deployment, execution = event["DeploymentId"], event["LifecycleEventHookExecutionId"]
    status = "Succeeded"
    try:
        item = ddb.get_item(TableName=TABLE, Key={"pk": {"S": f"deployment#{deployment}"}}, ConsistentRead=True)["Item"]
        record = json.loads(item["doc"]["S"])
        binding = next(b for b in BINDINGS if b["application"] == record["application"]
                       and b["deployment_group"] == record["deployment_group"])
        listener = binding["private_production_route"]["listener"]
        planned = record["planned_private_route"]["target_groups"]
        elb.modify_listener(ListenerArn=listener, DefaultActions=[{"Type": "forward", "ForwardConfig": {
            "TargetGroups": [{"TargetGroupArn": t["target_group"], "Weight": t["weight"]} for t in planned]}}])
        mirror = {p["public_target_group"]: p["private_target_group"] for p in binding["pairs"]}
        public = elb.describe_listeners(ListenerArns=[record["public_production_listener"]])["Listeners"][0]
        private = elb.describe_listeners(ListenerArns=[listener])["Listeners"][0]
        want = {mirror[tg]: s for tg, s in shares(public["DefaultActions"]).items()}
        if shares(private["DefaultActions"]) != want:
            raise RuntimeError("private route does not mirror the public one")
        record["private_flip_at_ms"] = int(time.time() * 1000)
        record["version"] += 1
        ddb.put_item(TableName=TABLE, Item={"pk": {"S": f"deployment#{deployment}"}, "doc": {"S": json.dumps(record)},
                                            "version": {"N": str(record["version"])}})
    except Exception as e:  # the hook must report whatever happens
        print(f"failed: {e!r}", flush=True)
        status = "Failed"
    codedeploy.put_lifecycle_event_hook_execution_status(
        deploymentId=deployment, lifecycleEventHookExecutionId=execution, status=status)
    return {"status": status}


def main():
    while True:
        with urllib.request.urlopen(f"{API}/invocation/next") as r:
            request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(r.read())
        body = json.dumps(handler(event)).encode()
        urllib.request.urlopen(urllib.request.Request(f"{API}/invocation/{request_id}/response", data=body,
                                                      method="POST")).read()


if __name__ == "__main__":
    main()

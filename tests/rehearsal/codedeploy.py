"""CodeDeploy as the rehearsal plays it behind the emulated endpoint (standin.py): its deployment groups and the
deployment being played, and its JSON API's answers (GetDeployment, GetDeploymentGroup, GetDeploymentConfig,
ListDeploymentTargets, GetDeploymentTarget, PutLifecycleEventHookExecutionStatus), reports counted per attempt."""

import threading
import time
import uuid

from scenarios import TIME_SCALE

# CodeDeploy's predefined ECS deployment configurations the rehearsal plays (GetDeploymentConfig's
# `trafficRoutingConfig`; intervals in minutes, as the API gives them).
DEPLOYMENT_CONFIGS = {
    "CodeDeployDefault.ECSAllAtOnce": {"type": "AllAtOnce"},
    "CodeDeployDefault.ECSCanary10Percent5Minutes": {
        "type": "TimeBasedCanary", "timeBasedCanary": {"canaryPercentage": 10, "canaryInterval": 5}},
    "CodeDeployDefault.ECSLinear10PercentEvery1Minutes": {
        "type": "TimeBasedLinear", "timeBasedLinear": {"linearPercentage": 10, "linearInterval": 1}},
}


class DeploymentGroup:
    """A CodeDeploy deployment group: its target group pair, listeners, ECS service, and how long after rerouting
    it terminates the original tasks (rehearsal seconds; GetDeploymentGroup gives it in AWS's minutes)."""

    def __init__(self, application, group, pair, listeners, service, termination_wait_s=None):
        self.application = application
        self.group = group
        self.pair = pair  # [blue TG name, green TG name]
        self.prod_listener, self.test_listener = listeners
        self.service = service  # (cluster, service)
        self.termination_wait_s = termination_wait_s

    def termination_wait_min(self):
        return round(self.termination_wait_s / (60 * TIME_SCALE)) if self.termination_wait_s is not None else None


class Deployment:
    """What the CodeDeploy stand-in knows of the deployment being played."""

    def __init__(self, deployment_id, group: DeploymentGroup):
        self.id = deployment_id
        self.application = group.application
        self.group = group.group
        self.service = group.service
        self.status = "InProgress"
        self.config_name = "CodeDeployDefault.ECSAllAtOnce"
        self.task_sets = []  # dicts: label, tg, desired, running, weight
        # execution id -> {"hook": name, "status": None|str, "at": t, "reports_by": {session token: reports},
        # "rejected": reports refused as already completed}
        self.executions = {}
        self.cond = threading.Condition()

    def new_execution(self, hook):
        exec_id = f"{hook}-{uuid.uuid4().hex[:12]}"
        with self.cond:
            self.executions[exec_id] = {"hook": hook, "status": None, "at": None, "rejected": 0, "reports_by": {}}
        return exec_id

    def wait_report(self, exec_id, timeout_s):
        with self.cond:
            self.cond.wait_for(lambda: self.executions[exec_id]["status"] is not None, timeout=timeout_s)
            return self.executions[exec_id]["status"]


# --- CodeDeploy, played ---------------------------------------------------------------------------------------
def _cd_ok(obj):
    return 200, obj, None


def _cd_error(error_type, message):
    return 400, {"__type": error_type, "message": message}, error_type


def codedeploy_answer(world, op, req, token):
    """CodeDeploy's JSON API as the rehearsal plays it: (HTTP status, answer object, error type or None)."""
    d = None
    if "deploymentId" in req:
        d = world.deployments.get(req["deploymentId"])
        if d is None:
            return _cd_error("DeploymentDoesNotExistException", f"Deployment {req['deploymentId']} does not exist")
    if op == "GetDeployment":
        return _cd_ok({"deploymentInfo": {
            "applicationName": d.application, "deploymentGroupName": d.group, "deploymentId": d.id,
            "status": d.status, "computePlatform": "ECS", "creator": "user",
            "deploymentConfigName": d.config_name,
            "deploymentStyle": {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
        }})
    if op == "GetDeploymentGroup":
        x = world.groups.get((req.get("applicationName"), req.get("deploymentGroupName")))
        if x is None:
            return _cd_error("DeploymentGroupDoesNotExistException", "No such deployment group")
        return _cd_ok({"deploymentGroupInfo": {
            "applicationName": x.application, "deploymentGroupName": x.group, "computePlatform": "ECS",
            "deploymentStyle": {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
            **({"blueGreenDeploymentConfiguration": {"terminateBlueInstancesOnDeploymentSuccess": {
                "action": "TERMINATE", "terminationWaitTimeInMinutes": x.termination_wait_min()}}}
               if x.termination_wait_s is not None else {}),
            "ecsServices": [{"clusterName": x.service[0], "serviceName": x.service[1]}],
            "loadBalancerInfo": {"targetGroupPairInfoList": [{
                "targetGroups": [{"name": n} for n in x.pair],
                "prodTrafficRoute": {"listenerArns": [x.prod_listener]},
                "testTrafficRoute": {"listenerArns": [x.test_listener]},
            }]},
        }})
    if op == "GetDeploymentConfig":
        info = DEPLOYMENT_CONFIGS.get(req.get("deploymentConfigName"))
        if info is None:
            return _cd_error("DeploymentConfigDoesNotExistException",
                               f"No deployment configuration named {req.get('deploymentConfigName')}")
        return _cd_ok({"deploymentConfigInfo": {
            "deploymentConfigId": str(uuid.uuid5(uuid.NAMESPACE_URL, req["deploymentConfigName"])),
            "deploymentConfigName": req["deploymentConfigName"], "computePlatform": "ECS",
            "trafficRoutingConfig": info}})
    if op == "ListDeploymentTargets":
        return _cd_ok({"targetIds": [f"{d.service[0]}:{d.service[1]}"]})
    if op == "GetDeploymentTarget":
        with d.cond:
            sets = [{
                "identifer": f"ecs-svc/{i}", "desiredCount": s["desired"], "pendingCount": 0,
                "runningCount": s["running"], "status": "PRIMARY" if s["label"] == "Blue" else "ACTIVE",
                "trafficWeight": s["weight"], "targetGroup": {"name": s["tg"]}, "taskSetLabel": s["label"],
            } for i, s in enumerate(d.task_sets)]
        return _cd_ok({"deploymentTarget": {"deploymentTargetType": "ECSTarget", "ecsTarget": {
            "deploymentId": d.id, "targetId": req.get("targetId"), "status": "InProgress",
            "taskSetsInfo": sets,
        }}})
    if op == "PutLifecycleEventHookExecutionStatus":
        exec_id = req.get("lifecycleEventHookExecutionId")
        with d.cond:
            e = d.executions.get(exec_id)
            if e is None:
                return _cd_error("InvalidLifecycleEventHookExecutionIdException", f"Unknown execution {exec_id}")
            token = token or "?"
            e["reports_by"][token] = e["reports_by"].get(token, 0) + 1
            if e["status"] is not None:
                e["rejected"] += 1
                return _cd_error("LifecycleEventAlreadyCompletedException",
                                   f"The lifecycle event {exec_id} is already completed")
            e["status"] = req.get("status")
            e["at"] = time.monotonic()
            d.cond.notify_all()
        return _cd_ok({"lifecycleEventHookExecutionId": exec_id})
    return _cd_error("UnsupportedOperation", f"the rehearsal's CodeDeploy does not implement {op}")



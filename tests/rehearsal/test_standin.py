"""The emulated endpoint models what moto gets wrong, each behaviour the functions rely on checked here against
moto itself: an NLB's ARNs are spelled `net/` (moto: `app/`), a forward to several target groups on an NLB
listener is refused with `ValidationError` (moto accepts it), a TCP health check is a connection (a target that
accepts but speaks no HTTP is healthy there, unhealthy under an HTTP check), a group no listener routes to is
`unused` (moto: `healthy`), an outage window refuses every matching call while it lasts, a target is `initial` and `draining` for its own group's timing (moto: neither), ELB's buckets throttle reads and writes as documented (moto: never), and, when the benchmarks
ask for it, concurrent calls overlap as AWS's do (moto: one after another).

    python test_standin.py
"""

import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

import procs
import rehearse
import standin

results = []


def expect(name, cond, detail=""):
    results.append(cond)
    print(f"{'ok  ' if cond else 'FAIL'} {name}" + (f": {detail}" if detail and not cond else ""))


def error_code(call):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"].get("Message", "")
    return None, ""


def tcp_only_server():
    """A task that accepts connections and answers nothing: TCP-healthy, not HTTP-healthy."""
    srv = socket.socket()
    srv.bind(("127.0.3.1", 0))
    srv.listen(16)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def check_buckets():
    """ELB's buckets on a clock of our own: each action draws on its bucket, refilled at its rate, as documented."""
    now = [0.0]
    b = standin.ElbBuckets(clock=lambda: now[0])

    def burst(op, n):
        return sum(b.take("AKIDRECONCILER", op) for _ in range(n))

    expect("Describe*: 200 at once, then refused", burst("DescribeTargetHealth", 250) == 200)
    expect("ModifyListener and ModifyRule share 20 tokens", burst("ModifyListener", 15) + burst("ModifyRule", 15) == 20)
    expect("RegisterTargets and DeregisterTargets share 20 more",
           burst("RegisterTargets", 15) + burst("DeregisterTargets", 15) == 20)
    now[0] += 1.0
    expect("a second refills Describe* by 50, Modify* by 3, registration by 4",
           (burst("DescribeTargetGroups", 60), burst("ModifyRule", 10), burst("RegisterTargets", 10)) == (50, 3, 4))
    expect("a throttled write is counted against its caller",
           b.throttled.get("AKIDRECONCILER", {}).get("mutating", 0) == 10 + 7)
    expect("calls ECS and CodeDeploy make on the customer's behalf have buckets of their own",
           burst("ModifyListener", 50) == 0 and sum(b.take("CODEDEPLOY", "ModifyListener") for _ in range(50)) == 50)
    tight = standin.ElbBuckets(standin.TIGHT_ELB_BUCKETS, clock=lambda: now[0])
    expect("the tight setting: Describe* 40, Modify* 10",
           (sum(tight.take("X", "DescribeRules") for _ in range(50)), sum(tight.take("X", "ModifyRule") for _ in range(50)))
           == (40, 10))


def check_fault_windows():
    """An outage: a rule confined to a window opens when the timeline reaches its phase, refuses every matching call
    (an operation's prefix) however many in a row, and closes after its seconds."""
    f = standin.Faults("elbv2.Describe*=throttle:1@BeforeAllowTraffic+0.3")
    refused = lambda op: [k for k, _ in f.pick("AKIDX", "elbv2", op)] == ["throttle"]  # noqa: E731
    expect("an outage waits for its phase", not refused("DescribeTargetHealth"))
    f.phase_started("BeforeAllowTraffic")
    expect("then refuses every matching call, however many in a row",
           all(refused("DescribeTargetHealth") for _ in range(20)))
    expect("... by the operation's prefix only", refused("DescribeRules") and not refused("ModifyRule"))
    time.sleep(0.35)
    expect("and ends after its seconds", not refused("DescribeTargetHealth"))
    at_rate = standin.Faults("elbv2=throttle:0.5")
    drawn = "".join("x" if at_rate.pick("AKIDX", "elbv2", "ModifyRule") else "." for _ in range(200))
    expect("at a rate each call draws on its own: faults come many in a row, as AWS's do (no cap)",
           "x" * 7 in drawn and "." in drawn)
    for bad in ("elbv2=throttle:1@Gate", "elbv2=throttle:1@Gate+x", "elbv2=throttle:1@+5"):
        try:
            standin.Faults(bad)
            expect(f"{bad!r} is refused", False)
        except ValueError:
            expect(f"{bad!r} is refused", True)


def main():
    check_buckets()
    check_fault_windows()
    procs.install_cleanup()
    r = rehearse.Rehearsal("happy", 1, None, open("/dev/null", "w"))
    try:
        r.start_moto()
        direct = r.client("elbv2", r.moto_url, "PROVISION")
        ec2 = r.client("ec2", r.moto_url, "PROVISION")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{rehearse.REGION}{az}")
                   ["Subnet"]["SubnetId"] for i, az in ((1, "a"), (2, "b"))]
        port = tcp_only_server()
        nlb_arn = direct.create_load_balancer(Name="nlb", Subnets=subnets, Type="network",
                                              Scheme="internal")["LoadBalancers"][0]["LoadBalancerArn"]
        alb_arn = direct.create_load_balancer(Name="alb", Subnets=subnets, Type="application",
                                              Scheme="internal")["LoadBalancers"][0]["LoadBalancerArn"]
        expect("moto spells an NLB as an ALB (what is modelled here)", ":loadbalancer/app/nlb/" in nlb_arn, nlb_arn)
        tg = {}
        for name, protocol in (("tcp-a", "TCP"), ("tcp-b", "TCP"), ("http-a", "HTTP"), ("http-b", "HTTP"),
                               ("idle", "TCP")):
            tg[name] = direct.create_target_group(Name=name, Protocol=protocol, Port=port, VpcId=vpc,
                                                  TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
        nlb_listener = direct.create_listener(LoadBalancerArn=nlb_arn, Protocol="TCP", Port=80, DefaultActions=[
            {"Type": "forward", "TargetGroupArn": tg["tcp-a"]}])["Listeners"][0]["ListenerArn"]
        alb_listener = direct.create_listener(LoadBalancerArn=alb_arn, Protocol="HTTP", Port=80, DefaultActions=[
            {"Type": "forward", "TargetGroupArn": tg["http-a"]}])["Listeners"][0]["ListenerArn"]

        world = standin.World(r.moto_url, r.client("elbv2", r.moto_url, "STANDIN"))
        world.nlb.add(nlb_arn)
        world.tcp_checked.add(tg["tcp-a"])
        for name in tg:
            world.tg_lb[tg[name]] = nlb_arn if name.startswith(("tcp", "idle")) else alb_arn
        world.track_route(nlb_listener, nlb_arn)
        world.track_route(alb_listener, alb_arn)
        server = standin.serve(world)
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        elb = boto3.client("elbv2", endpoint_url=endpoint, region_name=rehearse.REGION, aws_access_key_id="AKIDTEST",
                           aws_secret_access_key="x", config=BotoConfig(retries={"max_attempts": 1}))

        # ARNs as ELB spells them.
        lbs = {lb["LoadBalancerName"]: lb for lb in elb.describe_load_balancers()["LoadBalancers"]}
        real_nlb = lbs["nlb"]["LoadBalancerArn"]
        expect("an NLB's ARN is loadbalancer/net/", ":loadbalancer/net/nlb/" in real_nlb, real_nlb)
        expect("an ALB's ARN stays loadbalancer/app/", ":loadbalancer/app/alb/" in lbs["alb"]["LoadBalancerArn"])
        listeners = elb.describe_listeners(LoadBalancerArn=real_nlb)["Listeners"]
        real_listener = listeners[0]["ListenerArn"] if listeners else ""
        expect("an NLB's listener is listener/net/", ":listener/net/nlb/" in real_listener, real_listener)
        owners = elb.describe_target_groups(TargetGroupArns=[tg["tcp-a"]])["TargetGroups"][0]["LoadBalancerArns"]
        expect("a target group names its NLB as net/", owners == [real_nlb], str(owners))

        # A single-group forward on the NLB, by its real ARN, takes effect.
        elb.modify_listener(ListenerArn=real_listener, DefaultActions=[
            {"Type": "forward", "TargetGroupArn": tg["tcp-b"]}])
        expect("a single-group forward on an NLB listener is accepted",
               world.route(nlb_listener) == [(tg["tcp-b"], 1)], str(world.route(nlb_listener)))
        two = [{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": tg["tcp-a"], "Weight": 100}, {"TargetGroupArn": tg["tcp-b"], "Weight": 0}]}}]
        code, message = error_code(lambda: elb.modify_listener(ListenerArn=real_listener, DefaultActions=two))
        expect("a forward to two groups on an NLB listener is refused with ValidationError",
               code == "ValidationError" and "network" in message, f"{code} {message}")
        expect("... and changes nothing", world.route(nlb_listener) == [(tg["tcp-b"], 1)])
        alb_two = [{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": tg["http-a"], "Weight": 100}, {"TargetGroupArn": tg["http-b"], "Weight": 0}]}}]
        elb.modify_listener(ListenerArn=alb_listener, DefaultActions=alb_two)
        expect("a weighted forward on an ALB listener is accepted", len(world.route(alb_listener)) == 2)
        elb.modify_listener(ListenerArn=real_listener, DefaultActions=[
            {"Type": "forward", "TargetGroupArn": tg["tcp-a"]}])

        # Health: TCP checks connect, HTTP checks need an answer, unattached groups are unused.
        for name in ("tcp-a", "http-a", "idle"):
            elb.register_targets(TargetGroupArn=tg[name], Targets=[{"Id": "127.0.3.1", "Port": port}])
        threading.Thread(target=world.health_loop, daemon=True).start()
        deadline = time.monotonic() + 10

        def state(name):
            d = elb.describe_target_health(TargetGroupArn=tg[name])["TargetHealthDescriptions"]
            return d[0]["TargetHealth"]["State"] if d else None

        while time.monotonic() < deadline and (state("tcp-a") != "healthy" or state("http-a") != "unhealthy"):
            time.sleep(0.3)
        expect("a TCP health check passes on a port that accepts", state("tcp-a") == "healthy", state("tcp-a"))
        expect("an HTTP health check fails where nothing answers HTTP", state("http-a") == "unhealthy",
               state("http-a"))
        expect("a group no listener routes to is unused", state("idle") == "unused", state("idle"))
        # The registered targets are moto's, as its answer to the same call lists them: a target registered behind
        # the stand-in's back is there at once (still in its first checks), and one removed is gone.
        direct.register_targets(TargetGroupArn=tg["http-a"], Targets=[{"Id": "127.0.3.2", "Port": port}])
        ids = {d["Target"]["Id"]: d["TargetHealth"]["State"]
               for d in elb.describe_target_health(TargetGroupArn=tg["http-a"])["TargetHealthDescriptions"]}
        expect("a target registered in moto directly is listed", ids.get("127.0.3.2") == "initial", str(ids))
        direct.deregister_targets(TargetGroupArn=tg["http-a"], Targets=[{"Id": "127.0.3.2", "Port": port}])
        ids = {d["Target"]["Id"] for d in elb.describe_target_health(TargetGroupArn=tg["http-a"])
               ["TargetHealthDescriptions"]}
        expect("... and one deregistered there is not", ids == {"127.0.3.1"}, str(ids))

        # Each group's own timing, at the rehearsal's scale (TIME_SCALE: 300 s of AWS's in 1 s): ELB's defaults
        # (every 30 s, healthy after 5, a 300 s drain) against a slow group (every 60 s, healthy after 10) that
        # drains for 60 s.
        for name, extra in (("plain", {}), ("slow", {"HealthCheckIntervalSeconds": 60, "HealthyThresholdCount": 10})):
            tg[name] = direct.create_target_group(Name=name, Protocol="HTTP", Port=port, VpcId=vpc, TargetType="ip",
                                                  **extra)["TargetGroups"][0]["TargetGroupArn"]
            world.tg_lb[tg[name]] = alb_arn
            world.tcp_checked.add(tg[name])
        direct.modify_target_group_attributes(TargetGroupArn=tg["slow"], Attributes=[
            {"Key": "deregistration_delay.timeout_seconds", "Value": "60"}])
        elb.modify_listener(ListenerArn=alb_listener, DefaultActions=[{"Type": "forward", "ForwardConfig": {
            "TargetGroups": [{"TargetGroupArn": tg["plain"], "Weight": 1}, {"TargetGroupArn": tg["slow"], "Weight": 1}]}}])
        target = [{"Id": "127.0.3.1", "Port": port}]
        healthy_at = {}
        t0 = time.monotonic()
        for name in ("plain", "slow"):
            elb.register_targets(TargetGroupArn=tg[name], Targets=target)
        while time.monotonic() < t0 + 5 and len(healthy_at) < 2:
            for name in ("plain", "slow"):
                if name not in healthy_at and state(name) == "healthy":
                    healthy_at[name] = time.monotonic() - t0
            time.sleep(0.05)
        expect("a group of ELB's default timing is healthy after 4 intervals of 30 s (0.4 s here)",
               0.35 <= healthy_at.get("plain", 0) <= 1.0, healthy_at)
        expect("a slow group's target stays initial for its own 9 intervals of 60 s (1.8 s here)",
               1.75 <= healthy_at.get("slow", 0) <= 2.6, healthy_at)
        for name in ("plain", "slow"):
            elb.deregister_targets(TargetGroupArn=tg[name], Targets=target)
        time.sleep(0.5)
        expect("after 0.5 s a target of the 300 s drain is still draining, of the 60 s one gone",
               (state("plain"), state("slow")) == ("draining", None), (state("plain"), state("slow")))

        # AWS's round trip, when set: concurrent calls overlap instead of queueing behind one another, and a new
        # connection costs its handshakes.
        world.rtt_s = 0.2
        timed = boto3.client("elbv2", endpoint_url=endpoint, region_name=rehearse.REGION, aws_access_key_id="AKIDRTT",
                             aws_secret_access_key="x",
                             config=BotoConfig(retries={"max_attempts": 1}, max_pool_connections=4))

        def took(call):
            t = time.monotonic()
            call()
            return time.monotonic() - t

        first = took(lambda: timed.describe_load_balancers())
        again = took(lambda: timed.describe_load_balancers())
        expect("the first call on a connection takes three round trips", 0.6 <= first < 1.0, f"{first:.3f} s")
        expect("a call on an open connection takes one", 0.2 <= again < 0.5, f"{again:.3f} s")
        with ThreadPoolExecutor(4) as pool:
            started = time.monotonic()
            list(pool.map(lambda _: timed.describe_target_groups(), range(4)))
            together = time.monotonic() - started
        expect("four concurrent calls take about as long as one (in turn: 2 s)", together < 1.2, f"{together:.3f} s")
        world.rtt_s = 0.0

        # The account's Describe* bucket throttles a burst (here the tight setting's, 40 refilled at 10 a second).
        world.buckets = standin.ElbBuckets(standin.TIGHT_ELB_BUCKETS)
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: error_code(lambda: elb.describe_load_balancers())[0], range(120)))
        expect("a burst of Describe calls is throttled", 0 < codes.count("Throttling") <= 120 - 40,
               f"{codes.count('Throttling')} of 120 throttled")
        world.stop.set()
    finally:
        procs.kill_all()
    print(f"{sum(results)} of {len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

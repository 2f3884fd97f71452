"""A second private side for the `two-sides` scenario: next to the internal ALB, an NLB for PrivateLink consumers
(`link`), with TCP target groups of its own (lnk-blue, lnk-green), a production listener on blue and a test
listener holding the idle green, both as ELB spells an NLB's ARNs. The binding lists it in
`additional_private_sides`; the evidence checks I1-I4 on it as on the first side, and how long its live group
differed from the public side's majority (an NLB listener forwards to one group, so it follows at 50 %)."""

import time

PREFIX = "lnk"


def provision(r, elb, subnets, vpc, task_port):
    lb = elb.create_load_balancer(Name="link", Subnets=subnets, Scheme="internal",
                                  Type="network")["LoadBalancers"][0]["LoadBalancerArn"]
    r.nlb.add(lb)
    r.lbs["link"] = lb
    for color in ("blue", "green"):
        r.tgs[f"{PREFIX}-{color}"] = elb.create_target_group(
            Name=f"{PREFIX}-{color}", Protocol="TCP", Port=task_port, VpcId=vpc, TargetType="ip",
            HealthCheckProtocol="HTTP", HealthCheckPath="/health", HealthCheckIntervalSeconds=30,
            HealthCheckTimeoutSeconds=2, HealthyThresholdCount=5,
        )["TargetGroups"][0]["TargetGroupArn"]
    for name, port, color in (("prod", 80, "blue"), ("test", 8080, "green")):
        r.listeners[f"link-{name}"] = elb.create_listener(
            LoadBalancerArn=lb, Protocol="TCP", Port=port,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": r.tgs[f"{PREFIX}-{color}"]}],
        )["Listeners"][0]["ListenerArn"]
    r.bindings["bindings"][0]["additional_private_sides"] = [{
        "pairs": [{"public_target_group": r.tgs["pub-blue"], "private_target_group": r.tgs[f"{PREFIX}-blue"]},
                  {"public_target_group": r.tgs["pub-green"], "private_target_group": r.tgs[f"{PREFIX}-green"]}],
        "private_production_route": {"listener": r.nlb.real(r.listeners["link-prod"])},
        "private_test_route": {"listener": r.nlb.real(r.listeners["link-test"])},
    }]
    r.log("setup", "and a second private side: an internal NLB (PrivateLink) with TCP groups lnk-blue/lnk-green, "
                   "listeners :80 and :8080")


def load_balancer_of(r, tg):
    """Which load balancer a target group of the scenario belongs to."""
    if "/pub-" in tg:
        return r.lbs["public"]
    if f"/{PREFIX}-" in tg and "link" in r.lbs:
        return r.lbs["link"]
    return r.lbs["private"]


def evaluate(r, shares, same_traffic):
    """I1-I4 on the NLB side, and its lag behind the public majority. Returns (invariants, stats, lag_ms)."""
    w, tg = r.world, r.tgs
    pairs = [(tg["pub-blue"], tg[f"{PREFIX}-blue"]), (tg["pub-green"], tg[f"{PREFIX}-green"])]
    mirror = dict(pairs)
    prod = w.route(r.listeners["link-prod"])
    live = set(shares(prod))
    i1 = all(r.members(pub) == r.members(prv) for pub, prv in pairs if prv in live)
    i2 = same_traffic(prod, [(mirror.get(t, t), wt) for t, wt in w.route(r.listeners["public-prod"])])
    test = [t for t, _ in w.route(r.listeners["link-test"])]
    i3 = len(live) == 1 and test == [prv for _, prv in pairs if prv not in live]
    stats = r.probe.stats("link", "public")
    i4 = stats["dark_while_other_side_served_ms"] == 0
    return ({"I1_membership_side_2": i1, "I2_production_route_side_2": i2, "I3_test_route_side_2": i3,
             "I4_never_dark_side_2": i4}, stats, majority_lag_ms(r, mirror))


def flip_skew_ms(r):
    """The NLB side's flip: from the public route's first majority on green (an NLB forwards to one group, so it
    follows the majority) to the NLB's production listener forwarding to its green group."""
    green, nlb_green = r.tgs["pub-green"], r.tgs[f"{PREFIX}-green"]
    public = next((t for t, a, route in r.world.route_events if a == r.listeners["public-prod"]
                   and dict(route).get(green, 0) > sum(wt for _, wt in route) / 2), None)
    private = next((t for t, a, route in r.world.route_events if a == r.listeners["link-prod"]
                    and [tg for tg, _ in route] == [nlb_green]), None)
    return None if public is None or private is None else round((private - public) * 1000, 1)


def majority_lag_ms(r, mirror):
    """The longest time the NLB's live group differed from the group holding the public majority (a tie keeps
    what was live)."""
    pub_arn, nlb_arn = r.listeners["public-prod"], r.listeners["link-prod"]
    want = have = None
    since, worst = None, 0.0
    for t, arn, route in r.world.route_events:
        if arn == pub_arn:
            top = max(route, key=lambda x: x[1]) if route else None
            if top and sum(1 for _, wt in route if wt == top[1]) == 1:
                want = mirror.get(top[0])
        elif arn == nlb_arn:
            have = route[0][0] if route else None
        else:
            continue
        if want is None or have is None:
            continue
        if want != have:
            since = since if since is not None else t
        elif since is not None:
            worst, since = max(worst, t - since), None
    if since is not None:
        worst = max(worst, time.monotonic() - since)
    return round(worst * 1000, 1)

//! Elastic Load Balancing ARNs, taken apart without an API call. CodeDeploy names target groups by *name*
//! while bindings name them by ARN, and a listener's or rule's ARN says which load balancer it belongs to.

/// The resource part of an ARN (`targetgroup/name/id`, `listener/app/lb/id/lid`, ...), when `arn` is an ELB ARN.
fn resource(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (scheme, _partition, service, _region, _account) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if scheme != "arn" || service != "elasticloadbalancing" {
        return None;
    }
    parts.next()
}

fn prefix(arn: &str) -> Option<&str> {
    let res = resource(arn)?;
    arn.strip_suffix(res)
}

/// The name inside a target group ARN (`arn:...:targetgroup/NAME/ID`).
pub fn target_group_name(arn: &str) -> Option<&str> {
    let mut it = resource(arn)?.split('/');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some("targetgroup"), Some(name), Some(id), None) if !name.is_empty() && !id.is_empty() => Some(name),
        _ => None,
    }
}

pub fn is_target_group(arn: &str) -> bool {
    target_group_name(arn).is_some()
}

/// `listener/{app|net}/NAME/LBID/LID` → parts.
fn listener_parts(arn: &str) -> Option<(&str, &str, &str, &str)> {
    let mut it = resource(arn)?.split('/');
    match (it.next(), it.next(), it.next(), it.next(), it.next(), it.next()) {
        (Some("listener"), Some(kind), Some(name), Some(lb), Some(l), None) => Some((kind, name, lb, l)),
        _ => None,
    }
}

/// `listener-rule/{app|net}/NAME/LBID/LID/RID` → parts.
fn rule_parts(arn: &str) -> Option<(&str, &str, &str, &str, &str)> {
    let mut it = resource(arn)?.split('/');
    match (it.next(), it.next(), it.next(), it.next(), it.next(), it.next(), it.next()) {
        (Some("listener-rule"), Some(kind), Some(name), Some(lb), Some(l), Some(r), None) => {
            Some((kind, name, lb, l, r))
        }
        _ => None,
    }
}

pub fn is_listener(arn: &str) -> bool {
    listener_parts(arn).is_some()
}

pub fn is_rule(arn: &str) -> bool {
    rule_parts(arn).is_some()
}

/// The listener a rule belongs to.
pub fn listener_of_rule(rule_arn: &str) -> Option<String> {
    let (kind, name, lb, l, _) = rule_parts(rule_arn)?;
    Some(format!("{}listener/{kind}/{name}/{lb}/{l}", prefix(rule_arn)?))
}

/// The load balancer a listener or rule belongs to.
pub fn load_balancer_of(listener_or_rule_arn: &str) -> Option<String> {
    let (kind, name, lb) = match listener_parts(listener_or_rule_arn) {
        Some((k, n, lb, _)) => (k, n, lb),
        None => {
            let (k, n, lb, _, _) = rule_parts(listener_or_rule_arn)?;
            (k, n, lb)
        }
    };
    Some(format!("{}loadbalancer/{kind}/{name}/{lb}", prefix(listener_or_rule_arn)?))
}

/// `app` (ALB) or `net` (NLB) for a listener, rule or load balancer ARN.
pub fn load_balancer_kind(arn: &str) -> Option<&str> {
    if let Some((k, ..)) = listener_parts(arn) {
        return Some(k);
    }
    if let Some((k, ..)) = rule_parts(arn) {
        return Some(k);
    }
    let mut it = resource(arn)?.split('/');
    match (it.next(), it.next()) {
        (Some("loadbalancer"), Some(k)) => Some(k),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: &str = "arn:aws:elasticloadbalancing:us-west-2:123456789012:loadbalancer/app/my-lb/50dc6c495c0c9188";
    const LISTENER: &str =
        "arn:aws:elasticloadbalancing:us-west-2:123456789012:listener/app/my-lb/50dc6c495c0c9188/f2f7dc8efc522ab2";
    const RULE: &str = "arn:aws:elasticloadbalancing:us-west-2:123456789012:listener-rule/app/my-lb/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee";
    const TG: &str = "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067";

    #[test]
    fn takes_arns_apart() {
        assert_eq!(target_group_name(TG), Some("my-targets"));
        assert_eq!(target_group_name(LISTENER), None);
        assert_eq!(target_group_name("my-targets"), None);
        assert_eq!(load_balancer_of(LISTENER).as_deref(), Some(LB));
        assert_eq!(load_balancer_of(RULE).as_deref(), Some(LB));
        assert_eq!(listener_of_rule(RULE).as_deref(), Some(LISTENER));
        assert!(is_listener(LISTENER) && !is_listener(RULE));
        assert!(is_rule(RULE) && !is_rule(LISTENER));
        assert_eq!(load_balancer_kind(LISTENER), Some("app"));
        assert_eq!(load_balancer_kind(&LB.replace("/app/", "/net/")), Some("net"));
        assert_eq!(
            load_balancer_of("arn:aws-cn:elasticloadbalancing:cn-north-1:1:listener/net/n/1/2").as_deref(),
            Some("arn:aws-cn:elasticloadbalancing:cn-north-1:1:loadbalancer/net/n/1")
        );
        assert_eq!(load_balancer_of("arn:aws:s3:::bucket/key"), None);
    }
}

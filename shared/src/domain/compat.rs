//! Which target groups may mirror each other. A mirror receives the same task IPs on the same port, so the port
//! must be the task's port on both sides; the protocols need only agree on what the tasks speak there, which lets
//! an NLB (TCP, TLS) mirror an ALB (HTTP, HTTPS): the usual reason for a private NLB is PrivateLink, whose endpoint
//! services sit only behind NLBs. Health checks decide what the gate proves, so a private check weaker than the
//! public one is worth a warning with its fix.

/// A target group's health check, as ELB describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthCheck {
    /// `HTTP`, `HTTPS`, `TCP`, ...; `None` when unknown.
    pub protocol: Option<String>,
    /// `traffic-port` or a port number.
    pub port: Option<String>,
    /// The path of an HTTP(S) check.
    pub path: Option<String>,
}

/// What the rule needs to know of one target group.
#[derive(Debug, Clone, Copy)]
pub struct GroupShape<'a> {
    pub arn: &'a str,
    pub name: &'a str,
    pub protocol: Option<&'a str>,
    pub port: Option<u16>,
    pub health: &'a HealthCheck,
}

/// The protocols a private mirror may use for a public target group of `public`'s protocol.
fn mirrors_of(public: &str) -> &'static [&'static str] {
    match public {
        "HTTP" => &["HTTP (ALB)", "TCP (NLB)"],
        "HTTPS" => &["HTTPS (ALB)", "TLS (NLB)", "TCP (NLB)"],
        "TCP" => &["TCP (NLB)", "HTTP (ALB)", "HTTPS (ALB)"],
        "TLS" => &["TLS (NLB)", "HTTPS (ALB)"],
        _ => &[],
    }
}

/// Whether tasks serving `a` on a port can be reached as `b` on the same port. An ALB group speaks HTTP or
/// HTTPS to the task; an NLB group in TCP passes the client's bytes through (plain HTTP or TLS alike), in TLS it
/// speaks TLS to the task. Between groups of the same kind the protocol must be the same.
fn compatible(a: &str, b: &str) -> bool {
    a == b || matches!((a, b), ("HTTP", "TCP") | ("TCP", "HTTP") | ("HTTPS", "TLS" | "TCP") | ("TLS" | "TCP", "HTTPS"))
}

fn why_not(public: &str, private: &str) -> &'static str {
    let alb = |p: &str| matches!(p, "HTTP" | "HTTPS");
    let tls = |p: &str| matches!(p, "HTTPS" | "TLS");
    if alb(public) == alb(private) {
        "groups of the same kind (both ALB or both NLB) must use the same protocol"
    } else if tls(public) != tls(private) && !(public == "TCP" || private == "TCP") {
        "one side would speak TLS to the tasks and the other plain text"
    } else if matches!(public, "UDP" | "TCP_UDP" | "GENEVE") || matches!(private, "UDP" | "TCP_UDP" | "GENEVE") {
        "UDP and GENEVE groups carry no HTTP(S) the other side could serve"
    } else {
        "the tasks cannot speak both"
    }
}

/// Why `private` cannot mirror `public`, naming both groups and the fix; `None` when it can.
pub fn incompatibility(public: &GroupShape<'_>, private: &GroupShape<'_>) -> Option<String> {
    let shown = |g: &GroupShape<'_>| {
        format!("{}:{}", g.protocol.unwrap_or("?"), g.port.map_or_else(|| "?".to_string(), |p| p.to_string()))
    };
    if public.port.is_none() || public.port != private.port {
        return Some(format!(
            "private target group {} uses {} but its public mirror {} uses {}: a mirror receives the same task IPs, \
             so both must target the task's port; give {} port {}",
            private.name,
            shown(private),
            public.name,
            shown(public),
            private.name,
            public.port.map_or_else(|| "the task's".to_string(), |p| p.to_string()),
        ));
    }
    let (Some(pp), Some(vp)) = (public.protocol, private.protocol) else {
        return Some(format!(
            "target group {} or {} has no protocol: only HTTP, HTTPS, TCP and TLS groups can be mirrored",
            public.name, private.name
        ));
    };
    if compatible(pp, vp) {
        return None;
    }
    let allowed = mirrors_of(pp);
    let fix = if allowed.is_empty() {
        format!("a {pp} group cannot be mirrored; bind HTTP, HTTPS, TCP or TLS groups")
    } else {
        format!("a mirror of a {pp} group must use {}", allowed.join(" or "))
    };
    Some(format!(
        "private target group {} uses {} but its public mirror {} uses {}: {}; {fix}",
        private.name,
        shown(private),
        public.name,
        shown(public),
        why_not(pp, vp)
    ))
}

fn checks_http(h: &HealthCheck) -> bool {
    matches!(h.protocol.as_deref(), Some("HTTP" | "HTTPS"))
}

/// The port a health check probes, `traffic-port` resolved.
fn probed_port(g: &GroupShape<'_>) -> Option<String> {
    match g.health.port.as_deref() {
        None | Some("traffic-port") => g.port.map(|p| p.to_string()),
        Some(p) => Some(p.to_string()),
    }
}

/// Warnings when the private group's health check proves less than its public mirror's, each with its fix:
/// the gate waits for the private side's health, so a weaker check lets a broken task through on that side.
pub fn weaker_health_checks(public: &GroupShape<'_>, private: &GroupShape<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let (ph, vh) = (public.health, private.health);
    if checks_http(ph) && !checks_http(vh) && vh.protocol.is_some() {
        let protocol = ph.protocol.as_deref().unwrap_or("HTTP");
        let path = ph.path.as_deref().unwrap_or("/");
        out.push(format!(
            "warning: private target group {} health-checks with {} only while its public mirror {} checks {protocol} \
             {path}: the gate then proves only that the port accepts connections; an NLB group can check HTTP on a \
             path: aws elbv2 modify-target-group --target-group-arn {} --health-check-protocol {protocol} \
             --health-check-path {path}",
            private.name,
            vh.protocol.as_deref().unwrap_or("?"),
            public.name,
            private.arn,
        ));
    } else if checks_http(ph) && checks_http(vh) && ph.path != vh.path {
        out.push(format!(
            "warning: health check path differs between {} ({}) and its mirror {} ({}): the private gate then proves \
             something else; aws elbv2 modify-target-group --target-group-arn {} --health-check-path {}",
            public.name,
            ph.path.as_deref().unwrap_or("?"),
            private.name,
            vh.path.as_deref().unwrap_or("?"),
            private.arn,
            ph.path.as_deref().unwrap_or("/"),
        ));
    }
    let (pport, vport) = (probed_port(public), probed_port(private));
    if pport.is_some() && vport.is_some() && pport != vport {
        out.push(format!(
            "warning: private target group {} health-checks port {} while its public mirror {} checks port {}: \
             aws elbv2 modify-target-group --target-group-arn {} --health-check-port {}",
            private.name,
            vport.unwrap_or_default(),
            public.name,
            pport.clone().unwrap_or_default(),
            private.arn,
            public.health.port.as_deref().unwrap_or("traffic-port"),
        ));
    }
    out
}

/// How long an NLB may go on sending new flows to the targets of its previous forward after its listener changed.
/// AWS promises no figure; ECS's own blue/green waits 10 minutes at each NLB traffic shift because "timing issues
/// ... can cause a mismatch between the configured traffic weights and the actual traffic routing in the data
/// plane" (ECS developer guide, "Network Load Balancer resources for blue/green deployments").
pub const NLB_SETTLE: std::time::Duration = std::time::Duration::from_secs(600);

/// The warning for an NLB private side whose deployment group terminates the original tasks sooner after the
/// reroute than the NLB may take to stop sending them traffic: the private clients would reach terminated tasks.
/// `termination_wait`: CodeDeploy's `terminationWaitTimeInMinutes` (`None`: the tasks are kept, or it is not said).
pub fn nlb_termination_warning(
    side: &str,
    application: &str,
    group: &str,
    termination_wait: Option<std::time::Duration>,
) -> Option<String> {
    let wait = termination_wait?;
    if wait >= NLB_SETTLE {
        return None;
    }
    let settle_min = NLB_SETTLE.as_secs() / 60;
    Some(format!(
        "warning: binding {side} flips an NLB, whose traffic may keep reaching the original tasks for up to \
         {settle_min} minutes after its listener changes, but deployment group {group} terminates them {} minutes \
         after rerouting: private clients may reach terminated tasks. Keep them {settle_min} minutes: aws deploy \
         update-deployment-group --application-name {application} --current-deployment-group-name {group} \
         --blue-green-deployment-configuration \
         'terminateBlueInstancesOnDeploymentSuccess={{action=TERMINATE,terminationWaitTimeInMinutes={settle_min}}}'",
        wait.as_secs() / 60
    ))
}

/// The warning for a private target group that drains a deregistered task for less time than its public mirror:
/// when ECS stops a task, it deregisters it from the public group and waits that group's delay; the mirror lets go
/// of it sooner, and cuts the private clients' requests still in flight.
pub fn shorter_drain_warning(
    private: (&str, &str, std::time::Duration),
    public: (&str, std::time::Duration),
) -> Option<String> {
    let ((private_name, private_arn, private_delay), (public_name, public_delay)) = (private, public);
    (private_delay < public_delay).then(|| {
        format!(
            "warning: private target group {private_name} drains a deregistered task for {} s, less than its public \
             mirror {public_name} ({} s): private requests in flight are cut sooner when a task stops; aws elbv2 \
             modify-target-group-attributes --target-group-arn {private_arn} --attributes \
             Key=deregistration_delay.timeout_seconds,Value={}",
            private_delay.as_secs(),
            public_delay.as_secs(),
            public_delay.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_that_drains_for_less_than_its_public_group_is_warned() {
        let s = std::time::Duration::from_secs;
        let w = shorter_drain_warning(("prv-blue", "arn:prv", s(30)), ("pub-blue", s(300))).unwrap_or_default();
        assert!(
            w.contains("prv-blue drains a deregistered task for 30 s, less than its public mirror pub-blue (300 s)")
        );
        assert!(
            w.contains("--target-group-arn arn:prv --attributes Key=deregistration_delay.timeout_seconds,Value=300")
        );
        assert_eq!(shorter_drain_warning(("p", "a", s(300)), ("q", s(300))), None);
        assert_eq!(shorter_drain_warning(("p", "a", s(600)), ("q", s(300))), None);
    }

    #[test]
    fn an_nlb_side_warns_when_the_original_tasks_go_before_its_traffic_has_moved() {
        let min = |m: u64| Some(std::time::Duration::from_secs(m * 60));
        let w = nlb_termination_warning("web/web-bg side 2", "web", "web-bg", min(5)).unwrap_or_default();
        assert!(w.starts_with("warning: binding web/web-bg side 2 flips an NLB"), "{w}");
        assert!(w.contains("terminates them 5 minutes after rerouting"), "{w}");
        assert!(w.contains("terminationWaitTimeInMinutes=10"), "{w}");
        assert_eq!(nlb_termination_warning("s", "a", "g", min(10)), None);
        assert_eq!(nlb_termination_warning("s", "a", "g", None), None, "tasks kept, or not said");
        assert!(nlb_termination_warning("s", "a", "g", min(0)).is_some());
    }
    use proptest::prelude::*;

    const PROTOCOLS: [&str; 7] = ["HTTP", "HTTPS", "TCP", "TLS", "UDP", "TCP_UDP", "GENEVE"];

    fn hc(protocol: &str, path: Option<&str>) -> HealthCheck {
        HealthCheck {
            protocol: Some(protocol.into()),
            port: Some("traffic-port".into()),
            path: path.map(str::to_string),
        }
    }

    fn shape<'a>(name: &'a str, protocol: &'a str, port: u16, health: &'a HealthCheck) -> GroupShape<'a> {
        GroupShape { arn: name, name, protocol: Some(protocol), port: Some(port), health }
    }

    #[test]
    fn the_documented_pairs_mirror_and_nothing_else() {
        let h = hc("HTTP", Some("/health"));
        let allowed =
            [("HTTP", "TCP"), ("TCP", "HTTP"), ("HTTPS", "TLS"), ("HTTPS", "TCP"), ("TLS", "HTTPS"), ("TCP", "HTTPS")];
        for p in PROTOCOLS {
            for v in PROTOCOLS {
                let problem = incompatibility(&shape("pub", p, 8080, &h), &shape("prv", v, 8080, &h));
                let want = p == v || allowed.contains(&(p, v));
                assert_eq!(problem.is_none(), want, "{p} -> {v}: {problem:?}");
                if let Some(m) = problem {
                    assert!(
                        m.contains(&format!("prv uses {v}:8080")) && m.contains(&format!("pub uses {p}:8080")),
                        "{m}"
                    );
                }
            }
        }
    }

    #[test]
    fn messages_say_why_and_what_to_use() {
        let h = HealthCheck::default();
        let m = incompatibility(&shape("pub", "HTTP", 8080, &h), &shape("prv", "TLS", 8080, &h)).unwrap_or_default();
        assert!(
            m.contains("TLS to the tasks and the other plain text") && m.contains("HTTP (ALB) or TCP (NLB)"),
            "{m}"
        );
        let m = incompatibility(&shape("pub", "HTTP", 8080, &h), &shape("prv", "HTTPS", 8080, &h)).unwrap_or_default();
        assert!(m.contains("same kind"), "{m}");
        let m = incompatibility(&shape("pub", "HTTP", 8080, &h), &shape("prv", "TCP", 9090, &h)).unwrap_or_default();
        assert!(m.contains("task's port") && m.contains("give prv port 8080"), "{m}");
        let m = incompatibility(&shape("pub", "GENEVE", 6081, &h), &shape("prv", "TCP", 6081, &h)).unwrap_or_default();
        assert!(m.contains("cannot be mirrored"), "{m}");
        let none = GroupShape { protocol: None, ..shape("prv", "TCP", 8080, &h) };
        assert!(incompatibility(&shape("pub", "HTTP", 8080, &h), &none).is_some());
    }

    #[test]
    fn a_weaker_private_health_check_is_warned_with_its_fix() {
        let (http, tcp) = (hc("HTTP", Some("/health")), hc("TCP", None));
        let w = weaker_health_checks(&shape("pub", "HTTP", 8080, &http), &shape("prv", "TCP", 8080, &tcp));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("with TCP only") && w[0].contains("--health-check-protocol HTTP --health-check-path /health")
        );
        // An NLB group checking HTTP on the same path proves as much: no warning.
        let w = weaker_health_checks(&shape("pub", "HTTP", 8080, &http), &shape("prv", "TCP", 8080, &http));
        assert!(w.is_empty(), "{w:?}");
        let other = hc("HTTP", Some("/"));
        let w = weaker_health_checks(&shape("pub", "HTTP", 8080, &http), &shape("prv", "HTTP", 8080, &other));
        assert!(w.len() == 1 && w[0].contains("path differs"), "{w:?}");
        let port = HealthCheck { port: Some("9000".into()), ..http.clone() };
        let w = weaker_health_checks(&shape("pub", "HTTP", 8080, &http), &shape("prv", "TCP", 8080, &port));
        assert!(w.len() == 1 && w[0].contains("health-checks port 9000") && w[0].contains("checks port 8080"), "{w:?}");
        // A stronger private check (HTTP where the public side checks TCP) is fine.
        let w = weaker_health_checks(&shape("pub", "TCP", 8080, &tcp), &shape("prv", "HTTP", 8080, &http));
        assert!(w.is_empty(), "{w:?}");
    }

    proptest! {
        /// The rule is symmetric and reflexive; and a port mismatch is refused whatever the protocols.
        #[test]
        fn symmetric_reflexive_and_port_bound(a in 0..PROTOCOLS.len(), b in 0..PROTOCOLS.len(), p1 in 1u16.., p2 in 1u16..) {
            let h = HealthCheck::default();
            let (a, b) = (PROTOCOLS[a], PROTOCOLS[b]);
            let ab = incompatibility(&shape("x", a, 80, &h), &shape("y", b, 80, &h)).is_none();
            let ba = incompatibility(&shape("y", b, 80, &h), &shape("x", a, 80, &h)).is_none();
            prop_assert_eq!(ab, ba);
            prop_assert!(incompatibility(&shape("x", a, 80, &h), &shape("y", a, 80, &h)).is_none());
            if p1 != p2 {
                prop_assert!(incompatibility(&shape("x", a, p1, &h), &shape("y", a, p2, &h)).is_some());
            }
        }
    }
}

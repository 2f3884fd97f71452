//! Targets as the mirror sees them: keyed by `ip:port`, because that is what identifies one task behind an
//! `ip` target group, and what must be equal on both sides for invariant I1.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The identity of a target in an `ip` target group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TargetKey {
    pub ip: IpAddr,
    pub port: u16,
}

impl TargetKey {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Self { ip, port }
    }

    /// Builds a key from the `Id`/`Port` pair ELB returns. Fails for instance ids or a missing port, which
    /// means the target group is not of type `ip`.
    pub fn parse(id: &str, port: Option<i32>) -> Result<Self, String> {
        let ip = IpAddr::from_str(id)
            .map_err(|_| format!("target id {id:?} is not an IP address (is the target group of type `ip`?)"))?;
        let port = port.ok_or_else(|| format!("target {id} has no port"))?;
        let port = u16::try_from(port).map_err(|_| format!("target {id} has an invalid port {port}"))?;
        Ok(Self { ip, port })
    }
}

impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// A target to register: its key and, for IPs outside the VPC, the availability zone (`all`) it was
/// registered with on the public side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    pub key: TargetKey,
    pub availability_zone: Option<String>,
}

/// ELB target health states (`DescribeTargetHealth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Initial,
    Healthy,
    Unhealthy,
    Unused,
    Draining,
    Unavailable,
    /// A state string this version does not know; treated as not healthy.
    Unknown,
}

impl HealthState {
    pub fn parse(s: &str) -> Self {
        match s {
            "initial" => Self::Initial,
            "healthy" => Self::Healthy,
            "unhealthy" | "unhealthy.draining" => Self::Unhealthy,
            "unused" => Self::Unused,
            "draining" => Self::Draining,
            "unavailable" => Self::Unavailable,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Unused => "unused",
            Self::Draining => "draining",
            Self::Unavailable => "unavailable",
            Self::Unknown => "unknown",
        }
    }
}

/// A target as observed in a target group, with its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedTarget {
    pub target: Target,
    pub health: HealthState,
    /// ELB's reason code and description, when it gives one (e.g. `Target.Timeout`).
    pub reason: Option<String>,
}

impl ObservedTarget {
    pub fn key(&self) -> TargetKey {
        self.target.key
    }

    /// Draining targets are on their way out: the mirror neither copies them nor counts them as present.
    pub fn is_draining(&self) -> bool {
        self.health == HealthState::Draining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_targets_and_rejects_instances() {
        let k = TargetKey::parse("10.0.1.7", Some(8080)).ok();
        assert_eq!(k.map(|k| k.to_string()), Some("10.0.1.7:8080".to_string()));
        assert!(TargetKey::parse("i-0123456789abcdef0", Some(80)).is_err());
        assert!(TargetKey::parse("10.0.1.7", None).is_err());
        assert!(TargetKey::parse("10.0.1.7", Some(70000)).is_err());
        let v6 = TargetKey::parse("fd00::1", Some(80)).map(|k| k.to_string());
        assert_eq!(v6.ok().as_deref(), Some("[fd00::1]:80"));
    }

    #[test]
    fn health_states_round_trip() {
        for s in ["initial", "healthy", "unhealthy", "unused", "draining", "unavailable"] {
            assert_eq!(HealthState::parse(s).as_str(), s);
        }
        assert_eq!(HealthState::parse("something-new"), HealthState::Unknown);
    }
}

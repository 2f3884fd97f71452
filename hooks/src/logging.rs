//! The functions' log output: the levels and formats Lambda's advanced logging controls ask for, set up without
//! a regex engine (the runtime's own subscriber filters with `EnvFilter`, a tenth of a function's zip).
//!
//! - `AWS_LAMBDA_LOG_FORMAT=JSON` (the SAM templates set it): one JSON object per line, the event's fields at the
//!   top level beside `level`, `target` and `message`, so that the hook summary's `deployment_id`, `verdict`,
//!   `duration_ms`... are fields CloudWatch Logs Insights queries by name. Otherwise plain text.
//! - `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else `info`: one level for everything (a `RUST_LOG` with
//!   per-module directives is read for its last bare level, `info` when it has none).

use tracing_subscriber::filter::LevelFilter;

/// The output format, from `AWS_LAMBDA_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn from_env_value(v: Option<&str>) -> Self {
        match v {
            Some(v) if v.trim().eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Text,
        }
    }
}

/// The level, from `AWS_LAMBDA_LOG_LEVEL` (Lambda's names: TRACE, DEBUG, INFO, WARN, ERROR, FATAL) or `RUST_LOG`.
pub fn level_from(lambda_level: Option<&str>, rust_log: Option<&str>) -> LevelFilter {
    let parse = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "trace" => Some(LevelFilter::TRACE),
        "debug" => Some(LevelFilter::DEBUG),
        "info" => Some(LevelFilter::INFO),
        "warn" | "warning" => Some(LevelFilter::WARN),
        // Lambda's FATAL has no tracing level of its own: errors are the most severe there are.
        "error" | "fatal" => Some(LevelFilter::ERROR),
        "off" => Some(LevelFilter::OFF),
        _ => None,
    };
    if let Some(level) = lambda_level.and_then(parse) {
        return level;
    }
    rust_log
        .and_then(|directives| directives.split(',').rev().find_map(|d| if d.contains('=') { None } else { parse(d) }))
        .unwrap_or(LevelFilter::INFO)
}

/// Installs the subscriber for the process (once, at cold start; a second call changes nothing).
pub fn init() {
    let format = Format::from_env_value(std::env::var("AWS_LAMBDA_LOG_FORMAT").ok().as_deref());
    let level =
        level_from(std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().as_deref(), std::env::var("RUST_LOG").ok().as_deref());
    // Lambda stamps every line with its own time and request id: the subscriber adds neither.
    let builder = tracing_subscriber::fmt().with_max_level(level).without_time().with_writer(std::io::stdout);
    let _already_set = match format {
        Format::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        Format::Text => builder.with_target(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_level_wins_over_rust_log() {
        assert_eq!(level_from(Some("WARN"), Some("debug")), LevelFilter::WARN);
        assert_eq!(level_from(Some("FATAL"), None), LevelFilter::ERROR);
        assert_eq!(level_from(Some("bogus"), Some("debug")), LevelFilter::DEBUG);
    }

    #[test]
    fn rust_log_gives_its_bare_level_and_info_otherwise() {
        assert_eq!(level_from(None, Some("hyper=warn,trace")), LevelFilter::TRACE);
        assert_eq!(level_from(None, Some("hyper=warn")), LevelFilter::INFO);
        assert_eq!(level_from(None, None), LevelFilter::INFO);
    }

    #[test]
    fn json_only_when_asked() {
        assert_eq!(Format::from_env_value(Some("JSON")), Format::Json);
        assert_eq!(Format::from_env_value(Some("Text")), Format::Text);
        assert_eq!(Format::from_env_value(None), Format::Text);
    }
}

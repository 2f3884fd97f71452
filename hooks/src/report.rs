//! A picture of one deployment: a self-contained HTML page (inline SVG, no script, no network) with each side's
//! weights per version over time, the requests each side served per version and their failures, each hook's span
//! and verdict, and the moments worth marking (the flip, the follower's steps, faults). One renderer for two
//! sources: the rehearsal's timeline (`bluegreen-mirror report --data FILE`) and a real deployment's DynamoDB
//! record (`bluegreen-mirror report DEPLOYMENT_ID`, see [`from_record`]). The page is well-formed XML (XHTML), so
//! that tests can parse it.

use std::fmt::Write as _;

use bluegreen_mirror::domain::{DeploymentRecord, Route};
use serde::{Deserialize, Serialize};

/// What the page draws; times are milliseconds from the picture's start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Picture {
    pub title: String,
    /// Label → value, shown as a table under the title.
    pub facts: Vec<(String, String)>,
    pub end_ms: u64,
    /// Weights (percent) per side and version, as steps: each point holds until the next.
    pub weights: Vec<Series>,
    /// Requests served per side and version, in buckets of `bucket_ms`.
    pub requests: Vec<Requests>,
    pub spans: Vec<Span>,
    pub marks: Vec<Mark>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Series {
    pub side: String,
    pub version: String,
    pub points: Vec<(u64, f64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Requests {
    pub side: String,
    pub bucket_ms: u64,
    /// Version → requests it served per bucket.
    pub served: Vec<(String, Vec<u32>)>,
    pub failed: Vec<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Span {
    pub label: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub verdict: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Mark {
    pub at_ms: u64,
    /// `flip`, `follower`, `fault` or `event`.
    pub kind: String,
    pub label: String,
}

const WIDTH: f64 = 960.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 20.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn color(version: &str) -> &'static str {
    match version {
        "blue" => "#1f6fb4",
        "green" => "#2a9d3a",
        _ => "#8a5cc2",
    }
}

fn mark_color(kind: &str) -> &'static str {
    match kind {
        "flip" => "#d62728",
        "follower" => "#ff8c00",
        "fault" => "#7f007f",
        "would-be" => "#2a9d8f",
        _ => "#888888",
    }
}

impl Picture {
    fn x(&self, t: u64) -> f64 {
        let end = self.end_ms.max(1) as f64;
        LEFT + (t.min(self.end_ms) as f64 / end) * (WIDTH - LEFT - RIGHT)
    }

    fn axis(&self, out: &mut String, top: f64, bottom: f64) {
        let _ =
            write!(out, r##"<line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#444"/>"##, WIDTH - RIGHT);
        let step = nice_step(self.end_ms);
        let mut t = 0;
        while t <= self.end_ms {
            let x = self.x(t);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#eee"/><text x="{x:.1}" y="{}" font-size="10" text-anchor="middle">{:.1} s</text>"##,
                bottom + 12.0,
                t as f64 / 1000.0
            );
            t += step;
        }
    }

    fn marks_in(&self, out: &mut String, top: f64, bottom: f64) {
        for m in &self.marks {
            let x = self.x(m.at_ms);
            let _ = write!(
                out,
                r##"<line class="mark" data-kind="{}" x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="{}" stroke-dasharray="4 3"><title>{} at {:.3} s: {}</title></line>"##,
                esc(&m.kind),
                mark_color(&m.kind),
                esc(&m.kind),
                m.at_ms as f64 / 1000.0,
                esc(&m.label)
            );
        }
    }

    fn sides<'a>(&self, of: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut sides: Vec<String> = Vec::new();
        for s in of {
            if !sides.iter().any(|x| x == s) {
                sides.push(s.to_string());
            }
        }
        sides
    }

    fn weights_svg(&self, out: &mut String) {
        let sides = self.sides(self.weights.iter().map(|s| s.side.as_str()));
        let panel = 110.0;
        let height = panel * sides.len() as f64 + 20.0;
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="weights" width="{WIDTH}" height="{height}">"#
        );
        for (i, side) in sides.iter().enumerate() {
            let top = 10.0 + panel * i as f64;
            let bottom = top + panel - 30.0;
            let y = |pct: f64| bottom - (pct.clamp(0.0, 100.0) / 100.0) * (bottom - top);
            self.axis(out, top, bottom);
            let _ = write!(
                out,
                r##"<text x="8" y="{}" font-size="12" font-weight="bold">{}</text><text x="{}" y="{}" font-size="9" text-anchor="end">100 %</text><text x="{}" y="{bottom}" font-size="9" text-anchor="end">0</text>"##,
                top + 20.0,
                esc(side),
                LEFT - 4.0,
                top + 8.0,
                LEFT - 4.0
            );
            for s in self.weights.iter().filter(|s| &s.side == side) {
                let mut d = String::new();
                for (j, (t, pct)) in s.points.iter().enumerate() {
                    let (x, yy) = (self.x(*t), y(*pct));
                    if j == 0 {
                        let _ = write!(d, "M{x:.1},{yy:.1}");
                    } else {
                        let _ = write!(d, " H{x:.1} V{yy:.1}");
                    }
                }
                if !s.points.is_empty() {
                    let _ = write!(d, " H{:.1}", self.x(self.end_ms));
                }
                let _ = write!(
                    out,
                    r#"<path class="series" data-side="{}" data-version="{}" d="{d}" fill="none" stroke="{}" stroke-width="2"><title>{} {}</title></path>"#,
                    esc(side),
                    esc(&s.version),
                    color(&s.version),
                    esc(side),
                    esc(&s.version)
                );
            }
            self.marks_in(out, top, bottom);
        }
        out.push_str("</svg>");
    }

    fn requests_svg(&self, out: &mut String) {
        let panel = 110.0;
        let height = panel * self.requests.len() as f64 + 20.0;
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="requests" width="{WIDTH}" height="{height}">"#
        );
        for (i, r) in self.requests.iter().enumerate() {
            let top = 10.0 + panel * i as f64;
            let bottom = top + panel - 30.0;
            let buckets = r.failed.len().max(r.served.iter().map(|(_, v)| v.len()).max().unwrap_or(0));
            let total = |b: usize| -> u32 {
                r.served.iter().map(|(_, v)| v.get(b).copied().unwrap_or(0)).sum::<u32>()
                    + r.failed.get(b).copied().unwrap_or(0)
            };
            let max = (0..buckets).map(total).max().unwrap_or(0).max(1) as f64;
            self.axis(out, top, bottom);
            let _ = write!(
                out,
                r##"<text x="8" y="{}" font-size="12" font-weight="bold">{}</text><text x="{}" y="{}" font-size="9" text-anchor="end">{max:.0}/bucket</text>"##,
                top + 20.0,
                esc(&r.side),
                LEFT - 4.0,
                top + 8.0
            );
            let w = (self.x(r.bucket_ms) - LEFT).max(1.0);
            let mut layers: Vec<(String, &'static str, &Vec<u32>)> =
                r.served.iter().map(|(v, n)| (v.clone(), color(v), n)).collect();
            layers.push(("failed".to_string(), "#d62728", &r.failed));
            let mut base = vec![0u32; buckets];
            for (name, fill, counts) in layers {
                let _ = write!(
                    out,
                    r#"<g class="requests-series" data-side="{}" data-version="{}" fill="{fill}">"#,
                    esc(&r.side),
                    esc(&name)
                );
                for (b, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                    let x = self.x(b as u64 * r.bucket_ms);
                    let h = f64::from(*n) / max * (bottom - top);
                    let y0 = bottom - f64::from(base.get(b).copied().unwrap_or(0)) / max * (bottom - top);
                    let _ = write!(
                        out,
                        r#"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}"><title>{} {name}: {n}</title></rect>"#,
                        y0 - h,
                        esc(&r.side)
                    );
                    if let Some(s) = base.get_mut(b) {
                        *s += n;
                    }
                }
                out.push_str("</g>");
            }
            self.marks_in(out, top, bottom);
        }
        out.push_str("</svg>");
    }

    fn spans_svg(&self, out: &mut String) {
        let row = 22.0;
        let height = row * self.spans.len() as f64 + 30.0;
        let _ =
            write!(out, r#"<svg xmlns="http://www.w3.org/2000/svg" class="hooks" width="{WIDTH}" height="{height}">"#);
        let bottom = height - 20.0;
        self.axis(out, 0.0, bottom);
        for (i, s) in self.spans.iter().enumerate() {
            let y = 4.0 + row * i as f64;
            let (x0, x1) = (self.x(s.start_ms), self.x(s.end_ms.max(s.start_ms)));
            let fill = if s.verdict == "Succeeded" { "#2a9d3a" } else { "#d62728" };
            let _ = write!(
                out,
                r##"<g class="span" data-label="{}" data-verdict="{}"><text x="8" y="{:.1}" font-size="11">{}</text><rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{}" fill="{fill}"><title>{} {}: {:.3} s to {:.3} s</title></rect><text x="{:.1}" y="{:.1}" font-size="10">{}</text></g>"##,
                esc(&s.label),
                esc(&s.verdict),
                y + 13.0,
                esc(&s.label),
                (x1 - x0).max(2.0),
                row - 8.0,
                esc(&s.label),
                esc(&s.verdict),
                s.start_ms as f64 / 1000.0,
                s.end_ms as f64 / 1000.0,
                x1 + 4.0,
                y + 12.0,
                esc(&s.verdict)
            );
        }
        self.marks_in(out, 0.0, bottom);
        out.push_str("</svg>");
    }

    /// The page.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/><title>{}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;font-size:13px}} td{{padding:2px 10px 2px 0;vertical-align:top}} h2{{font-size:15px;margin:22px 0 6px}} .legend span{{display:inline-block;margin-right:16px;font-size:12px}} .sw{{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}}</style>
</head><body><h1 style="font-size:19px">{}</h1><table class="facts">"#,
            esc(&self.title),
            esc(&self.title)
        );
        for (k, v) in &self.facts {
            let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
        }
        out.push_str("</table>");
        out.push_str(r#"<p class="legend"><span><i class="sw" style="background:#1f6fb4"></i>blue</span><span><i class="sw" style="background:#2a9d3a"></i>green</span><span><i class="sw" style="background:#d62728"></i>failed / the flip</span><span><i class="sw" style="background:#ff8c00"></i>follower step</span><span><i class="sw" style="background:#7f007f"></i>fault</span></p>"#);
        out.push_str("<h2>Weights per version (percent of each side's production traffic)</h2>");
        self.weights_svg(&mut out);
        if !self.requests.is_empty() {
            out.push_str("<h2>Requests served per version, and failures</h2>");
            self.requests_svg(&mut out);
        }
        out.push_str("<h2>Hooks</h2>");
        self.spans_svg(&mut out);
        out.push_str(r#"<h2>Moments</h2><table class="marks">"#);
        for m in &self.marks {
            let _ = write!(
                out,
                r#"<tr><td>{:.3} s</td><td>{}</td><td>{}</td></tr>"#,
                m.at_ms as f64 / 1000.0,
                esc(&m.kind),
                esc(&m.label)
            );
        }
        out.push_str("</table></body></html>\n");
        out
    }
}

/// Grid lines every 1, 2 or 5 × 10ⁿ ms, about ten across.
fn nice_step(end_ms: u64) -> u64 {
    let raw = (end_ms / 10).max(1);
    let mut p = 1u64;
    loop {
        for m in [1, 2, 5] {
            if m * p >= raw {
                return m * p;
            }
        }
        p = p.saturating_mul(10);
    }
}

fn percent_of(route: &Route, group: &str) -> f64 {
    let total: u64 = route.target_groups.iter().map(|w| u64::from(w.weight)).sum();
    let mine: u64 = route.target_groups.iter().filter(|w| w.target_group == group).map(|w| u64::from(w.weight)).sum();
    if total == 0 {
        0.0
    } else {
        mine as f64 * 100.0 / total as f64
    }
}

/// A real deployment from its record: the hooks as they completed, the private weights before the flip and
/// after it, the flip; `live` adds the routes as they are now, read from ELB (public, private).
pub fn from_record(rec: &DeploymentRecord, live: &[(String, Route)], now_ms: u64) -> Picture {
    let mut times: Vec<u64> = rec.phases.values().copied().collect();
    times.extend(rec.private_flip_at_ms);
    let start = times.iter().min().copied().unwrap_or(now_ms).saturating_sub(5_000);
    let rel = |t: u64| t.saturating_sub(start);
    let end_ms = rel(now_ms.max(times.iter().max().copied().unwrap_or(now_ms)));
    let mut done: Vec<(&String, &u64)> = rec.phases.iter().collect();
    done.sort_by_key(|(_, t)| **t);
    let verdict = |last: bool| match (last, rec.outcome.as_deref()) {
        (true, Some("failed")) => "Failed",
        _ => "Succeeded",
    };
    // The record keeps when each hook finished; each is drawn from the previous one's end.
    let mut spans = Vec::new();
    let mut from = 0;
    for (i, (phase, at)) in done.iter().enumerate() {
        spans.push(Span {
            label: (*phase).clone(),
            start_ms: from,
            end_ms: rel(**at),
            verdict: verdict(i + 1 == done.len()).into(),
        });
        from = rel(**at);
    }
    let mut weights = Vec::new();
    let groups =
        [("blue", rec.blue_private_target_group.as_deref()), ("green", rec.green_private_target_group.as_deref())];
    // An observed deployment's flip is a would-be one: drawn below as such, not as the private side's.
    if let (Some(before), Some(after), Some(flip), false) =
        (&rec.private_route_before, &rec.planned_private_route, rec.private_flip_at_ms, rec.observed)
    {
        for (version, group) in groups {
            if let Some(g) = group {
                weights.push(Series {
                    side: "private".into(),
                    version: version.into(),
                    points: vec![(0, percent_of(before, g)), (rel(flip), percent_of(after, g))],
                });
            }
        }
    }
    let mut marks: Vec<Mark> = rec
        .private_flip_at_ms
        .filter(|_| !rec.observed)
        .map(|at| Mark { at_ms: rel(at), kind: "flip".into(), label: "private production route flipped".into() })
        .into_iter()
        .collect();
    marks.push(Mark { at_ms: end_ms, kind: "event".into(), label: "now: the routes below are read live".into() });
    let mut facts = vec![
        ("deployment".to_string(), rec.deployment_id.clone()),
        ("binding".to_string(), format!("{}/{}", rec.application, rec.deployment_group)),
        ("outcome".to_string(), rec.outcome.clone().unwrap_or_else(|| "in progress".into())),
        ("targets mirrored".to_string(), rec.targets_mirrored.to_string()),
    ];
    if let Some(m) = &rec.last_message {
        facts.push(("last message".into(), m.clone()));
    }
    for (side, route) in live {
        facts.push((format!("{side} route now"), route.to_string()));
    }
    if rec.observed {
        observed(rec, &groups, rel, (&mut facts, &mut weights, &mut marks));
    }
    Picture {
        title: format!("Deployment {} of {}/{}", rec.deployment_id, rec.application, rec.deployment_group),
        facts,
        end_ms,
        weights,
        requests: Vec::new(),
        spans,
        marks,
    }
}

/// What shadow mode adds to a record's picture: the private production route as the functions would have moved
/// it (drawn as the side `private (would be)`, beside the private side as it stayed), each would-be action as a
/// mark, and the would-be verdict.
fn observed(
    rec: &DeploymentRecord,
    groups: &[(&str, Option<&str>)],
    rel: impl Fn(u64) -> u64,
    (facts, weights, marks): (&mut Vec<(String, String)>, &mut Vec<Series>, &mut Vec<Mark>),
) {
    facts.push(("mode".into(), "observe: nothing was written to the private side".into()));
    facts.push((
        "would have".into(),
        match &rec.would_be_failure {
            Some(why) => format!("failed the deployment: {why}"),
            None => "succeeded".into(),
        },
    ));
    let moves: Vec<(u64, &Route)> = rec
        .would_be
        .iter()
        .filter(|w| w.route.as_deref() == Some("production"))
        .filter_map(|w| Some((rel(w.at_ms), w.to.as_ref()?)))
        .collect();
    for (version, group) in groups {
        let Some(g) = group else { continue };
        if let Some(before) = &rec.private_route_before {
            let stayed = percent_of(before, g);
            weights.push(Series {
                side: "private (as it stayed)".into(),
                version: (*version).into(),
                points: vec![(0, stayed)],
            });
            let mut points = vec![(0, stayed)];
            points.extend(moves.iter().map(|(at, to)| (*at, percent_of(to, g))));
            weights.push(Series { side: "private (would be)".into(), version: (*version).into(), points });
        }
    }
    // The public side as the follower read it at each move, beside which the would-be private side is drawn.
    if let (Some(green), false) = (rec.green_public_target_group.as_deref(), rec.public_moves.is_empty()) {
        let points = |green_side: bool| -> Vec<(u64, f64)> {
            rec.public_moves
                .iter()
                .map(|(at, route)| {
                    let g = percent_of(route, green);
                    (rel(*at), if green_side { g } else { 100.0 - g })
                })
                .collect()
        };
        weights.push(Series { side: "public".into(), version: "blue".into(), points: points(false) });
        weights.push(Series { side: "public".into(), version: "green".into(), points: points(true) });
    }
    for w in &rec.would_be {
        marks.push(Mark {
            at_ms: rel(w.at_ms),
            kind: "would-be".into(),
            label: format!("{}: would have {}", w.by, w.action),
        });
        facts.push((format!("would have ({}, {:.1} s)", w.by, rel(w.at_ms) as f64 / 1000.0), w.action.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture() -> Picture {
        Picture {
            title: "Deployment d-1 <web>".into(),
            facts: vec![("outcome".into(), "succeeded".into())],
            end_ms: 10_000,
            weights: vec![
                Series { side: "public".into(), version: "blue".into(), points: vec![(0, 100.0), (5_000, 0.0)] },
                Series { side: "public".into(), version: "green".into(), points: vec![(0, 0.0), (5_000, 100.0)] },
                Series { side: "private".into(), version: "green".into(), points: vec![(0, 0.0), (5_020, 100.0)] },
            ],
            requests: vec![Requests {
                side: "private".into(),
                bucket_ms: 1_000,
                served: vec![("blue".into(), vec![10, 10, 0]), ("green".into(), vec![0, 0, 12])],
                failed: vec![0, 1, 0],
            }],
            spans: vec![Span {
                label: "AfterAllowTraffic".into(),
                start_ms: 5_000,
                end_ms: 6_000,
                verdict: "Succeeded".into(),
            }],
            marks: vec![Mark { at_ms: 5_020, kind: "flip".into(), label: "private flip".into() }],
        }
    }

    #[test]
    fn every_series_span_and_mark_is_drawn_and_text_is_escaped() {
        let html = picture().render();
        for needle in [
            r#"data-side="public" data-version="blue""#,
            r#"data-side="public" data-version="green""#,
            r#"data-side="private" data-version="green""#,
            r#"class="requests-series" data-side="private" data-version="failed""#,
            r#"class="span" data-label="AfterAllowTraffic" data-verdict="Succeeded""#,
            r#"class="mark" data-kind="flip""#,
            "Deployment d-1 &lt;web&gt;",
        ] {
            assert!(html.contains(needle), "{needle} missing");
        }
        assert!(!html.contains("<script") && !html.contains("http://example") && !html.contains("src="));
        // Balanced: every element opened is closed, or closes itself (the page is XHTML).
        for tag in ["svg", "g", "table", "tr", "td", "path", "rect", "text", "title", "line"] {
            let opened: Vec<&str> = html
                .split(&format!("<{tag}"))
                .skip(1)
                .filter(|rest| rest.starts_with(' ') || rest.starts_with('>'))
                .collect();
            let self_closed =
                opened.iter().filter(|rest| rest.split('>').next().is_some_and(|t| t.ends_with('/'))).count();
            assert_eq!(opened.len(), self_closed + html.matches(&format!("</{tag}>")).count(), "<{tag}> unbalanced");
        }
    }

    #[test]
    fn a_record_gives_the_private_weights_around_the_flip() {
        let rec: DeploymentRecord = serde_json::from_value(serde_json::json!({
            "deployment_id": "d-9", "application": "web", "deployment_group": "web-bg", "version": 3,
            "phases": {"AfterInstall": 100_000, "BeforeAllowTraffic": 130_000, "AfterAllowTraffic": 140_000},
            "blue_private_target_group": "arn:b", "green_private_target_group": "arn:g",
            "private_route_before": {"target_groups": [{"target_group": "arn:b", "weight": 100}]},
            "planned_private_route": {"target_groups": [{"target_group": "arn:g", "weight": 100}]},
            "private_flip_at_ms": 139_000, "outcome": "succeeded", "expires_at": 0
        }))
        .unwrap_or_default();
        let p = from_record(&rec, &[], 150_000);
        assert_eq!(p.spans.len(), 3);
        assert_eq!(p.spans[2].verdict, "Succeeded");
        let green = p.weights.iter().find(|s| s.version == "green").map(|s| s.points.clone()).unwrap_or_default();
        assert_eq!(green, vec![(0, 0.0), (44_000, 100.0)]);
        assert!(p.marks.iter().any(|m| m.kind == "flip" && m.at_ms == 44_000));
        assert!(p.render().contains(r#"data-side="private" data-version="green""#));
    }

    #[test]
    fn an_observed_record_draws_the_private_side_as_it_would_have_moved_beside_how_it_stayed() {
        let rec: DeploymentRecord = serde_json::from_value(serde_json::json!({
            "deployment_id": "d-9", "application": "web", "deployment_group": "web-bg", "version": 4,
            "phases": {"AfterInstall": 100_000, "BeforeAllowTraffic": 130_000, "AfterAllowTraffic": 140_000},
            "blue_private_target_group": "arn:b", "green_private_target_group": "arn:g",
            "private_route_before": {"target_groups": [{"target_group": "arn:b", "weight": 100}]},
            "planned_private_route": {"target_groups": [{"target_group": "arn:g", "weight": 100}]},
            "private_flip_at_ms": 139_000,
            "observed": true, "green_public_target_group": "arn:pg",
            "public_moves": [[135_500, {"target_groups": [{"target_group": "arn:pb", "weight": 90},
                                                          {"target_group": "arn:pg", "weight": 10}]}],
                             [140_500, {"target_groups": [{"target_group": "arn:pg", "weight": 100}]}]],
            "would_be": [
                {"at_ms": 99_000, "by": "AfterInstall", "action": "register 10.0.0.101:8080 into g"},
                {"at_ms": 136_000, "by": "follower", "action": "set listener L to [g=100]", "route": "production",
                 "to": {"target_groups": [{"target_group": "arn:g", "weight": 100}]}},
                {"at_ms": 137_000, "by": "follower", "action": "set rule R to [b=100]", "route": "test",
                 "to": {"target_groups": [{"target_group": "arn:b", "weight": 100}]}}
            ],
            "expires_at": 0
        }))
        .unwrap_or_default();
        let p = from_record(&rec, &[], 150_000);
        let series = |side: &str, version: &str| {
            p.weights.iter().find(|s| s.side == side && s.version == version).map(|s| s.points.clone())
        };
        // The test route's change is not the production route's: only the latter moves the drawn weights.
        assert_eq!(series("private (would be)", "green"), Some(vec![(0, 0.0), (41_000, 100.0)]));
        assert_eq!(series("private (as it stayed)", "green"), Some(vec![(0, 0.0)]));
        assert_eq!(series("public", "green"), Some(vec![(40_500, 10.0), (45_500, 100.0)]));
        assert_eq!(series("public", "blue"), Some(vec![(40_500, 90.0), (45_500, 0.0)]));
        assert_eq!(p.marks.iter().filter(|m| m.kind == "would-be").count(), 3);
        // Nothing was flipped: no series or mark says the private side moved.
        assert!(p.weights.iter().all(|s| s.side != "private") && p.marks.iter().all(|m| m.kind != "flip"));
        assert!(p.facts.iter().any(|(k, v)| k == "would have" && v == "succeeded"), "{:?}", p.facts);
        assert!(p.facts.iter().any(|(k, v)| k == "would have (AfterInstall, 4.0 s)" && v.starts_with("register")));
        assert!(p.render().contains(r#"data-side="private (would be)" data-version="green""#));
    }
}

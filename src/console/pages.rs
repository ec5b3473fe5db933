//! The console's server-rendered HTML: every page is complete without its script (which only
//! keeps it live), and every value from a job or provider is escaped on the way in.

use std::fmt::Write as _;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::{BatchView, JobView, Money, ProviderView, STATES, Totals};

/// What the console's pages may load: only its own script and style; images from anywhere
/// on the web (outputs live at the providers' CDNs).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' http: https:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// Escape text for HTML content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix milliseconds (proleptic Gregorian, no time crate).
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `USD 0.40`; finer fractions keep their digits (`USD 0.0125`).
pub fn money(m: &Money) -> String {
    let whole = m.micros / 1_000_000;
    let frac = (m.micros % 1_000_000).abs();
    let sign = if m.micros < 0 && whole == 0 { "-" } else { "" };
    let mut digits = format!("{frac:06}");
    while digits.len() > 2 && digits.ends_with('0') {
        digits.pop();
    }
    format!("{} {sign}{whole}.{digits}", m.currency)
}

pub fn costs(cost: &[Money]) -> String {
    if cost.is_empty() {
        "—".to_owned()
    } else {
        cost.iter().map(money).collect::<Vec<_>>().join(" + ")
    }
}

/// A complete page with the console's headers.
fn page(status: StatusCode, title: &str, active: &str, signed_in: bool, body: &str) -> Response {
    let nav = |href: &str, name: &str, label: &str| {
        let cls = if name == active {
            " class=\"active\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{cls}>{label}</a>")
    };
    let logout = if signed_in {
        "<form method=\"post\" action=\"/ui/logout\" class=\"logout\">\
         <button type=\"submit\">Sign out</button></form>"
    } else {
        ""
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · adgate</title>\
         <link rel=\"stylesheet\" href=\"/ui/assets/console.css\">\
         <script src=\"/ui/assets/console.js\" defer></script></head>\
         <body><header><span class=\"brand\">adgate</span><nav>{}{}</nav>{logout}</header>\
         <main>{body}</main></body></html>\n",
        esc(title),
        nav("/ui", "batches", "Batches"),
        nav("/ui/providers", "providers", "Providers"),
    );
    with_headers(status, "text/html; charset=utf-8", html)
}

/// `content` with the console's security and caching headers.
pub fn with_headers(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

pub fn login(next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))
    });
    let body = format!(
        "<section class=\"login\"><h1>Sign in</h1>\
         <p>This gateway requires a caller token (one of <code>ADGATE_AUTH_TOKENS</code>).</p>{error}\
         <form method=\"post\" action=\"/ui/login\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" \
         required autofocus></label> <button type=\"submit\">Sign in</button></form></section>",
        esc(next)
    );
    page(status, "Sign in", "", false, &body)
}

pub fn not_found(what: &str, signed_in: bool) -> Response {
    let body = format!(
        "<h1>Not found</h1><p>{}</p><p><a href=\"/ui\">All batches</a></p>",
        esc(what)
    );
    page(StatusCode::NOT_FOUND, "Not found", "", signed_in, &body)
}

pub fn unavailable(signed_in: bool) -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "",
        signed_in,
        "<h1>Unavailable</h1><p>The job store cannot be read right now; try again shortly.</p>",
    )
}

/// Count chips, one per state (zeros dimmed), with `data-state` for the script.
pub fn chips(t: &Totals) -> String {
    let mut out = String::from("<div class=\"chips\">");
    for s in STATES {
        let n = t.counts.get(s.name()).copied().unwrap_or(0);
        let zero = if n == 0 { " zero" } else { "" };
        let _ = write!(
            out,
            "<span class=\"chip s-{0}{zero}\" data-count=\"{0}\">{0} <b>{n}</b></span>",
            s.name()
        );
    }
    out.push_str("</div>");
    out
}

/// One batch row of the batches list.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub batch_id: String,
    pub created_at_ms: i64,
    pub totals: Totals,
}

pub fn batches(rows: &[BatchRow], note: &str, signed_in: bool) -> Response {
    let body = format!(
        "<h1>Batches</h1><form class=\"open\" method=\"get\" action=\"/ui/open\">\
         <label>Open a batch <input name=\"batch\" placeholder=\"bat_…\" required \
         pattern=\"[A-Za-z0-9_\\-]+\"></label> <button type=\"submit\">Open</button></form>\
         <section id=\"batches\">{}</section>",
        batches_list(rows, note)
    );
    page(StatusCode::OK, "Batches", "batches", signed_in, &body)
}

/// The batches list's live part (the script swaps it in from `/ui/api/batches`).
pub fn batches_list(rows: &[BatchRow], note: &str) -> String {
    let mut body = String::new();
    if !note.is_empty() {
        let _ = write!(body, "<p class=\"note\">{}</p>", esc(note));
    }
    if rows.is_empty() {
        body.push_str(
            "<p class=\"empty\">No batches yet. Submit one with \
             <code>adgate.v1.GatewayService/Submit</code>.</p>",
        );
        return body;
    }
    body.push_str(
        "<table class=\"batches\"><thead><tr><th>Batch</th><th>Created</th><th>Jobs</th>\
         <th>States</th><th>Cost</th></tr></thead><tbody>",
    );
    for r in rows {
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/batches/{id}\"><code>{id}</code></a></td><td>{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            utc(r.created_at_ms),
            r.totals.jobs,
            chips(&r.totals),
            esc(&costs(&r.totals.cost)),
            id = esc(&r.batch_id),
        );
    }
    body.push_str("</tbody></table>");
    body
}

/// One job card. `console.js` builds the same structure (`card()`) when a job changes.
pub fn card(j: &JobView) -> String {
    let mut out = format!(
        "<article class=\"card s-{state}\" id=\"job-{id}\" data-job=\"{id}\" data-state=\"{state}\">\
         <div class=\"thumbs\">",
        id = esc(&j.id),
        state = j.state,
    );
    if j.outputs.is_empty() {
        let what = if j.terminal {
            "no image"
        } else {
            "rendering…"
        };
        let _ = write!(out, "<div class=\"placeholder\">{what}</div>");
    }
    for (i, o) in j.outputs.iter().enumerate() {
        let cls = if i == 0 { "main" } else { "extra" };
        let label = if o.format.is_empty() {
            format!("{}×{}", o.width, o.height)
        } else {
            format!("{} {}×{}", o.format, o.width, o.height)
        };
        let _ = write!(
            out,
            "<a class=\"{cls}\" href=\"{url}\" target=\"_blank\" rel=\"noopener noreferrer\" \
             title=\"{label}\"><img src=\"{url}\" alt=\"{alt}\"></a>",
            url = esc(&o.url),
            label = esc(&label),
            alt = esc(&format!("{} {label}", j.client_ref)),
        );
    }
    out.push_str("</div><div class=\"meta\"><div class=\"row\">");
    let client_ref = if j.client_ref.is_empty() {
        "(no client_ref)"
    } else {
        &j.client_ref
    };
    let _ = write!(
        out,
        "<span class=\"ref\" title=\"{0}\">{0}</span><span class=\"badge s-{1}\">{1}</span></div>\
         <div class=\"row small\"><span class=\"provider\">{2}</span><span class=\"cost\">{3}</span></div>",
        esc(client_ref),
        j.state,
        esc(&j.provider),
        esc(&j.cost.as_ref().map_or(String::new(), money)),
    );
    if !j.terminal {
        let pct = j.progress.as_ref().map_or(0.0, |p| p.percentage);
        let _ = write!(
            out,
            "<progress max=\"100\" value=\"{:.0}\"></progress>",
            pct.clamp(0.0, 100.0)
        );
    }
    if let (Some(pos), Some(start)) = (j.queue_position, j.starts_at_ms) {
        let _ = write!(
            out,
            "<div class=\"step\">queued: {pos} ahead · {}</div>",
            match relative(start).as_str() {
                "now" => "next to be sent".to_owned(),
                r => format!("sent {r}"),
            }
        );
    }
    if let Some(p) = &j.progress
        && !j.terminal
    {
        let text = if p.message.is_empty() {
            p.step.clone()
        } else {
            format!("{}: {}", p.step, p.message)
        };
        let _ = write!(out, "<div class=\"step\">{}</div>", esc(&text));
    }
    if let Some(e) = &j.error {
        let _ = write!(
            out,
            "<div class=\"error\"><b>{}</b> {}</div>",
            esc(&e.code),
            esc(&e.message)
        );
    }
    let _ = write!(
        out,
        "<div class=\"jobid\">{}</div></div></article>",
        esc(&j.id)
    );
    out
}

pub fn batch(v: &BatchView, signed_in: bool) -> Response {
    let shown = if v.totals.jobs > v.jobs.len() {
        format!(
            "<p class=\"note\">Showing the first {} of {} jobs; the counts cover all.</p>",
            v.jobs.len(),
            v.totals.jobs
        )
    } else {
        String::new()
    };
    let mut body = format!(
        "<section class=\"batch\" id=\"batch\" data-batch=\"{id}\" data-cursor=\"{cursor}\" \
         data-done=\"{done}\"><h1>Batch <code>{id}</code></h1>\
         <p class=\"summary\">Created {created} · <span id=\"jobs\">{jobs}</span> jobs · cost \
         <span id=\"cost\">{cost}</span> · <span id=\"live\">{live}</span>\
         <span id=\"eta\">{eta}</span></p><div id=\"counts\">{chips}</div>{shown}\
         <div class=\"grid\" id=\"grid\">",
        id = esc(&v.batch_id),
        cursor = v.cursor,
        done = v.done,
        created = utc(v.created_at_ms),
        jobs = v.totals.jobs,
        cost = esc(&costs(&v.totals.cost)),
        live = if v.done { "finished" } else { "running" },
        eta = eta_text(v),
        chips = chips(&v.totals),
    );
    for j in &v.jobs {
        body.push_str(&card(j));
    }
    body.push_str("</div></section>");
    page(
        StatusCode::OK,
        &format!("Batch {}", v.batch_id),
        "batches",
        signed_in,
        &body,
    )
}

/// ` · done in ~30 s` while the engine has an estimate.
pub fn eta_text(v: &BatchView) -> String {
    v.expected_done_at_ms
        .filter(|_| !v.done)
        .map_or(String::new(), |t| match relative(t).as_str() {
            "now" => " · finishing".to_owned(),
            r => format!(" · done {r}"),
        })
}

fn counters(m: &std::collections::BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "—".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{} {v}", esc(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `in ~12 s` (or `now`) for a Unix-ms moment, from this machine's clock.
pub fn relative(at_ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let secs = at_ms.saturating_sub(now) as f64 / 1000.0;
    match duration(secs).as_str() {
        "now" => "now".to_owned(),
        d => format!("in ~{d}"),
    }
}

/// A budget window: `50 ms`, `3 s`, `1 min` (sandbox windows are scaled below a second).
pub fn window(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 120.0 && secs.fract() != 0.0 {
        format!("{secs:.1} s")
    } else {
        duration(secs)
    }
}

/// `12 s`, `3 min`, `2.5 h`.
pub fn duration(secs: f64) -> String {
    if secs < 1.0 {
        "now".to_owned()
    } else if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

/// The provider table's body rows (the script re-renders the same from `/ui/api/providers`).
pub fn provider_rows(ps: &[ProviderView]) -> String {
    let mut out = String::new();
    for p in ps {
        let daily = match (p.daily_used, p.daily_limit) {
            (Some(u), Some(l)) => format!("<div class=\"small\">day: {u} / {l}</div>"),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "<tr data-provider=\"{name}\"><td><b>{name}</b></td>\
             <td><span class=\"badge h-{health}\">{health}</span><div class=\"small\">{reason}</div></td>\
             <td><progress max=\"{limit}\" value=\"{used}\"></progress> {used} / {limit} per {win}{daily}</td>\
             <td class=\"num\">{queued}</td><td class=\"num\">{processing}</td><td class=\"num\">{in_flight}</td>\
             <td class=\"num\">{eta}</td><td>{webhooks}</td><td>{requests}</td></tr>",
            name = esc(&p.name),
            health = esc(&p.health),
            reason = esc(&p.reason),
            limit = p.budget_limit,
            used = p.budget_used,
            win = window(p.budget_window_secs),
            queued = p.queued,
            processing = p.processing,
            in_flight = p.in_flight,
            eta = match p.eta_secs {
                Some(s) if p.queued > 0 => duration(s),
                _ => "—".to_owned(),
            },
            webhooks = counters(&p.webhooks),
            requests = counters(&p.requests),
        );
    }
    out
}

pub fn providers(ps: &[ProviderView], signed_in: bool) -> Response {
    let body = format!(
        "<h1>Providers</h1>\
         <table class=\"providers\" id=\"providers\"><thead><tr><th>Provider</th><th>Health</th>\
         <th>Budget used (this process)</th><th>Queued</th><th>Processing</th><th>In flight</th>\
         <th title=\"queued jobs ÷ (budget rate × jobs per submit call): a lower bound\">ETA</th>\
         <th>Webhooks</th><th>Requests</th></tr></thead><tbody id=\"provider-rows\">{}</tbody></table>\
         <p class=\"note\">ETA = queued jobs ÷ (request budget rate × jobs per submit call); \
         polls share the budget, so the real time is longer.</p>",
        provider_rows(ps)
    );
    page(StatusCode::OK, "Providers", "providers", signed_in, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<img src=x onerror=\"a('b')\">&"),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_444_096_000), "2026-12-05 04:14:56 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn formats_money() {
        let m = |micros| Money {
            currency: "USD".into(),
            micros,
        };
        assert_eq!(money(&m(400_000)), "USD 0.40");
        assert_eq!(money(&m(4_000_000)), "USD 4.00");
        assert_eq!(money(&m(12_500)), "USD 0.0125");
    }

    #[test]
    fn formats_windows_and_etas() {
        assert_eq!(window(0.05), "50 ms");
        assert_eq!(window(3.0), "3 s");
        assert_eq!(window(1.5), "1.5 s");
        assert_eq!(window(60.0), "60 s");
        assert_eq!(duration(0.2), "now");
        assert_eq!(duration(600.0), "10 min");
        assert_eq!(duration(9000.0), "2.5 h");
    }

    #[test]
    fn a_card_escapes_provider_data() {
        let j = JobView {
            id: "job_1".into(),
            client_ref: "<script>x</script>".into(),
            provider: "pictify".into(),
            state: "FAILED",
            terminal: true,
            progress: None,
            outputs: vec![],
            error: Some(super::super::api::ErrorView {
                code: "PROVIDER_JOB_FAILED".into(),
                message: "bad \"<b>\"".into(),
            }),
            cost: None,
            updated_at_ms: 0,
            queue_position: None,
            starts_at_ms: None,
        };
        let html = card(&j);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(html.contains("bad &quot;&lt;b&gt;&quot;"));
        assert!(html.contains("data-state=\"FAILED\""));
    }
}

//! Issue 19: the web console in a real browser. The real binary runs `serve --sandbox`; a
//! mixed batch (all four providers, one job with a deadline it cannot meet) is submitted over
//! gRPC; headless Chromium opens the batch page and the test waits until every card is
//! terminal and every thumbnail has decoded, checks the cards against the gateway, and saves
//! the screenshot the README shows (`docs/console.png`). A second test signs in with auth on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod cdp;
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use adgate::pb;
use cdp::Browser;
use common::*;
use serde_json::Value;

/// Every card: its state, how many images it has and how many decoded, its error code.
const CARDS: &str = r#"(() => {
  const cards = [...document.querySelectorAll('#grid .card')];
  return {
    live: document.getElementById('live') ? document.getElementById('live').textContent : '',
    cards: cards.map(c => {
      const imgs = [...c.querySelectorAll('img')];
      const err = c.querySelector('.error b');
      return {
        id: c.dataset.job,
        state: c.dataset.state,
        ref: c.querySelector('.ref').textContent,
        images: imgs.length,
        loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
        error: err ? err.textContent : '',
      };
    }),
  };
})()"#;

fn bannerbear_job(headline: &str) -> pb::JobSpec {
    pb::JobSpec {
        provider: Some(pb::job_spec::Provider::Bannerbear(pb::BannerbearImage {
            template: "A89wavQyY3Bebk3djP".into(),
            modifications: Some(pb::bannerbear_image::Modifications {
                objects: vec![pb::bannerbear_image::Layer {
                    name: "headline".into(),
                    attributes: Some(string_struct(&[("text", headline)])),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn named(mut j: pb::JobSpec, client_ref: &str) -> pb::JobSpec {
    j.client_ref = client_ref.to_owned();
    j
}

/// Four providers, two formats for each Abyssale job, and one StaticAdsLab ad whose 1 s
/// deadline is shorter than any sandbox ad takes (1.5–3 s): it fails DEADLINE_EXCEEDED, so
/// the page shows an error card too.
fn mixed_batch() -> Vec<pb::JobSpec> {
    let mut too_slow = named(sal_job("brand_console"), "sal-too-slow");
    too_slow.deadline = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    vec![
        named(sal_job("brand_console"), "sal-spring"),
        named(sal_job("brand_console"), "sal-summer"),
        named(
            pictify_job("tmpl_blog_card", "Spring sale"),
            "pictify-spring",
        ),
        named(
            pictify_job("tmpl_blog_card", "Summer deals"),
            "pictify-summer",
        ),
        named(pictify_job("tmpl_blog_card", "Autumn"), "pictify-autumn"),
        named(
            abyssale_job(&["facebook-feed", "instagram-post"]),
            "abyssale-feed",
        ),
        named(abyssale_job(&["iab-medium"]), "abyssale-medium"),
        named(bannerbear_job("Spring sale"), "bannerbear-spring"),
        named(bannerbear_job("New season"), "bannerbear-season"),
        too_slow,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_page_shows_every_job_with_its_image_live_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Proc::spawn(
        &["serve", "--sandbox"],
        &[("ADGATE_DATABASE_URL", db_url(&dir))],
    );
    let mut client = connect(&gw.grpc).await;
    // The browser is up before the Submit, so the page opens while the jobs still run (the
    // quickest sandbox job takes 1.5 s, and the 1 s deadline one runs for 1 s) and reaches
    // the end only by following them live.
    let mut browser = Browser::launch(1280, 900).await;
    let jobs = mixed_batch();
    let n = jobs.len();
    let reply = submit(&mut client, jobs).await;
    assert_eq!(reply.job_ids.len(), n);
    let url = format!("{}/ui/batches/{}", gw.http, reply.batch_id);
    browser.navigate(&url).await;
    let first = browser
        .wait_until(
            "the batch page's cards",
            Duration::from_secs(20),
            CARDS,
            |v| v["cards"].as_array().is_some_and(|c| c.len() == n),
        )
        .await;
    let running_at_first = first["cards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !matches!(c["state"].as_str(), Some("COMPLETED" | "FAILED")))
        .count();
    assert!(
        running_at_first > 0 && first["live"] != "finished",
        "the page opened before the jobs ended, so reaching the end below is the live update: {first}"
    );

    let terminal = |c: &Value| matches!(c["state"].as_str(), Some("COMPLETED" | "FAILED"));
    let done = browser
        .wait_until(
            "every card terminal with every image decoded",
            Duration::from_secs(90),
            CARDS,
            |v| {
                v["live"] == "finished"
                    && v["cards"].as_array().is_some_and(|cs| {
                        cs.len() == n
                            && cs.iter().all(|c| {
                                terminal(c)
                                    && c["images"] == c["loaded"]
                                    && (c["state"] != "COMPLETED" || c["images"].as_u64() > Some(0))
                            })
                    })
            },
        )
        .await;

    // The cards say what the gateway says.
    let truth = batch(&mut client, &reply.batch_id).await;
    let cards: BTreeMap<String, &Value> = done["cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_owned(), c))
        .collect();
    assert_eq!(cards.len(), n, "one card per job: {done}");
    for j in &truth {
        let c = cards
            .get(&j.id)
            .unwrap_or_else(|| panic!("no card for {}", j.id));
        let state = pb::JobState::try_from(j.state).unwrap();
        let name = state.as_str_name().trim_start_matches("JOB_STATE_");
        assert_eq!(c["state"], name, "card of {} ({})", j.id, j.client_ref);
        assert_eq!(c["ref"], j.client_ref.as_str());
        assert_eq!(
            c["images"].as_u64(),
            Some(j.outputs.len() as u64),
            "{}",
            j.client_ref
        );
        let code = j.error.as_ref().map_or("", |e| e.code.as_str());
        assert_eq!(c["error"], code, "{}", j.client_ref);
    }
    let by_ref: BTreeMap<&str, &pb::Job> =
        truth.iter().map(|j| (j.client_ref.as_str(), j)).collect();
    assert_eq!(
        by_ref["sal-too-slow"].state,
        pb::JobState::Failed as i32,
        "the 1 s deadline job"
    );
    assert_eq!(error_code_of(by_ref["sal-too-slow"]), "DEADLINE_EXCEEDED");
    let completed = truth
        .iter()
        .filter(|j| j.state == pb::JobState::Completed as i32)
        .count();
    assert_eq!(completed, n - 1, "every other job completes in the sandbox");
    assert_eq!(
        by_ref["abyssale-feed"].outputs.len(),
        2,
        "one image per Abyssale format"
    );

    // The counts chips agree with the cards.
    let chips = browser
        .eval(
            "Object.fromEntries([...document.querySelectorAll('#counts .chip')]\
             .map(c => [c.dataset.count, Number(c.querySelector('b').textContent)]))",
        )
        .await;
    assert_eq!(chips["COMPLETED"], completed as u64, "{chips}");
    assert_eq!(chips["FAILED"], 1, "{chips}");

    let png = browser.screenshot_full_page().await;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real screenshot"
    );
    // The README's screenshot is refreshed on request (ADGATE_UPDATE_SCREENSHOT=1); every
    // other run writes beside the build, so running the tests never dirties the checkout.
    let out = if std::env::var_os("ADGATE_UPDATE_SCREENSHOT").is_some() {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png")
    } else {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png")
    };
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, &png).unwrap();
    println!(
        "saved {} ({} bytes); {running_at_first} of {n} cards were still running when the page opened",
        out.display(),
        png.len()
    );

    // The JSON the page polls: all cards without `since`, none after the newest change.
    let api = |q: String| {
        let url = format!("{}/ui/api/batches/{}{q}", gw.http, reply.batch_id);
        async move {
            let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            v
        }
    };
    let all = api(String::new()).await;
    assert_eq!(all["cards"].as_object().unwrap().len(), n);
    assert_eq!(all["batch"]["done"], true);
    let cursor = all["batch"]["cursor"].as_i64().unwrap();
    let after = api(format!("?since={}", cursor + 1)).await;
    assert_eq!(after["cards"].as_object().unwrap().len(), 0, "{after}");
    assert_eq!(after["batch"]["totals"]["jobs"], n);

    // The list page's "open a batch" form goes to the batch; a malformed id goes nowhere.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .get(format!("{}/ui/open?batch={}", gw.http, reply.batch_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        format!("/ui/batches/{}", reply.batch_id).as_str()
    );
    let r = http
        .get(format!("{}/ui/open?batch=%2F%2Fevil.example", gw.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The batches list has the batch, newest first, with its counts; its link opens it.
    browser.navigate(&format!("{}/ui", gw.http)).await;
    let row = browser
        .wait_until(
            "the batch in the batches list",
            Duration::from_secs(10),
            "(() => { const r = document.querySelector('table.batches tbody tr');\
               if (!r) return null;\
               return { id: r.querySelector('a').textContent, jobs: r.children[2].textContent,\
                 completed: r.querySelector('.chip.s-COMPLETED b').textContent,\
                 failed: r.querySelector('.chip.s-FAILED b').textContent }; })()",
            |v| !v.is_null(),
        )
        .await;
    assert_eq!(row["id"], reply.batch_id.as_str(), "{row}");
    assert_eq!(row["jobs"], n.to_string().as_str());
    assert_eq!(row["completed"], completed.to_string().as_str());
    assert_eq!(row["failed"], "1");
    browser
        .eval("document.querySelector('table.batches tbody a').click(); true")
        .await;
    browser
        .wait_until(
            "the batch page from the list",
            Duration::from_secs(10),
            "location.pathname + '|' + document.querySelectorAll('#grid .card').length",
            |v| *v == format!("/ui/batches/{}|{n}", reply.batch_id).as_str(),
        )
        .await;

    // The provider page lists every provider with its counters from the same gateway.
    browser.navigate(&format!("{}/ui/providers", gw.http)).await;
    let rows = browser
        .wait_until(
            "the provider rows",
            Duration::from_secs(10),
            "[...document.querySelectorAll('#provider-rows tr')].map(r => r.dataset.provider)",
            |v| v.as_array().is_some_and(|a| a.len() == 4),
        )
        .await;
    assert_eq!(
        rows,
        serde_json::json!(["abyssale", "bannerbear", "pictify", "staticadslab"])
    );
    let providers: Value = reqwest::get(format!("{}/ui/api/providers", gw.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let applied: u64 = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["webhooks"]["applied"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        applied > 0,
        "the sandbox delivers webhooks and the console counts them: {providers}"
    );
}

fn error_code_of(j: &pb::Job) -> &str {
    j.error.as_ref().map_or("", |e| e.code.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_console_needs_a_sign_in_and_keeps_it_in_an_httponly_cookie() {
    const TOKEN: &str = "console-test-token-5b1f0c";
    let dir = tempfile::tempdir().unwrap();
    let gw = Proc::spawn(
        &["serve", "--sandbox"],
        &[
            ("ADGATE_DATABASE_URL", db_url(&dir)),
            // A named entry: the form takes the token part.
            (
                "ADGATE_AUTH_TOKENS",
                format!("other-token,console-team:{TOKEN}"),
            ),
        ],
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Without the cookie: pages redirect to the form, the API answers 401, a wrong token is
    // refused and sets nothing.
    let r = http
        .get(format!("{}/ui/providers", gw.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "/ui/login?next=/ui/providers",
        "back to where the user was going"
    );
    let r = http
        .get(format!("{}/ui/api/providers", gw.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{}/ui/login", gw.http))
        .form(&[("token", "not-a-token"), ("next", "/ui")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("not-a-token"),
        "the typed token is not echoed"
    );
    // A forged cookie does not pass.
    let r = http
        .get(format!("{}/ui", gw.http))
        .header("cookie", format!("adgate_console={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    // In the browser: sign in through the form, land on the page asked for.
    let mut browser = Browser::launch(1024, 700).await;
    browser.navigate(&format!("{}/ui/providers", gw.http)).await;
    browser
        .wait_until(
            "the sign-in form",
            Duration::from_secs(10),
            "location.pathname + '|' + !!document.querySelector('input[name=token]')",
            |v| v == "/ui/login|true",
        )
        .await;
    browser
        .eval(&format!(
            "document.querySelector('input[name=token]').value = '{TOKEN}';\
             document.querySelector('.login form').submit(); true"
        ))
        .await;
    let rows = browser
        .wait_until(
            "the provider page after signing in",
            Duration::from_secs(10),
            "location.pathname === '/ui/providers' ? \
             document.querySelectorAll('#provider-rows tr').length : -1",
            |v| v.as_i64().is_some_and(|n| n > 0),
        )
        .await;
    assert_eq!(rows, 4);
    // A caller sees its own batches: one submitted with the console's token is listed, one
    // of the other token's caller is neither listed nor opened.
    let client = connect(&gw.grpc).await;
    let submit_as = |token: &'static str, client_ref: &'static str| {
        let mut req = tonic::Request::new(pb::SubmitRequest {
            jobs: vec![named(sal_job("brand_console"), client_ref)],
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut c = client.clone();
        async move { c.submit(req).await.unwrap().into_inner().batch_id }
    };
    let own = submit_as(TOKEN, "own-ad").await;
    let other = submit_as("other-token", "other-ad").await;
    browser.navigate(&format!("{}/ui", gw.http)).await;
    let listed = browser
        .wait_until(
            "the caller's batch in the list",
            Duration::from_secs(10),
            "[...document.querySelectorAll('table.batches tbody a')].map(a => a.textContent)",
            |v| v.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    assert_eq!(
        listed,
        serde_json::json!([own]),
        "only the caller's own batch"
    );
    let status = browser
        .eval(&format!(
            "fetch('/ui/api/batches/{other}').then(r => r.status)"
        ))
        .await;
    assert_eq!(status, 404, "another caller's batch is not shown");
    let status = browser
        .eval(&format!(
            "fetch('/ui/api/batches/{own}').then(r => r.status)"
        ))
        .await;
    assert_eq!(status, 200);

    let cookie_visible = browser.eval("document.cookie").await;
    assert_eq!(
        cookie_visible, "",
        "the session cookie is HttpOnly: page scripts cannot read it"
    );
    // The page's own polling works with the cookie (a 401 would send it back to sign-in).
    let api = browser
        .eval("fetch('/ui/api/providers').then(r => r.status)")
        .await;
    assert_eq!(api, 200);
    let cookies = browser
        .call(
            "Network.getCookies",
            serde_json::json!({"urls": [format!("{}/ui/providers", gw.http)]}),
        )
        .await;
    let c = cookies["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "adgate_console")
        .expect("the session cookie");
    assert_eq!(c["httpOnly"], true);
    assert_eq!(c["sameSite"], "Strict");
    assert_eq!(c["path"], "/ui");
    assert!(
        !c["value"].as_str().unwrap().contains(TOKEN),
        "the cookie holds a derived value, not the token"
    );

    // Signing out ends it.
    browser
        .eval("document.querySelector('form.logout').submit(); true")
        .await;
    browser
        .wait_until(
            "the sign-in form after signing out",
            Duration::from_secs(10),
            "location.pathname",
            |v| v == "/ui/login",
        )
        .await;
    let status = browser
        .eval("fetch('/ui/api/providers').then(r => r.status)")
        .await;
    assert_eq!(status, 401);

    let log = gw.log_dump();
    assert!(!log.contains(TOKEN), "the token never reaches the log");
}

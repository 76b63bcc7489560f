//! The operator's artifacts against live processes. Goal: every query of the Grafana
//! dashboards (`deploy/grafana/dashboards/*.json`) and every alert rule
//! (`deploy/prometheus/alerts.yml`) works against what voucherd really exports, so a
//! renamed metric or label breaks this test, not a dashboard in production.
//!
//! Real processes only: Debian's `prometheus` and `promtool` (found on PATH; the test
//! fails, never skips, without them: `scripts/services.sh up` installs them), a private `redis-server`
//! for slot leases, a wallet service and a voucher service (real binaries, embedded
//! stores in temp dirs), both with an admin token, so Prometheus scrapes `/metrics` with
//! a bearer token from a file. A small crowd drives both roles (wins, sold-out and
//! repeated redeems, a phone over its rate, 4xx of several kinds, wallet reads and
//! writes, a client too slow to send its request head), Prometheus scrapes every
//! second, and then, through Prometheus' HTTP API:
//!
//! - every dashboard panel query (Grafana's variables substituted: `$__rate_interval`
//!   and friends by [`RATE_WINDOW`], each template variable by its "All" value) parses
//!   and returns data, and every template variable's `label_values` finds series;
//! - every alert rule, as Prometheus loaded it from alerts.yml, is healthy after being
//!   evaluated, carries `summary`, `description` and `runbook`, and its expression
//!   evaluates without error;
//! - every `voucherd_*` name in those queries is a sample name of a metric family the
//!   live instances export.
//!
//! And `promtool check rules` on alerts.yml and `promtool check metrics` on both roles'
//! live `/metrics` are clean (see [`check_metrics_with_promtool`] for the OpenMetrics
//! caveat). No assertion on timings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use voucherd_test_support::binary::Binary;
use voucherd_test_support::cluster::process::{free_port, which, Proc};
use voucherd_test_support::cluster::redis_server::RedisServer;
use voucherd_test_support::cluster::voucherd::Instance;
use voucherd_test_support::cluster::wait_until;
use voucherd_test_support::http::{encode_phone, phone, send, Resp};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

/// How often Prometheus scrapes and evaluates rules: short, so the test needs only a
/// few seconds of history.
const SCRAPE_INTERVAL: &str = "1s";
/// What `$__rate_interval`, `$__interval` and `$__range` become: long enough to hold
/// the whole crowd and many scrapes.
const RATE_WINDOW: &str = "5m";
/// Bound on each wait for Prometheus (start, scrapes, rule evaluations).
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);
/// Bound on one call to Prometheus' API or to a voucherd instance.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one promtool run.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// The voucher service's header timeout (`--header-timeout-secs`, its least value), so
/// that a client too slow to send its head is cut off soon.
const HEADER_TIMEOUT_SECS: &str = "1";
/// A voucher that sells out ([`SOLD_OUT_LIMIT`] slots, more users than that) and one
/// that keeps slots left (so the remaining-slots gauge has a series).
const SOLD_OUT: &str = "OBSSOLDOUT";
const SOLD_OUT_LIMIT: u64 = 4;
const SOLD_OUT_USERS: u64 = 12;
const OPEN: &str = "OBSOPEN";
const OPEN_LIMIT: u64 = 1_000;
const OPEN_USERS: u64 = 20;
/// Redeems one phone sends at once after its win: well past the default burst (10),
/// so the per-phone rate limit answers 429.
const HAMMER_REQUESTS: u64 = 40;
const AMOUNT: i64 = 100;

/// The repository's root (dashboards and rules are read from there).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A binary the test cannot run without; a missing one fails the test.
fn required_binary(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not on PATH; tests/observability.rs runs Debian's prometheus and \
             promtool (Debian package `prometheus`). Install it with `scripts/services.sh up` \
             (or run everything with `scripts/test.sh`)."
        )
    })
}

/// Every dashboard panel query and alert rule evaluates against live instances of both
/// roles; promtool finds the rules and both roles' metrics clean.
#[tokio::test(flavor = "multi_thread")]
async fn dashboards_and_alerts_work_against_live_instances() {
    let prometheus_binary = required_binary("prometheus");
    let promtool = required_binary("promtool");
    let work = tempfile::Builder::new()
        .prefix("observability-")
        .tempdir()
        .expect("create a work directory");
    let work = work.path();
    let admin_token = write_token(work, "admin-token");
    write_token(work, "service-token");
    let client = voucherd_test_support::http::client(REQUEST_TIMEOUT, Duration::from_secs(5));

    let redis = RedisServer::start("observability-redis").await;
    let (wallet, voucher) = start_services(work, &redis.url()).await;
    let prometheus = Prometheus::start(
        &prometheus_binary,
        work,
        &[("voucherd-wallet", &wallet), ("voucherd-voucher", &voucher)],
    )
    .await;
    prometheus.wait_for_targets_up(2).await;

    let admin = Admin {
        client: &client,
        token: &admin_token,
    };
    drive_traffic(&admin, wallet.base_url(), voucher.base_url()).await;
    slow_request_head(voucher.base_url()).await;

    // What each instance exports now, then two scrapes of each that started later:
    // Prometheus holds everything the traffic made, with two samples of each series
    // (a rate needs two; a series born in the last scrape has one).
    let mut expositions = BTreeMap::new();
    for (job, instance) in [("voucherd-wallet", &wallet), ("voucherd-voucher", &voucher)] {
        expositions.insert(job, admin.metrics(instance.base_url()).await);
    }
    for _scrape in 0..2 {
        let taken = unix_seconds();
        for job in expositions.keys() {
            prometheus.wait_for_scrape_after(job, taken).await;
        }
    }
    prometheus.wait_for_every_rule_evaluated().await;

    let exported = exported_sample_names(expositions.values().map(String::as_str));
    let mut failures = Vec::new();
    let mut names_used = BTreeSet::new();
    let panels = check_dashboards(&prometheus, &mut failures, &mut names_used).await;
    let rules = check_alert_rules(&prometheus, &mut failures, &mut names_used).await;
    for name in &names_used {
        if !exported.contains(name) {
            failures.push(format!(
                "`{name}` is used by a query but no live instance exports it"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems with the dashboards and alert rules:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        rules,
        promtool_check_rules(&promtool).await,
        "Prometheus loaded as many alert rules as promtool found in alerts.yml"
    );
    for (job, text) in &expositions {
        check_metrics_with_promtool(&promtool, job, text).await;
    }
    eprintln!(
        "observability: {panels} dashboard queries returned data, {rules} alert rules healthy, \
         {} metric names checked",
        names_used.len()
    );
    drop(prometheus);
    drop(redis);
}

/// Writes a fresh random token (32 hex characters) to `dir/name`; returns it.
fn write_token(dir: &Path, name: &str) -> String {
    let token = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(dir.join(name), &token).expect("write a token file");
    token
}

/// The wallet service, then the voucher service crediting it, both with the admin and
/// service tokens of `work`; the voucher service leases slots from `redis`.
async fn start_services(work: &Path, redis: &str) -> (Instance, Instance) {
    let tokens = |role: &str| {
        vec![
            "--role".to_owned(),
            role.to_owned(),
            "--admin-token-file".to_owned(),
            work.join("admin-token").display().to_string(),
            "--service-token-file".to_owned(),
            work.join("service-token").display().to_string(),
        ]
    };
    let wallet_store = work.join("wallet-store");
    let wallet = Instance::start_with(
        VOUCHERD,
        "wallet",
        &wallet_store.display().to_string(),
        tokens("wallet"),
        work,
    )
    .await;
    let mut args = tokens("voucher");
    args.extend(
        [
            "--wallet-url",
            wallet.base_url(),
            "--redis",
            redis,
            "--header-timeout-secs",
            HEADER_TIMEOUT_SECS,
        ]
        .map(str::to_owned),
    );
    let voucher_store = work.join("voucher-store");
    let voucher = Instance::start_with(
        VOUCHERD,
        "voucher",
        &voucher_store.display().to_string(),
        args,
        work,
    )
    .await;
    (wallet, voucher)
}

/// A client with the admin token at hand.
struct Admin<'a> {
    client: &'a reqwest::Client,
    token: &'a str,
}

impl Admin<'_> {
    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.bearer_auth(self.token)
    }

    async fn post(&self, url: String, body: Value) -> Resp {
        send(self.authorized(self.client.post(url).json(&body))).await
    }

    async fn get(&self, url: String) -> Resp {
        send(self.authorized(self.client.get(url))).await
    }

    /// `/metrics` of `base`, with the token.
    async fn metrics(&self, base: &str) -> String {
        let resp = self.get(format!("{base}/metrics")).await;
        resp.expect_status_for(200, &format!("/metrics of {base}"));
        resp.text
    }
}

async fn redeem(client: &reqwest::Client, voucher: &str, phone: &str, code: &str) -> Resp {
    let body = json!({"phone_number": phone, "code": code});
    send(
        client
            .post(format!("{voucher}/api/vouchers/redeem"))
            .json(&body),
    )
    .await
}

/// The small crowd: something on every route a dashboard shows, wins and rejections of
/// each kind, one phone over its rate, 4xx answers on both services.
async fn drive_traffic(admin: &Admin<'_>, wallet: &str, voucher: &str) {
    let client = admin.client;
    for (code, limit) in [(SOLD_OUT, SOLD_OUT_LIMIT), (OPEN, OPEN_LIMIT)] {
        let body = json!({"code": code, "amount": AMOUNT, "limit": limit});
        admin
            .post(format!("{voucher}/api/vouchers"), body)
            .await
            .expect_status_for(201, &format!("create voucher {code}"));
    }
    let mut statuses = BTreeMap::<u16, u64>::new();
    for user in 0..SOLD_OUT_USERS {
        let resp = redeem(client, voucher, &phone(user), SOLD_OUT).await;
        *statuses.entry(resp.status).or_default() += 1;
    }
    let wins = statuses.get(&200).unwrap_or(&0) + statuses.get(&202).unwrap_or(&0);
    assert_eq!(wins, SOLD_OUT_LIMIT, "{SOLD_OUT}: answers {statuses:?}");
    assert_eq!(
        statuses.get(&410).copied().unwrap_or(0),
        SOLD_OUT_USERS - SOLD_OUT_LIMIT,
        "{SOLD_OUT}: answers {statuses:?}"
    );
    for user in 100..100 + OPEN_USERS {
        let resp = redeem(client, voucher, &phone(user), OPEN).await;
        assert!(
            matches!(resp.status, 200 | 202),
            "{OPEN}: a fresh user wins: {} {}",
            resp.status,
            resp.text
        );
    }
    // A repeat, an unknown voucher, a body that is not JSON.
    redeem(client, voucher, &phone(100), OPEN)
        .await
        .expect_error(409, "already_redeemed");
    redeem(client, voucher, &phone(100), "NOSUCHVOUCHER")
        .await
        .expect_status(404);
    let garbage = client
        .post(format!("{voucher}/api/vouchers/redeem"))
        .header("content-type", "application/json")
        .body("{not json");
    send(garbage).await.expect_status(400);
    // One phone hammering redeem: it wins once, then its repeats, sent at once, are
    // answered 409 until it is past its burst, and 429 rate_limited after that.
    let hammering = phone(500);
    let first = redeem(client, voucher, &hammering, OPEN).await;
    assert!(matches!(first.status, 200 | 202), "{}", first.text);
    let repeats = (0..HAMMER_REQUESTS).map(|_| redeem(client, voucher, &hammering, OPEN));
    let answers = futures::future::join_all(repeats).await;
    for resp in &answers {
        assert!(
            matches!(resp.status, 409 | 429),
            "hammering phone: {} {}",
            resp.status,
            resp.text
        );
    }
    assert!(
        answers.iter().any(|resp| resp.status == 429),
        "{HAMMER_REQUESTS} redeems of one phone sent at once got no 429"
    );

    // Reads on the voucher service, public and admin; an admin route without the
    // token; a wallet route on the voucher service; a path that is no route.
    send(client.get(format!("{voucher}/api/vouchers/{OPEN}")))
        .await
        .expect_status(200);
    send(client.get(format!("{voucher}/api/vouchers?code={OPEN}")))
        .await
        .expect_status(200);
    let status_url = format!(
        "{voucher}/api/vouchers/{OPEN}/redemptions/{}",
        encode_phone(&phone(100))
    );
    send(client.get(status_url)).await.expect_status(200);
    admin
        .get(format!("{voucher}/api/vouchers/report?code={SOLD_OUT}"))
        .await
        .expect_status(200);
    let no_token = client
        .post(format!("{voucher}/api/vouchers"))
        .json(&json!({"code": "NOTOKEN", "amount": 1, "limit": 1}));
    send(no_token).await.expect_status(401);
    send(client.get(format!(
        "{voucher}/api/profiles/{}",
        encode_phone(&phone(1))
    )))
    .await
    .expect_status(421);
    send(client.get(format!("{voucher}/wp-admin")))
        .await
        .expect_status(404);

    // The wallet service: a profile, its reads, a credit and a debit it cannot pay.
    let customer = phone(900);
    admin
        .post(
            format!("{wallet}/api/profiles"),
            json!({"phone_number": customer, "balance": 0}),
        )
        .await
        .expect_status(201);
    admin
        .get(format!("{wallet}/api/profiles/{}", encode_phone(&customer)))
        .await
        .expect_status(200);
    admin
        .post(
            format!("{wallet}/api/transactions"),
            json!({"phone_number": customer, "amount": 50}),
        )
        .await
        .expect_status(200);
    admin
        .post(
            format!("{wallet}/api/transactions"),
            json!({"phone_number": customer, "amount": -1_000}),
        )
        .await
        .expect_error(409, "insufficient_funds");
    for base in [voucher, wallet] {
        for probe in ["healthz", "readyz"] {
            send(client.get(format!("{base}/{probe}")))
                .await
                .expect_status(200);
        }
    }
}

/// A client that starts a request head and never finishes it: the voucher service
/// closes the connection after its header timeout (counted by reason).
async fn slow_request_head(voucher: &str) {
    let address = voucher.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the voucher service");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send half a request head");
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the voucher service kept a connection with an unfinished head open for {REQUEST_TIMEOUT:?}"
    );
}

/// Now, in seconds since the Unix epoch (Prometheus' timestamps are on the same clock).
fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs_f64()
}

/// The sample names of every metric family the expositions declare (`# TYPE`):
/// `name_total` of a counter, `name_bucket`, `_sum` and `_count` of a histogram, the
/// name of a gauge; with Prometheus' own `up`.
fn exported_sample_names<'a>(expositions: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut names = BTreeSet::from(["up".to_owned()]);
    for exposition in expositions {
        for line in exposition.lines() {
            let Some(declaration) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let Some((family, kind)) = declaration.split_once(' ') else {
                continue;
            };
            let suffixes: &[&str] = match kind.trim() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
        }
    }
    names
}

/// The metric names in a PromQL expression that belong to voucherd (`voucherd_…`
/// identifiers outside label values).
fn voucherd_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_string = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("voucherd_") {
            names.push(word.clone());
        }
        word.clear();
    }
    names
}

/// A Prometheus server of its own: free port, temp storage, scraping the given
/// instances with the admin token and loading the repository's alert rules.
struct Prometheus {
    proc: Proc,
    url: String,
    client: reqwest::Client,
}

impl Prometheus {
    async fn start(binary: &Path, work: &Path, jobs: &[(&str, &Instance)]) -> Prometheus {
        let scrape_configs: Vec<Value> = jobs
            .iter()
            .map(|(job, instance)| {
                json!({
                    "job_name": job,
                    "authorization": {
                        "type": "Bearer",
                        "credentials_file": work.join("admin-token"),
                    },
                    "static_configs": [{
                        "targets": [instance.base_url().trim_start_matches("http://")],
                    }],
                })
            })
            .collect();
        // JSON is YAML: the configuration is written as JSON.
        let config = json!({
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "evaluation_interval": SCRAPE_INTERVAL,
            },
            "rule_files": [repo().join("deploy/prometheus/alerts.yml")],
            "scrape_configs": scrape_configs,
        });
        let config_path = work.join("prometheus.yml");
        std::fs::write(&config_path, config.to_string()).expect("write prometheus.yml");
        let port = free_port();
        let mut command = std::process::Command::new(binary);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let proc = Proc::spawn(
            &format!("prometheus (port {port})"),
            command,
            &work.join("prometheus.log"),
            nix::sys::signal::Signal::SIGTERM,
        );
        let prometheus = Prometheus {
            proc,
            url: format!("http://127.0.0.1:{port}"),
            client: voucherd_test_support::http::client(REQUEST_TIMEOUT, Duration::from_secs(5)),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        wait_until(
            "Prometheus answers /-/ready",
            PROMETHEUS_WAIT,
            Duration::from_millis(100),
            || async {
                let answered = prometheus.client.get(&ready).send().await;
                answered.ok().filter(|r| r.status() == 200).map(|_| ())
            },
        )
        .await;
        prometheus
    }

    /// `/api/v1/<path>` with `params`: the `data` of a successful answer, or the error
    /// Prometheus gave.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let request = self
            .client
            .get(format!("{}/api/v1/{path}", self.url))
            .query(params);
        let resp = send(request).await;
        if resp.status == 200 && resp.json["status"] == "success" {
            return Ok(resp.json["data"].clone());
        }
        Err(format!(
            "HTTP {}: {} {}",
            resp.status, resp.json["errorType"], resp.json["error"]
        ))
    }

    /// An instant query's result (`data.result`), or Prometheus' error.
    async fn query(&self, expr: &str) -> Result<Value, String> {
        self.api("query", &[("query", expr)])
            .await
            .map(|data| data["result"].clone())
    }

    /// The value of a query that yields one sample (None when it yields none).
    async fn scalar(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await.ok()?;
        let value = result.as_array()?.first()?["value"][1].as_str()?.to_owned();
        value.parse().ok()
    }

    async fn wait_for_targets_up(&self, targets: usize) {
        let what = format!("{targets} targets up in Prometheus");
        wait_until(
            &what,
            PROMETHEUS_WAIT,
            Duration::from_millis(200),
            || async {
                let up = self.scalar("count(up == 1)").await?;
                (up as usize == targets).then_some(())
            },
        )
        .await;
    }

    /// Waits until Prometheus' last scrape of `job` started after `unix_seconds`.
    async fn wait_for_scrape_after(&self, job: &str, unix_seconds: f64) {
        let expr = format!("timestamp(up{{job=\"{job}\"}})");
        let what = format!("a scrape of {job} after {unix_seconds}");
        wait_until(
            &what,
            PROMETHEUS_WAIT,
            Duration::from_millis(200),
            || async {
                let scraped = self.scalar(&expr).await?;
                (scraped > unix_seconds).then_some(())
            },
        )
        .await;
    }

    /// Waits until every loaded rule has been evaluated at least once since now.
    async fn wait_for_every_rule_evaluated(&self) {
        let since = self.rule_evaluations().await;
        let what = "every alert rule evaluated again after the traffic";
        wait_until(
            what,
            PROMETHEUS_WAIT,
            Duration::from_millis(200),
            || async {
                let now = self.rule_evaluations().await;
                let all_again = !now.is_empty()
                    && now
                        .iter()
                        .all(|(name, at)| since.get(name).is_none_or(|before| at > before));
                all_again.then_some(())
            },
        )
        .await;
    }

    /// Each alerting rule's name and last evaluation time.
    async fn rule_evaluations(&self) -> BTreeMap<String, String> {
        self.alerting_rules()
            .await
            .into_iter()
            .map(|rule| {
                (
                    rule["name"].as_str().unwrap_or_default().to_owned(),
                    rule["lastEvaluation"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }

    /// Every alerting rule Prometheus loaded, as `/api/v1/rules` describes it.
    async fn alerting_rules(&self) -> Vec<Value> {
        let data = self
            .api("rules", &[("type", "alert")])
            .await
            .unwrap_or_else(|error| panic!("Prometheus' rules API: {error}"));
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.proc.name(), self.proc.log_tail(40));
        }
    }
}

/// Grafana's built-in interval variables.
const INTERVAL_VARIABLES: [&str; 4] = ["__rate_interval", "__interval", "__range", "__range_s"];

/// Evaluates every panel query and every template variable query of every dashboard;
/// returns how many panel queries returned data.
async fn check_dashboards(
    prometheus: &Prometheus,
    failures: &mut Vec<String>,
    names_used: &mut BTreeSet<String>,
) -> usize {
    let directory = repo().join("deploy/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap_or_else(|e| panic!("read {}: {e}", directory.display()))
        .map(|entry| entry.expect("dashboard directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboard in {}", directory.display());
    let mut answered = 0;
    for file in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let text = std::fs::read_to_string(&file).expect("read a dashboard");
        let dashboard: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let variables = template_variables(&name, &dashboard, failures);
        for (variable, query) in variable_queries(&dashboard) {
            let query = substitute(&query, &variables);
            let context = format!("{name} variable {variable}");
            check_label_values(prometheus, &context, &query, failures).await;
            names_used.extend(voucherd_names(&query));
        }
        let mut panels = Vec::new();
        collect_panels(&dashboard["panels"], &mut panels);
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    failures.push(format!("{name} panel {title:?}: a target without expr"));
                    continue;
                };
                let expr = substitute(expr, &variables);
                let context = format!("{name} panel {title:?} target {}", target["refId"]);
                names_used.extend(voucherd_names(&expr));
                if expr.contains('$') {
                    failures.push(format!("{context}: unknown variable left in {expr}"));
                    continue;
                }
                match prometheus.query(&expr).await {
                    Err(error) => failures.push(format!("{context}: {error}\n    {expr}")),
                    Ok(result) if result.as_array().is_some_and(Vec::is_empty) => {
                        failures.push(format!("{context}: no data\n    {expr}"))
                    }
                    Ok(_) => answered += 1,
                }
            }
        }
    }
    answered
}

/// Every panel, rows' nested panels included.
fn collect_panels<'a>(panels: &'a Value, into: &mut Vec<&'a Value>) {
    for panel in panels.as_array().into_iter().flatten() {
        into.push(panel);
        collect_panels(&panel["panels"], into);
    }
}

/// What each variable becomes in a query: Grafana's interval variables
/// [`RATE_WINDOW`], each template variable (other than the data source) its "All"
/// value, which it must have so that the dashboard shows every job and instance.
fn template_variables(
    dashboard: &str,
    json: &Value,
    failures: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut variables: Vec<(String, String)> = INTERVAL_VARIABLES
        .iter()
        .map(|name| ((*name).to_owned(), RATE_WINDOW.to_owned()))
        .collect();
    for variable in json["templating"]["list"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap_or_default().to_owned();
        if variable["type"] == "datasource" {
            continue;
        }
        match variable["allValue"].as_str() {
            Some(all) if variable["includeAll"] == true => variables.push((name, all.to_owned())),
            _ => failures.push(format!(
                "{dashboard}: variable {name} needs includeAll and an allValue"
            )),
        }
    }
    // Longer names first, so that `$instance` is not taken for `$inst` + "ance".
    variables.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    variables
}

/// `(name, query)` of every query-type template variable.
fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|variable| variable["type"] == "query")
        .filter_map(|variable| {
            let query = variable["query"]["query"]
                .as_str()
                .or_else(|| variable["query"].as_str())?;
            Some((variable["name"].as_str()?.to_owned(), query.to_owned()))
        })
        .collect()
}

/// `expr` with Grafana's variable syntaxes (`${name}`, `$name`, `[[name]]`) replaced.
fn substitute(expr: &str, variables: &[(String, String)]) -> String {
    let mut expr = expr.to_owned();
    for (name, value) in variables {
        for pattern in [
            format!("${{{name}}}"),
            format!("[[{name}]]"),
            format!("${name}"),
        ] {
            expr = expr.replace(&pattern, value);
        }
    }
    expr
}

/// A `label_values(SELECTOR, LABEL)` variable query: the selector must match series
/// that carry the label.
async fn check_label_values(
    prometheus: &Prometheus,
    context: &str,
    query: &str,
    failures: &mut Vec<String>,
) {
    let Some((selector, label)) = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|inner| inner.rsplit_once(','))
    else {
        failures.push(format!(
            "{context}: only label_values(SELECTOR, LABEL) is checked, got {query}"
        ));
        return;
    };
    let label = label.trim();
    match prometheus
        .api("series", &[("match[]", selector.trim())])
        .await
    {
        Err(error) => failures.push(format!("{context}: {error}\n    {query}")),
        Ok(series) => {
            let labelled = series
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s.get(label).is_some())
                .count();
            if labelled == 0 {
                failures.push(format!(
                    "{context}: no series with label {label}\n    {query}"
                ));
            }
        }
    }
}

/// Every alerting rule Prometheus loaded from alerts.yml: healthy once evaluated, with
/// its annotations, and its expression evaluates. Returns how many there are.
async fn check_alert_rules(
    prometheus: &Prometheus,
    failures: &mut Vec<String>,
    names_used: &mut BTreeSet<String>,
) -> usize {
    let rules = prometheus.alerting_rules().await;
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or("(unnamed)");
        let expr = rule["query"].as_str().unwrap_or_default();
        if rule["health"] != "ok" {
            failures.push(format!(
                "alert {name}: health {} ({})",
                rule["health"], rule["lastError"]
            ));
        }
        for annotation in ["summary", "description", "runbook"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or_default();
            if text.trim().is_empty() {
                failures.push(format!("alert {name}: no {annotation} annotation"));
            }
        }
        if let Err(error) = prometheus.query(expr).await {
            failures.push(format!("alert {name}: {error}\n    {expr}"));
        }
        names_used.extend(voucherd_names(expr));
    }
    if rules.is_empty() {
        failures.push("Prometheus loaded no alerting rule from alerts.yml".to_owned());
    }
    rules.len()
}

/// Runs promtool with `args` and `stdin`; returns (success, stdout + stderr).
async fn promtool(promtool: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = tokio::process::Command::new(promtool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", promtool.display()));
    let mut input = child.stdin.take().expect("piped stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write promtool's input");
    drop(input);
    let output = tokio::time::timeout(PROMTOOL_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("promtool {args:?} did not finish in {PROMTOOL_TIMEOUT:?}"))
        .expect("wait for promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `promtool check rules deploy/prometheus/alerts.yml` succeeds; returns the number of
/// rules it found.
async fn promtool_check_rules(promtool_path: &Path) -> usize {
    let rules = repo().join("deploy/prometheus/alerts.yml");
    let rules = rules.display().to_string();
    let (success, output) = promtool(promtool_path, &["check", "rules", &rules], "").await;
    assert!(success, "promtool check rules {rules}:\n{output}");
    output
        .lines()
        .find_map(|line| {
            let count = line
                .trim()
                .strip_prefix("SUCCESS: ")?
                .strip_suffix(" rules found")?;
            count.parse().ok()
        })
        .unwrap_or_else(|| panic!("promtool check rules printed no rule count:\n{output}"))
}

/// `promtool check metrics` on a live exposition must be clean.
///
/// voucherd serves OpenMetrics (`application/openmetrics-text`), where a counter
/// family `x` has the sample `x_total` and `# UNIT` lines; Debian's promtool (2.42)
/// lints only the classic text format, so on the raw exposition it reports each
/// counter's `x_total` as having no help text. So: on the raw text, every problem it
/// reports must be exactly that artifact (a counter family whose HELP is there); and on
/// the same exposition in the classic text format (counter HELP/TYPE named `x_total`,
/// the OpenMetrics-only `# UNIT` and `# EOF` lines dropped: the samples are untouched),
/// promtool must report nothing at all.
async fn check_metrics_with_promtool(promtool_path: &Path, job: &str, exposition: &str) {
    let counters: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let helped: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# HELP ")?.split(' ').next())
        .collect();
    let (_, raw_output) = promtool(promtool_path, &["check", "metrics"], exposition).await;
    for problem in raw_output.lines().filter(|line| !line.trim().is_empty()) {
        let artifact = problem
            .strip_suffix(" no help text")
            .and_then(|name| name.strip_suffix("_total"))
            .is_some_and(|family| counters.contains(family) && helped.contains(family));
        assert!(
            artifact,
            "promtool check metrics on {job}'s /metrics: {problem}\n(full output:\n{raw_output})"
        );
    }
    let classic = classic_text_format(exposition, &counters);
    let (success, output) = promtool(promtool_path, &["check", "metrics"], &classic).await;
    assert!(
        success && output.trim().is_empty(),
        "promtool check metrics on {job}'s /metrics (classic text format):\n{output}"
    );
}

/// An OpenMetrics exposition in the classic Prometheus text format: counter families'
/// HELP and TYPE lines named like their samples (`x_total`), `# UNIT` and `# EOF`
/// dropped, every sample line as it was.
fn classic_text_format(exposition: &str, counters: &BTreeSet<&str>) -> String {
    let mut text = String::new();
    for line in exposition.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (family, tail) = rest.split_once(' ')?;
            counters
                .contains(family)
                .then(|| format!("{prefix}{family}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

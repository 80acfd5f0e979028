//! Micro-benchmarks of the per-reconcile pure work: the renewal decision, building the output
//! Secret, rendering a declarative HTTP request, reading a JWT's exp. Run: `cargo bench --bench renewal`.
//! A std-only harness (no criterion) keeps the dependency tree lean.

use std::hint::black_box;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokensync::crd::HttpSpec;
use tokensync::renewal::{self, Current, Observed, Policy};

/// Run `f` for about `budget`, report the mean time per call.
fn bench(name: &str, budget: Duration, mut f: impl FnMut()) {
    for _ in 0..1000 {
        f();
    }
    let mut iterations = 0u64;
    let started = Instant::now();
    while started.elapsed() < budget {
        for _ in 0..1000 {
            f();
        }
        iterations += 1000;
    }
    let per = started.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{name:<44} {per:>10.1} ns/op   ({iterations} iterations)");
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500),
    );
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    let policy = Policy::default();
    let source = renewal::Source::from_key("3/0123456789abcdef/").unwrap();
    let current = Current {
        issued_at: now,
        expires_at: Some(now + jiff::SignedDuration::from_secs(1200)),
        renew_at: policy.renew_at(now, Some(now + jiff::SignedDuration::from_secs(1200))),
        source: source.clone(),
    };
    let observed = Observed {
        current: Some(current),
        source,
        refresh: Some(renewal::Refresh {
            deadline: Some(now + jiff::SignedDuration::from_secs(604800)),
        }),
        primary_possible: false,
    };
    bench("renewal::decide (token in place)", budget, || {
        black_box(renewal::decide(black_box(&observed), black_box(now)));
    });
    bench("Policy::renew_at", budget, || {
        black_box(policy.renew_at(black_box(now), Some(black_box(now))));
    });
    bench("renewal::parse_duration(\"1h30m\")", budget, || {
        black_box(renewal::parse_duration(black_box("1h30m")).unwrap());
    });
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4IiwiZXhwIjoxNzAwMDAwMDAwfQ.sig";
    bench("providers::jwt_exp", budget, || {
        black_box(tokensync::providers::jwt_exp(black_box(jwt)));
    });
    let spec: HttpSpec = serde_saphyr::from_str(
        r#"
login:
  url: "https://platform.example.ru/api/v1/auth/token"
  headers: {X-Client: "{{ inputs.username }}"}
  json:
    username: "{{ inputs.username }}"
    password: "{{ inputs.password }}"
    expiresIn: "{{ requested.human }}"
    scopes: ["GET /objects", "DELETE /tokens/:id"]
requestedLifetime: 12h
"#,
    )
    .unwrap();
    let ctx = serde_json::json!({
        "inputs": {"username": "pilot@example.com", "password": "p\"w&=+"},
        "requested": {"human": "12 hours"},
    });
    let egress = tokensync::providers::Egress::default();
    bench("declarative::render_request (JSON login)", budget, || {
        black_box(
            tokensync::providers::declarative::render_request(
                "spec.http.login",
                &spec.login,
                black_box(&ctx),
                &egress,
            )
            .unwrap(),
        );
    });
    println!("\nreproduce: cargo bench --bench renewal   (BENCH_MS=<ms per case>, default 500)");
}

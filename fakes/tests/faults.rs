//! The opt-in fault modes and answer overrides, over real HTTP (a raw HTTP/1.1 client, so the
//! fakes need no client library).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use std::io::{Read, Write};
use tokensync_fakes::{CLIENT_ID, CLIENT_SECRET, FakeProviders, Fault, PASSWORD, USERNAME, Vendor};

struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Answer {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // blocking std I/O on a thread of its own: the fakes' tokio has no io-util
    let raw = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

async fn pix4d(fakes: &FakeProviders) -> Answer {
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("token_format", "jwt"),
    ]);
    let ct = "application/x-www-form-urlencoded";
    send(fakes.addr, "POST", "/pix4d/oauth2/token/", ct, &body).await
}

const DRONETAG: &str = "/dronetag-auth/realms/dcp/protocol/openid-connect/token";

async fn dronetag_login(fakes: &FakeProviders) -> Answer {
    let body = form(&[
        ("grant_type", "password"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("username", USERNAME),
        ("password", PASSWORD),
    ]);
    let ct = "application/x-www-form-urlencoded";
    send(fakes.addr, "POST", DRONETAG, ct, &body).await
}

async fn dronetag_refresh(fakes: &FakeProviders, rt: &str) -> Answer {
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("refresh_token", rt),
    ]);
    let ct = "application/x-www-form-urlencoded";
    send(fakes.addr, "POST", DRONETAG, ct, &body).await
}

fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn expires_in_is_any_json_value_the_test_gives_and_only_the_answer_changes() {
    let fakes = FakeProviders::start(0).await.unwrap();
    fakes.state.set_lifetime(Vendor::Pix4d, 60);
    for value in [
        json!(1e15),
        json!(-30),
        json!(0),
        json!("3600"),
        json!(null),
    ] {
        fakes
            .state
            .set_expires_in_override(Vendor::Pix4d, Some(value.clone()));
        let answer = pix4d(&fakes).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["expires_in"], value);
    }
    // the token itself still lives the configured lifetime
    let last = fakes.state.issued(Vendor::Pix4d).pop().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(last.expires_at >= now + 59, "{last:?}");
    // the JWT's exp claim too
    fakes
        .state
        .set_expires_at_override(Vendor::Pix4d, Some(json!(-1)));
    let answer = pix4d(&fakes).await.json();
    assert_eq!(
        jwt_claims(answer["access_token"].as_str().unwrap())["exp"],
        -1
    );
    fakes.state.set_expires_in_override(Vendor::Pix4d, None);
    fakes.state.set_expires_at_override(Vendor::Pix4d, None);
    let answer = pix4d(&fakes).await.json();
    assert_eq!(answer["expires_in"], 60);
    assert!(jwt_claims(answer["access_token"].as_str().unwrap())["exp"].as_u64() > Some(now));
}

#[tokio::test]
async fn absolute_expiry_and_refresh_expires_in_overrides() {
    let fakes = FakeProviders::start(0).await.unwrap();
    fakes
        .state
        .set_refresh_expires_in_override(Vendor::Dronetag, Some(json!(1e15)));
    fakes
        .state
        .set_expires_in_override(Vendor::Dronetag, Some(json!("1200")));
    let answer = dronetag_login(&fakes).await.json();
    assert_eq!(answer["refresh_expires_in"], json!(1e15));
    assert_eq!(answer["expires_in"], "1200");

    fakes
        .state
        .set_expires_at_override(Vendor::JsonLogin, Some(json!("soon")));
    let body = json!({"username": USERNAME, "password": PASSWORD}).to_string();
    let answer = send(
        fakes.addr,
        "POST",
        "/json-login/api/v1/auth/token",
        "application/json",
        &body,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["expiresAt"], "soon");
}

#[tokio::test]
async fn a_capped_session_shrinks_every_lifetime_then_refuses_refreshes() {
    let fakes = FakeProviders::start(0).await.unwrap();
    fakes.state.set_lifetime(Vendor::Dronetag, 60);
    fakes.state.set_refresh_lifetime(Vendor::Dronetag, 600);
    fakes.state.set_session_max(Vendor::Dronetag, 2);
    let login = dronetag_login(&fakes).await.json();
    assert!(login["expires_in"].as_u64().unwrap() <= 2, "{login}");
    assert!(
        login["refresh_expires_in"].as_u64().unwrap() <= 2,
        "{login}"
    );
    let issued = fakes.state.issued(Vendor::Dronetag);
    assert!(
        issued[0].expires_at
            <= jwt_claims(login["access_token"].as_str().unwrap())["exp"]
                .as_u64()
                .unwrap()
    );

    // a refresh within the session works, still capped
    let refreshed = dronetag_refresh(&fakes, login["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let refreshed = refreshed.json();
    assert!(refreshed["expires_in"].as_u64().unwrap() <= 2);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let dead = dronetag_refresh(&fakes, refreshed["refresh_token"].as_str().unwrap()).await;
    assert_eq!(dead.status, 400);
    assert_eq!(
        dead.json(),
        json!({"error": "invalid_grant", "error_description": "Session not active"})
    );
    // a new login starts a new session
    let again = dronetag_login(&fakes).await;
    assert_eq!(again.status, 200);
    // without the cap, the refresh lifetime rules again
    fakes.state.clear_session_max(Vendor::Dronetag);
    let login = dronetag_login(&fakes).await.json();
    assert_eq!(login["expires_in"], 60);
    assert!(login["refresh_expires_in"].as_u64().unwrap() >= 599);
}

#[tokio::test]
async fn a_capped_session_ends_airmap_delegation_too() {
    let fakes = FakeProviders::start(0).await.unwrap();
    fakes.state.set_lifetime(Vendor::AirMap, 60);
    fakes.state.set_session_max(Vendor::AirMap, 1);
    let body = json!({
        "grant_type": "password", "client_id": CLIENT_ID, "username": USERNAME,
        "password": PASSWORD, "connection": "Username-Password-Authentication",
        "scope": "openid offline_access", "device": "test",
    });
    let login = send(
        fakes.addr,
        "POST",
        "/airmap/oauth/ro",
        "application/json",
        &body.to_string(),
    )
    .await
    .json();
    let exp = jwt_claims(login["id_token"].as_str().unwrap())["exp"]
        .as_u64()
        .unwrap();
    let iat = jwt_claims(login["id_token"].as_str().unwrap())["iat"]
        .as_u64()
        .unwrap();
    assert!(
        exp <= iat + 1,
        "the id_token outlives the session: {exp} > {iat} + 1"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = json!({
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "client_id": CLIENT_ID,
        "refresh_token": login["refresh_token"],
    });
    let dead = send(
        fakes.addr,
        "POST",
        "/airmap/delegation",
        "application/json",
        &body.to_string(),
    )
    .await;
    assert_eq!(dead.status, 400);
    assert_eq!(dead.json()["error_description"], "Session not active");
}

#[tokio::test]
async fn rate_limited_empty_status_and_out_of_range_status() {
    let fakes = FakeProviders::start(0).await.unwrap();
    fakes.state.set_fault(
        Vendor::Pix4d,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
    );
    let answer = pix4d(&fakes).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.headers["retry-after"], "7");
    assert_eq!(answer.json()["error"], "temporarily_unavailable");

    fakes
        .state
        .set_fault(Vendor::Pix4d, Fault::EmptyStatus(400));
    let answer = pix4d(&fakes).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body, "");
    assert_eq!(
        answer.headers.get("content-length").map(String::as_str),
        Some("0")
    );

    // a status that is no final status answers 500 rather than failing
    for code in [0, 42, 101, 1000] {
        fakes.state.set_fault(Vendor::Pix4d, Fault::Status(code));
        assert_eq!(pix4d(&fakes).await.status, 500);
        fakes
            .state
            .set_fault(Vendor::Pix4d, Fault::EmptyStatus(code));
        assert_eq!(pix4d(&fakes).await.status, 500);
    }
    fakes.state.clear_fault(Vendor::Pix4d);
    assert_eq!(pix4d(&fakes).await.status, 200);
    // every request was counted
    assert_eq!(fakes.state.count("pix4d token client_credentials"), 11);
}

#[tokio::test]
async fn a_hung_request_gets_no_answer_and_is_counted() {
    let fakes = FakeProviders::start(0).await.unwrap();
    fakes.state.set_fault(Vendor::Pix4d, Fault::Hang);
    let hung = tokio::time::timeout(Duration::from_millis(500), pix4d(&fakes)).await;
    assert!(hung.is_err(), "a hung request was answered");
    assert_eq!(fakes.state.count("pix4d token client_credentials"), 1);
    // other vendors answer meanwhile
    assert_eq!(dronetag_login(&fakes).await.status, 200);
    // a request hung when the server stops is let go
    let addr = fakes.addr;
    let pending = tokio::spawn(async move {
        let body = form(&[("grant_type", "client_credentials")]);
        send(
            addr,
            "POST",
            "/pix4d/oauth2/token/",
            "application/x-www-form-urlencoded",
            &body,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(fakes);
    let answer = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the hung request ends when the server stops")
        .unwrap();
    assert_eq!(answer.status, 504);
}

#[tokio::test]
async fn faults_in_json_and_the_admin_endpoints() {
    for (text, fault) in [
        (r#"{"status":503}"#, Fault::Status(503)),
        (
            r#"{"delay":1500}"#,
            Fault::Delay(Duration::from_millis(1500)),
        ),
        (r#""malformed""#, Fault::Malformed),
        (r#""oversized""#, Fault::Oversized),
        (r#""hang""#, Fault::Hang),
        (
            r#"{"rate_limited":{"retry_after_secs":30}}"#,
            Fault::RateLimited {
                retry_after_secs: 30,
            },
        ),
        (r#"{"empty_status":400}"#, Fault::EmptyStatus(400)),
    ] {
        assert_eq!(serde_json::from_str::<Fault>(text).unwrap(), fault);
        assert_eq!(serde_json::to_string(&fault).unwrap(), text);
    }

    let fakes = FakeProviders::start_with_admin(0).await.unwrap();
    let admin = |method: &'static str, path: &'static str, body: &'static str| {
        send(fakes.addr, method, path, "application/json", body)
    };
    assert_eq!(
        admin("POST", "/_admin/fault/pix4d", r#"{"status":503}"#)
            .await
            .status,
        204
    );
    assert_eq!(pix4d(&fakes).await.status, 503);
    assert_eq!(admin("DELETE", "/_admin/fault/pix4d", "").await.status, 204);
    let token = pix4d(&fakes).await.json()["access_token"].clone();
    let issued = admin("GET", "/_admin/issued/pix4d", "").await.json();
    assert_eq!(issued[0]["token"], token);
    let counters = admin("GET", "/_admin/counters", "").await.json();
    assert_eq!(counters["pix4d token client_credentials"], 2);
    assert_eq!(
        admin("POST", "/_admin/fault/nobody", "\"hang\"")
            .await
            .status,
        404
    );
    assert_eq!(
        admin("POST", "/_admin/fault/pix4d", "{\"nope\":1}")
            .await
            .status,
        400
    );
    // without the admin endpoints, they do not exist
    let plain = FakeProviders::start(0).await.unwrap();
    let answer = send(
        plain.addr,
        "GET",
        "/_admin/counters",
        "application/json",
        "",
    )
    .await;
    assert_eq!(answer.status, 404);
}

//! Sessions and account security: logout, refresh, password change,
//! brute-force protection, administration and the insert rate limit.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::access::{claim, set_member, stream_of};
use crate::support::{NOW, TestApp, TestUser, error_json, ok_json};

async fn jwt_of(response: reqwest::Response) -> String {
    ok_json(response).await["jwt"].as_str().unwrap().to_owned()
}

fn with_jwt(user: &TestUser, jwt: String) -> TestUser {
    TestUser { id: user.id, collection: user.collection, jwt }
}

#[tokio::test]
async fn logout_revokes_the_token_everywhere_and_ends_its_streams() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let other = with_jwt(&alice, jwt_of(app.log_in("alice", "secret-pw").await).await);
    let mut stream = stream_of(&app, &alice, "").await;
    let mut other_stream = stream_of(&app, &other, "").await;
    let response = app.post_as(&alice.jwt, "/logout", &json!({})).await;
    assert_eq!(response.status(), 204);
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("broker_token=;") && cookie.contains("Max-Age=0"), "{cookie}");
    stream.ended().await;
    for path in ["/events/user", "/users/me"] {
        assert_eq!(error_json(app.get_as(&alice.jwt, path).await, 401).await, "token revoked");
    }
    let body =
        json!({"event": "x", "collection_id": alice.collection, "timestamp": NOW, "data": 1});
    error_json(app.insert_raw(&alice.jwt, &body).await, 401).await;
    let bearer = format!("Bearer {}", alice.jwt);
    let refused = app.open_stream("/events", &[("authorization", &bearer)]).await;
    error_json(refused, 401).await;
    error_json(app.post_as(&alice.jwt, "/refresh", &json!({})).await, 401).await;
    // The user's other session goes on.
    app.insert(&other, "still-here", NOW, json!(1)).await;
    assert_eq!(other_stream.next().await.event, "still-here");
}

#[tokio::test]
async fn refresh_exchanges_a_token_for_a_fresh_one() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    app.clock.advance(1800 * 1000);
    let response = app.post_as(&alice.jwt, "/refresh", &json!({})).await;
    assert!(response.headers()["set-cookie"].to_str().unwrap().starts_with("broker_token=ey"));
    let fresh = jwt_of(response).await;
    assert_ne!(fresh, alice.jwt);
    app.clock.advance(1800 * 1000);
    error_json(app.get_as(&alice.jwt, "/users/me").await, 401).await;
    let me = ok_json(app.get_as(&fresh, "/users/me").await).await;
    assert_eq!(
        me,
        json!({"id": alice.id, "username": "alice", "collection_id": alice.collection, "admin": false})
    );
}

#[tokio::test]
async fn changing_the_password_revokes_every_earlier_token() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let other = jwt_of(app.log_in("alice", "secret-pw").await).await;
    let mut stream = stream_of(&app, &alice, "").await;
    let change = |old: &str| json!({"old_password": old, "new_password": "new-password"});
    let wrong = app.post_as(&alice.jwt, "/users/me/password", &change("wrong")).await;
    assert_eq!(error_json(wrong, 401).await, "the old password is wrong");
    let empty = json!({"old_password": "secret-pw", "new_password": ""});
    error_json(app.post_as(&alice.jwt, "/users/me/password", &empty).await, 400).await;
    let fresh =
        jwt_of(app.post_as(&alice.jwt, "/users/me/password", &change("secret-pw")).await).await;
    stream.ended().await;
    for jwt in [&alice.jwt, &other] {
        assert_eq!(error_json(app.get_as(jwt, "/users/me").await, 401).await, "token revoked");
    }
    ok_json(app.get_as(&fresh, "/users/me").await).await;
    error_json(app.log_in("alice", "secret-pw").await, 401).await;
    let again = jwt_of(app.log_in("alice", "new-password").await).await;
    ok_json(app.get_as(&again, "/events/user").await).await;
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn failed_logins_are_slowed_then_refused_for_known_and_unknown_names() {
    let app = TestApp::spawn().await;
    app.user("alice").await;
    for name in ["alice", "nobody"] {
        for _ in 0..5 {
            error_json(app.log_in(name, "wrong").await, 401).await;
        }
        // Refused before the password is even checked: the right one too.
        let refused = app.log_in(name, "secret-pw").await;
        assert_eq!(retry_after(&refused), 1);
        assert!(error_json(refused, 429).await.contains("too many"));
    }
    app.clock.advance(1000);
    error_json(app.log_in("alice", "wrong").await, 401).await;
    let refused = app.log_in("alice", "secret-pw").await;
    assert_eq!(retry_after(&refused), 2, "the delay doubles");
    error_json(refused, 429).await;
    app.clock.advance(2000);
    ok_json(app.log_in("alice", "secret-pw").await).await;
    // A success forgets the failures.
    error_json(app.log_in("alice", "wrong").await, 401).await;
    ok_json(app.log_in("alice", "secret-pw").await).await;
}

#[tokio::test]
async fn failed_logins_are_counted_per_client_address_behind_trusted_proxies_only() {
    let options = ["--login-attempts", "0", "--login-attempts-per-address", "3"];
    let app = TestApp::spawn_with(&options).await;
    let login = |name: String, forwarded: &'static str| {
        let request = app.http.post(app.url("/login")).header("x-forwarded-for", forwarded);
        async move { request.json(&json!({"username": name, "password": "x"})).send().await.unwrap() }
    };
    for n in 0..3 {
        error_json(login(format!("user{n}"), "198.51.100.1").await, 401).await;
    }
    // Without a trusted proxy the header is ignored: one address.
    error_json(login("other".into(), "198.51.100.2").await, 429).await;

    let behind = ["--trusted-proxy", "127.0.0.1", "--login-attempts-per-address", "3"];
    let app = TestApp::spawn_with(&behind).await;
    let login = |forwarded: &'static str| {
        let request = app.http.post(app.url("/login")).header("x-forwarded-for", forwarded);
        async move {
            let body = json!({"username": Uuid::new_v4().to_string(), "password": "x"});
            request.json(&body).send().await.unwrap()
        }
    };
    for _ in 0..3 {
        error_json(login("198.51.100.1").await, 401).await;
    }
    error_json(login("198.51.100.1").await, 429).await;
    error_json(login("198.51.100.2").await, 401).await;
}

#[tokio::test]
async fn sign_ups_are_limited_per_client_address() {
    let app = TestApp::spawn_with(&["--trusted-proxy", "127.0.0.1", "--signup-rate", "3"]).await;
    let sign_up = |forwarded: &'static str| {
        let request = app.http.post(app.url("/users")).header("x-forwarded-for", forwarded);
        let body = json!({"username": Uuid::new_v4().to_string(), "password": "pw", "collection_id": Uuid::new_v4()});
        async move { request.json(&body).send().await.unwrap() }
    };
    for _ in 0..3 {
        ok_json(sign_up("198.51.100.1").await).await;
    }
    let refused = sign_up("198.51.100.1").await;
    assert_eq!(retry_after(&refused), 1200, "3 an hour: one more in 20 minutes");
    assert!(error_json(refused, 429).await.contains("too many sign-ups"));
    ok_json(sign_up("198.51.100.2").await).await;
    app.clock.advance(1_200_000);
    ok_json(sign_up("198.51.100.1").await).await;
    error_json(sign_up("198.51.100.1").await, 429).await;
}

#[tokio::test]
async fn administrators_manage_accounts_and_see_collections() {
    let app = TestApp::spawn().await;
    let root = app.user("root").await;
    let alice = app.user("alice").await;
    for n in 0..3 {
        app.user(&format!("bob{n}")).await;
    }
    error_json(app.get_as(&alice.jwt, "/admin/users").await, 403).await;
    broker::transfer::set_admin(&*app.store(), "root", true).await.unwrap();
    let me = ok_json(app.get_as(&root.jwt, "/users/me").await).await;
    assert_eq!(me["admin"], true);

    let page = ok_json(app.get_as(&root.jwt, "/admin/users?search=BOB&limit=2").await).await;
    let names = |page: &Value| -> Vec<String> {
        page["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&page), ["bob0", "bob1"]);
    assert!(page["users"][0].get("password_hash").is_none());
    let cursor = page["cursor"].as_str().unwrap();
    let next = ok_json(
        app.get_as(&root.jwt, &format!("/admin/users?search=bob&limit=2&cursor={cursor}")).await,
    )
    .await;
    assert_eq!(names(&next), ["bob2"]);
    assert_eq!(next["cursor"], Value::Null);
    error_json(app.get_as(&root.jwt, "/admin/users?limit=0").await, 400).await;

    // Disabled: no login, no token, no stream.
    let mut stream = stream_of(&app, &alice, "").await;
    let path = format!("/admin/users/{}", alice.id);
    let disable = json!({"disabled": true});
    let account = ok_json(app.send(Method::PATCH, &root.jwt, &path, Some(&disable)).await).await;
    assert_eq!(account["disabled"], true);
    stream.ended().await;
    assert_eq!(
        error_json(app.get_as(&alice.jwt, "/users/me").await, 401).await,
        "account disabled"
    );
    assert!(error_json(app.log_in("alice", "secret-pw").await, 403).await.contains("disabled"));
    let enable = json!({"disabled": false});
    ok_json(app.send(Method::PATCH, &root.jwt, &path, Some(&enable)).await).await;
    error_json(app.get_as(&alice.jwt, "/users/me").await, 401).await;
    let fresh = jwt_of(app.log_in("alice", "secret-pw").await).await;

    // A password reset revokes the tokens too.
    let reset = json!({"password": "reset-pw"});
    ok_json(app.send(Method::PATCH, &root.jwt, &path, Some(&reset)).await).await;
    error_json(app.get_as(&fresh, "/users/me").await, 401).await;
    error_json(app.log_in("alice", "secret-pw").await, 401).await;
    let alice = TestUser { jwt: jwt_of(app.log_in("alice", "reset-pw").await).await, ..alice };
    let missing = format!("/admin/users/{}", Uuid::new_v4());
    error_json(app.send(Method::PATCH, &root.jwt, &missing, Some(&disable)).await, 404).await;

    // Any collection's owner and members.
    claim(&app, &alice, true).await;
    set_member(&app, &alice, "bob0", Some("writer")).await;
    let seen =
        ok_json(app.get_as(&root.jwt, &format!("/admin/collections/{}", alice.collection)).await)
            .await;
    assert_eq!(seen["owner"]["username"], "alice");
    assert_eq!(seen["members"][0]["username"], "bob0");
    assert_eq!(seen["members"][0]["role"], "writer");
}

#[tokio::test]
async fn the_insert_rate_limit_answers_429_with_retry_after() {
    let app = TestApp::spawn_with(&["--insert-rate", "2"]).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let body = |user: &TestUser| json!({"event": "e", "collection_id": user.collection, "timestamp": NOW + 60, "data": 1});
    for _ in 0..2 {
        ok_json(app.insert_raw(&alice.jwt, &body(&alice)).await).await;
    }
    let refused = app.insert_raw(&alice.jwt, &body(&alice)).await;
    assert_eq!(retry_after(&refused), 1);
    assert!(error_json(refused, 429).await.contains("too many inserts"));
    ok_json(app.insert_raw(&bob.jwt, &body(&bob)).await).await;
    app.clock.advance(500);
    ok_json(app.insert_raw(&alice.jwt, &body(&alice)).await).await;
    // Off by default.
    let free = TestApp::spawn().await;
    let carol = free.user("carol").await;
    for _ in 0..20 {
        ok_json(free.insert_raw(&carol.jwt, &body(&carol)).await).await;
    }
}

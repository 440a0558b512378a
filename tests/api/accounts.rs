//! `POST /users`, `POST /login` and token checks.

use serde_json::json;
use uuid::Uuid;

use crate::support::{NOW, TestApp, error_json, ok_json};

#[tokio::test]
async fn sign_up_answers_an_id_and_refuses_a_taken_name() {
    let app = TestApp::spawn().await;
    let body = ok_json(app.sign_up("alice", Uuid::new_v4()).await).await;
    assert!(body["id"].as_str().and_then(|s| s.parse::<Uuid>().ok()).is_some(), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1));
    // 400, as Broker 1.x answered (its own integration test expects it).
    let message = error_json(app.sign_up("alice", Uuid::new_v4()).await, 400).await;
    assert_eq!(message, "username is taken");
}

#[tokio::test]
async fn empty_or_absurd_credentials_are_refused() {
    let app = TestApp::spawn().await;
    let long = "x".repeat(5000);
    for (username, password) in
        [("", "pw"), ("   ", "pw"), (long.as_str(), "pw"), ("bob", ""), ("bob", long.as_str())]
    {
        let body =
            json!({"username": username, "password": password, "collection_id": Uuid::new_v4()});
        error_json(app.post("/users", &body).await, 400).await;
    }
}

#[tokio::test]
async fn login_answers_a_token_for_the_user() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    assert_eq!(user.jwt.split('.').count(), 3, "a JWT");
    let record = app.insert(&user, "hello", NOW, json!(1)).await;
    assert_eq!(record["user_id"], json!(user.id), "the token's subject is the user");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let app = TestApp::spawn().await;
    app.user("alice").await;
    let wrong = app.log_in("alice", "not-the-password").await;
    let wrong_status = wrong.status();
    let wrong_body = wrong.text().await.unwrap();
    let unknown = app.log_in("nobody", "not-the-password").await;
    assert_eq!(wrong_status, 401);
    assert_eq!(unknown.status(), 401);
    assert_eq!(wrong_body, unknown.text().await.unwrap());
}

#[tokio::test]
async fn a_legacy_bcrypt_password_still_logs_in() {
    let app = TestApp::spawn().await;
    let store = app.store();
    store
        .create_user(broker::domain::User {
            id: Uuid::new_v4(),
            username: "seed-user".into(),
            password_hash: bcrypt::hash("old-password", 4).unwrap(),
            collection_id: Uuid::new_v4(),
            ..Default::default()
        })
        .await
        .unwrap();
    ok_json(app.log_in("seed-user", "old-password").await).await;
    error_json(app.log_in("seed-user", "wrong").await, 401).await;
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let no_header = app.http.get(app.url("/events/user")).send().await.unwrap();
    assert!(error_json(no_header, 401).await.contains("missing"));
    let basic = app
        .http
        .get(app.url("/events/user"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert!(error_json(basic, 401).await.contains("Bearer"));
    // A token signed with another secret.
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAiLCJpYXQiOjAsImV4cCI6OTk5OTk5OTk5OTl9.7Gr8wD2Mw3dpo-J6Y5UFhnVMgfgYbuhh5xWq2v6ArpQ";
    assert_eq!(error_json(app.get_as(forged, "/events/user").await, 401).await, "invalid token");
    ok_json(app.get_as(&user.jwt, "/events/user").await).await;
    app.clock.advance(3600 * 1000);
    assert_eq!(error_json(app.get_as(&user.jwt, "/events/user").await, 401).await, "token expired");
}

/// `--min-password-length` refuses shorter new passwords at sign-up, on a
/// password change and on an administrator's reset, and
/// `GET /users/password-rule` says so; by default any non-empty password
/// is taken (Broker 1.x) and the rule says 1.
#[tokio::test]
async fn a_minimum_password_length_is_enforced_and_told() {
    use reqwest::Method;
    let quiet = TestApp::spawn().await;
    let rule = ok_json(quiet.http.get(quiet.url("/users/password-rule")).send().await.unwrap());
    assert_eq!(rule.await, json!({"min_length": 1, "max_length": 1024}));
    let short =
        |name: &str| json!({"username": name, "password": "x", "collection_id": Uuid::new_v4()});
    ok_json(quiet.post("/users", &short("carol")).await).await;

    let app = TestApp::spawn_with(&["--min-password-length", "9"]).await;
    let rule = ok_json(app.http.get(app.url("/users/password-rule")).send().await.unwrap());
    assert_eq!(rule.await, json!({"min_length": 9, "max_length": 1024}));
    let refused = error_json(app.post("/users", &short("carol")).await, 400).await;
    assert_eq!(refused, "password must be at least 9 characters");
    // Characters, not bytes: 9 of them in 18 bytes pass, 8 in 16 do not.
    let body =
        |pw: &str| json!({"username": "dora", "password": pw, "collection_id": Uuid::new_v4()});
    error_json(app.post("/users", &body(&"é".repeat(8))).await, 400).await;
    ok_json(app.post("/users", &body(&"é".repeat(9))).await).await;
    let alice = app.user("alice").await; // "secret-pw": 9 characters
    let change = json!({"old_password": "secret-pw", "new_password": "too-short"[..8].to_owned()});
    error_json(app.post_as(&alice.jwt, "/users/me/password", &change).await, 400).await;
    // An administrator's reset follows the rule too.
    let root = app.user("root").await;
    broker::transfer::set_admin(&*app.store(), "root", true).await.unwrap();
    let path = format!("/admin/users/{}", alice.id);
    let reset = |pw: &str| json!({"password": pw});
    let sent = app.send(Method::PATCH, &root.jwt, &path, Some(&reset("short"))).await;
    error_json(sent, 400).await;
    ok_json(app.send(Method::PATCH, &root.jwt, &path, Some(&reset("long-enough"))).await).await;
    // The reset password is the one that logs in.
    ok_json(app.log_in("alice", "long-enough").await).await;
}

//! `POST /insert`, the listings and cancellation, including the seed's own
//! test flow.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{NOW, TestApp, error_json, eventually, ok_json};

/// Broker 1.x's integration test, step by step.
#[tokio::test]
async fn the_seed_flow() {
    let app = TestApp::spawn().await;
    let collection = Uuid::new_v4();
    ok_json(app.sign_up("one", collection).await).await;
    ok_json(app.sign_up("two", collection).await).await;
    error_json(app.sign_up("one", collection).await, 400).await;
    let jwt =
        ok_json(app.log_in("one", "secret-pw").await).await["jwt"].as_str().unwrap().to_owned();

    let event = |ts: i64| json!({"event": "user", "collection_id": collection, "timestamp": ts, "data": {"name": "x"}});
    let no_auth = app.http.post(app.url("/insert")).json(&event(NOW)).send().await.unwrap();
    error_json(no_auth, 401).await;
    let foo = app
        .http
        .post(app.url("/insert"))
        .header("authorization", "foo")
        .json(&event(NOW))
        .send()
        .await
        .unwrap();
    error_json(foo, 401).await;
    error_json(app.insert_raw("1234", &event(NOW)).await, 401).await;

    let past = ok_json(app.insert_raw(&jwt, &event(NOW - 10)).await).await["event"].take();
    let future = ok_json(app.insert_raw(&jwt, &event(NOW + 60)).await).await["event"].take();
    assert_eq!(past["published"], false, "answered as stored at insert time");
    let listing = || async {
        let body =
            ok_json(app.get_as(&jwt, &format!("/events/collections/{collection}")).await).await;
        body["events"].as_array().unwrap().clone()
    };
    eventually("the past event to be published", || async {
        listing().await[0]["published"] == true
    })
    .await;

    let path = format!("/events/{}/cancel", future["id"].as_str().unwrap());
    let cancelled = ok_json(app.get_as(&jwt, &path).await).await["event"].take();
    assert_eq!(cancelled["cancelled"], true);
    assert_eq!(cancelled["published"], false);
    app.set_time(NOW + 120);
    // Something due later than the cancelled event is published, so the
    // scheduler has passed the cancelled one's time.
    let later = ok_json(app.insert_raw(&jwt, &event(NOW + 61)).await).await["event"].take();
    eventually("the later event to be published", || async {
        listing().await.iter().any(|e| e["id"] == later["id"] && e["published"] == true)
    })
    .await;
    let events = listing().await;
    let stored = events.iter().find(|e| e["id"] == future["id"]).unwrap();
    assert_eq!(stored["published"], false);
    assert_eq!(stored["cancelled"], true);
}

#[tokio::test]
async fn insert_answers_the_record_as_stored() {
    let app = TestApp::spawn().await;
    let user = app.user("alice").await;
    let data = json!({"nested": {"list": [1, 2.5, "three", null, true]}, "unicode": "é ☃ \n"});
    let record = app.insert(&user, "profile", NOW + 5, data.clone()).await;
    let keys: Vec<&str> = record.as_object().unwrap().keys().map(String::as_str).collect();
    for key in
        ["id", "user_id", "collection_id", "event", "timestamp", "published", "cancelled", "data"]
    {
        assert!(keys.contains(&key), "{key} missing from {record}");
    }
    assert_eq!(keys.len(), 8);
    assert!(record["id"].as_str().unwrap().parse::<Uuid>().is_ok());
    assert_eq!(record["user_id"], json!(user.id));
    assert_eq!(record["collection_id"], json!(user.collection));
    assert_eq!(record["event"], "profile");
    assert_eq!(record["timestamp"], NOW + 5);
    assert_eq!(record["published"], false);
    assert_eq!(record["cancelled"], false);
    assert_eq!(record["data"], data);
    assert_eq!(app.collection(&user, user.collection).await, vec![record.clone()]);
    // Ids are time-ordered (UUIDv7): each insert appends to the id index
    // instead of dirtying a random page of it.
    let next = app.insert(&user, "profile", NOW + 5, json!(1)).await;
    let id = |r: &Value| r["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    assert_eq!(id(&next).get_version_num(), 7);
    assert!(id(&record) < id(&next), "{record} then {next}");
}

#[tokio::test]
async fn listings_are_in_timestamp_then_insertion_order() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let shared = Uuid::new_v4();
    let mut inserted = Vec::new();
    for (who, ts, n) in
        [(&alice, 30, 0), (&bob, 10, 1), (&alice, 20, 2), (&bob, 20, 3), (&alice, 10, 4)]
    {
        let body = json!({"event": "e", "collection_id": shared, "timestamp": NOW + ts, "data": n});
        inserted.push(ok_json(app.insert_raw(&who.jwt, &body).await).await["event"].take());
    }
    let order: Vec<Value> =
        app.collection(&alice, shared).await.iter().map(|e| e["data"].clone()).collect();
    assert_eq!(order, [json!(1), json!(4), json!(2), json!(3), json!(0)]);
    assert!(app.collection(&alice, Uuid::new_v4()).await.is_empty());

    // /events/user: info is the user's own collection, events what they inserted.
    let profile = app.insert(&alice, "name", NOW, json!("Alice")).await;
    let mine = ok_json(app.get_as(&alice.jwt, "/events/user").await).await;
    assert_eq!(mine["info"].as_array().unwrap().len(), 1);
    assert_eq!(mine["info"][0]["id"], profile["id"]);
    let data: Vec<Value> =
        mine["events"].as_array().unwrap().iter().map(|e| e["data"].clone()).collect();
    assert_eq!(data, [json!("Alice"), json!(4), json!(2), json!(0)]);
}

/// Follows a listing's cursor with `limit` until it is null; returns each
/// answer.
async fn pages(app: &TestApp, jwt: &str, path: &str, limit: usize) -> Vec<Value> {
    let mut answers = Vec::new();
    let mut url = format!("{path}?limit={limit}");
    loop {
        let page = ok_json(app.get_as(jwt, &url).await).await;
        let next = page["cursor"].as_str().map(str::to_owned);
        assert!(page.as_object().unwrap().contains_key("cursor"));
        answers.push(page);
        let Some(cursor) = next else { return answers };
        url = format!("{path}?limit={limit}&cursor={cursor}");
    }
}

#[tokio::test]
async fn listings_page_with_a_cursor_in_the_same_order() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    // Several events share a second, so pages must split ties by insertion.
    // All are in the future: nothing changes while the pages are read.
    for n in 0..11 {
        app.insert(&alice, "e", NOW + [6, 1, 6, 6, 1, 9, 6, 6, 2, 6, 6][n], json!(n)).await;
    }
    let path = format!("/events/collections/{}", alice.collection);
    let whole = ok_json(app.get_as(&alice.jwt, &path).await).await;
    assert_eq!(whole.as_object().unwrap().len(), 1, "no cursor without limit: {whole}");
    for limit in [1, 3, 11, 20] {
        let answers = pages(&app, &alice.jwt, &path, limit).await;
        assert_eq!(answers.len(), 11usize.div_ceil(limit).max(1), "limit {limit}");
        let paged: Vec<Value> =
            answers.iter().flat_map(|a| a["events"].as_array().unwrap().clone()).collect();
        assert_eq!(&paged, whole["events"].as_array().unwrap(), "limit {limit}");
    }

    // /events/user pages both lists with one cursor.
    for n in 0..3 {
        app.insert(&alice, "other", NOW + 3, json!(n)).await; // her own collection: info too
    }
    let whole = ok_json(app.get_as(&alice.jwt, "/events/user").await).await;
    let answers = pages(&app, &alice.jwt, "/events/user", 4).await;
    for list in ["info", "events"] {
        let paged: Vec<Value> =
            answers.iter().flat_map(|a| a[list].as_array().unwrap().clone()).collect();
        assert_eq!(&paged, whole[list].as_array().unwrap(), "{list}");
    }

    // Pages larger than the store's reads (64 events).
    let bob = app.user("bob").await;
    for n in 0..150 {
        app.insert(&bob, "many", NOW + 1 + n % 2, json!(n)).await;
    }
    let path = format!("/events/collections/{}", bob.collection);
    let whole = ok_json(app.get_as(&bob.jwt, &path).await).await;
    assert_eq!(whole["events"].as_array().unwrap().len(), 150);
    let answers = pages(&app, &bob.jwt, &path, 100).await;
    assert_eq!(answers.len(), 2);
    let paged: Vec<Value> =
        answers.iter().flat_map(|a| a["events"].as_array().unwrap().clone()).collect();
    assert_eq!(&paged, whole["events"].as_array().unwrap());

    let path = format!("/events/collections/{}", alice.collection);
    // A cursor without a limit: the rest of the list, in the 1.x shape.
    let first = ok_json(app.get_as(&alice.jwt, &format!("{path}?limit=4")).await).await;
    let cursor = first["cursor"].as_str().unwrap();
    let rest = ok_json(app.get_as(&alice.jwt, &format!("{path}?cursor={cursor}")).await).await;
    assert_eq!(rest.as_object().unwrap().len(), 1, "no cursor without limit: {rest}");
    let all = ok_json(app.get_as(&alice.jwt, &path).await).await["events"].clone();
    assert_eq!(rest["events"].as_array().unwrap()[..], all.as_array().unwrap()[4..]);
    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?cursor=", "?limit=2&cursor=nope"] {
        error_json(app.get_as(&alice.jwt, &format!("{path}{bad}")).await, 400).await;
    }
    let user_cursor = "?limit=2&cursor=1.2";
    error_json(app.get_as(&alice.jwt, &format!("/events/user{user_cursor}")).await, 400).await;
}

#[tokio::test]
async fn cancellation_rules() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let future = app.insert(&alice, "later", NOW + 100, json!(1)).await;
    let path = format!("/events/{}/cancel", future["id"].as_str().unwrap());

    let message = error_json(app.get_as(&bob.jwt, &path).await, 403).await;
    assert!(message.contains("only the user"), "{message}");
    assert_eq!(
        app.collection(&alice, alice.collection).await[0]["cancelled"],
        false,
        "nothing changed"
    );

    error_json(app.get_as(&alice.jwt, &format!("/events/{}/cancel", Uuid::new_v4())).await, 404)
        .await;
    error_json(app.get_as(&alice.jwt, "/events/not-a-uuid/cancel").await, 400).await;
    error_json(app.http.get(app.url(&path)).send().await.unwrap(), 401).await;

    // POST works as well as GET.
    let response = app.http.post(app.url(&path)).bearer_auth(&alice.jwt).send().await.unwrap();
    let record = ok_json(response).await["event"].take();
    assert_eq!(record["cancelled"], true);
    assert_eq!(record["id"], future["id"]);
    assert!(error_json(app.get_as(&alice.jwt, &path).await, 409).await.contains("cancelled"));

    let now = app.insert(&alice, "now", NOW, json!(2)).await;
    let id = now["id"].as_str().unwrap().to_owned();
    eventually("publication", || async {
        app.collection(&alice, alice.collection)
            .await
            .iter()
            .any(|e| e["id"] == id.as_str() && e["published"] == true)
    })
    .await;
    let message =
        error_json(app.get_as(&alice.jwt, &format!("/events/{id}/cancel")).await, 409).await;
    assert!(message.contains("published"), "{message}");
}

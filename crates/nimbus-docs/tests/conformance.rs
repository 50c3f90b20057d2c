//! The docs component on both backends: every test runs on SQLite and on PostgreSQL, through
//! `Docs` (the REST surface is tested through the binary in crates/nimbus/tests/docs.rs).

use std::collections::BTreeMap;
use std::sync::Arc;

use nimbus_docs::{BatchOp, Container, Docs, DocsError, query};
use nimbus_store::conformance_suite;
use nimbus_store::testing::TestDb;
use serde_json::{Value, json};

conformance_suite!(
    items_round_trip_with_etags,
    items_keep_their_property_order,
    bad_items_are_refused,
    patches_apply_or_change_nothing,
    batches_are_all_or_nothing,
    unique_keys_hold_within_a_partition,
    queries_narrow_then_evaluate,
    queries_page_with_continuations,
    feeds_read_in_key_and_change_order,
    expired_items_vanish_then_are_purged,
    concurrent_writers_lose_no_update,
    cosmos_examples_give_documented_results,
    nearest_neighbours_match_a_full_scan,
);

fn containers() -> BTreeMap<String, Container> {
    let c = |name: &str, pk: &str, ttl: Option<i64>, unique: Vec<Vec<String>>, indexes: Vec<&str>| Container {
        name: name.into(),
        partition_key: pk.into(),
        default_ttl: ttl,
        unique_keys: unique,
        indexes: indexes.into_iter().map(str::to_owned).collect(),
        declared: true,
    };
    [
        c("people", "/userId", None, vec![vec!["/email".into()]], vec!["/status"]),
        c("short", "/k", Some(1), vec![], vec![]),
        c("families", "/lastName", None, vec![], vec![]),
        c("vectors", "/p", None, vec![], vec![]),
    ]
    .into_iter()
    .map(|c| (c.name.clone(), c))
    .collect()
}

async fn docs(db: &TestDb) -> Docs {
    let store = db.open().await;
    Docs::new(store, containers())
}

fn params(list: &[(&str, Value)]) -> query::Params {
    list.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

async fn items_round_trip_with_etags(db: &TestDb) {
    let d = docs(db).await;
    let created =
        d.create("people", json!({"id": "1", "userId": "u1", "name": "Ada", "_etag": "forged"})).await.unwrap();
    let etag = created["_etag"].as_str().unwrap().to_owned();
    assert_ne!(etag, "forged");
    assert!(created["_ts"].as_i64().unwrap() > 1_700_000_000 && created["_lsn"].as_u64().unwrap() > 0);
    assert!(matches!(d.create("people", json!({"id": "1", "userId": "u1"})).await, Err(DocsError::Exists { .. })));
    // The same id in another partition is another item.
    d.create("people", json!({"id": "1", "userId": "u2"})).await.unwrap();
    assert_eq!(d.read("people", "1", &json!("u1")).await.unwrap()["name"], "Ada");

    let replaced = d
        .replace("people", "1", &json!("u1"), json!({"id": "1", "userId": "u1", "name": "Ada L."}), Some(&etag))
        .await
        .unwrap();
    assert_ne!(replaced["_etag"], etag);
    let stale =
        d.replace("people", "1", &json!("u1"), json!({"id": "1", "userId": "u1", "name": "x"}), Some(&etag)).await;
    assert!(matches!(stale, Err(DocsError::Precondition(_))), "{stale:?}");
    assert!(matches!(d.delete("people", "1", &json!("u1"), Some(&etag)).await, Err(DocsError::Precondition(_))));
    let moved = d.replace("people", "1", &json!("u1"), json!({"id": "2", "userId": "u1"}), None).await;
    assert!(matches!(moved, Err(DocsError::Invalid(_))));

    let (upserted, created) = d.upsert("people", json!({"id": "1", "userId": "u1", "name": "Upserted"})).await.unwrap();
    assert!(!created);
    assert_eq!(upserted["name"], "Upserted");
    assert!(d.upsert("people", json!({"id": "3", "userId": "u1"})).await.unwrap().1);
    d.delete("people", "1", &json!("u1"), upserted["_etag"].as_str()).await.unwrap();
    assert!(matches!(d.read("people", "1", &json!("u1")).await, Err(DocsError::NotFound { .. })));
    assert!(matches!(d.delete("people", "1", &json!("u1"), None).await, Err(DocsError::NotFound { .. })));
    assert!(matches!(d.read("nothing", "1", &json!("u1")).await, Err(DocsError::NoContainer(_))));
    // Numbers as partition keys: 1 and 1.0 are one partition.
    d.create("people", json!({"id": "n", "userId": 1})).await.unwrap();
    assert_eq!(d.read("people", "n", &json!(1.0)).await.unwrap()["userId"], 1);
}

/// Properties keep the order they were written in, as Cosmos DB returns them (the API answers JSON
/// text): the item's own, then the system properties; a query's projection in SELECT-list order.
async fn items_keep_their_property_order(db: &TestDb) {
    let d = docs(db).await;
    let sent = r#"{"zeta": 1, "id": "k", "_ts": 5, "userId": "u9", "mid": {"y": 1, "b": 2}, "alpha": 2}"#;
    d.create("people", serde_json::from_str(sent).unwrap()).await.unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let read = d.read("people", "k", &json!("u9")).await.unwrap();
    assert_eq!(keys(&read), ["zeta", "id", "userId", "mid", "alpha", "_ts", "_etag", "_lsn"]);
    assert_eq!(read["mid"].to_string(), r#"{"y":1,"b":2}"#);
    let query = |text: &'static str| {
        let d = d.clone();
        async move { d.query("people", text, &params(&[]), None, None, 10).await.unwrap().items }
    };
    assert_eq!(keys(&query("SELECT * FROM c WHERE c.id = 'k'").await[0]), keys(&read));
    let projected = query("SELECT c.alpha, c.mid, c.zeta FROM c WHERE c.id = 'k'").await;
    assert_eq!(serde_json::to_string(&projected).unwrap(), r#"[{"alpha":2,"mid":{"y":1,"b":2},"zeta":1}]"#);
    // A patch leaves the other properties in place; a new one comes after them.
    let ops = json!([
        {"op": "remove", "path": "/zeta"},
        {"op": "set", "path": "/mid/y", "value": 3},
        {"op": "add", "path": "/new", "value": true}
    ]);
    let patched = d
        .patch("people", "k", &json!("u9"), &serde_json::from_value::<Vec<nimbus_docs::PatchOp>>(ops).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(keys(&patched), ["id", "userId", "mid", "alpha", "new", "_ts", "_etag", "_lsn"]);
    assert_eq!(patched["mid"].to_string(), r#"{"y":3,"b":2}"#);
}

async fn bad_items_are_refused(db: &TestDb) {
    let d = docs(db).await;
    let refused = |r: Result<Value, DocsError>| matches!(r, Err(DocsError::Invalid(_)));
    assert!(refused(d.create("people", json!([1, 2])).await));
    assert!(refused(d.create("people", json!({"userId": "u"})).await), "no id");
    assert!(refused(d.create("people", json!({"id": 5, "userId": "u"})).await), "id not a string");
    assert!(refused(d.create("people", json!({"id": "a/b", "userId": "u"})).await), "id with /");
    assert!(refused(d.create("people", json!({"id": "", "userId": "u"})).await));
    assert!(refused(d.create("people", json!({"id": "x"})).await), "no partition key");
    assert!(refused(d.create("people", json!({"id": "x", "userId": {"a": 1}})).await), "object partition key");
    let mut deep = json!(1);
    for _ in 0..80 {
        deep = json!({ "d": deep });
    }
    assert!(refused(d.create("people", json!({"id": "x", "userId": "u", "deep": deep})).await));
    let big = "x".repeat(nimbus_docs::MAX_ITEM_BYTES);
    assert!(matches!(
        d.create("people", json!({"id": "x", "userId": "u", "big": big})).await,
        Err(DocsError::TooLarge(_))
    ));
    // Strings that look like SQL are data.
    let sneaky = "x'; DROP TABLE nimbus_kv; --";
    d.create("people", json!({"id": "s", "userId": sneaky, "name": sneaky})).await.unwrap();
    assert_eq!(d.read("people", "s", &json!(sneaky)).await.unwrap()["name"], sneaky);
}

async fn patches_apply_or_change_nothing(db: &TestDb) {
    let d = docs(db).await;
    d.create("people", json!({"id": "p", "userId": "u", "n": 1, "tags": []})).await.unwrap();
    let ops = |v: Value| serde_json::from_value::<Vec<nimbus_docs::PatchOp>>(v).unwrap();
    let patched = d
        .patch(
            "people",
            "p",
            &json!("u"),
            &ops(json!([{"op": "incr", "path": "/n", "value": 5}, {"op": "add", "path": "/tags/-", "value": "t"}])),
            None,
        )
        .await
        .unwrap();
    assert_eq!((patched["n"].clone(), patched["tags"].clone()), (json!(6), json!(["t"])));
    let bad = d
        .patch(
            "people",
            "p",
            &json!("u"),
            &ops(json!([{"op": "set", "path": "/n", "value": 0}, {"op": "remove", "path": "/missing"}])),
            None,
        )
        .await;
    assert!(matches!(bad, Err(DocsError::Invalid(_))));
    let pk_change =
        d.patch("people", "p", &json!("u"), &ops(json!([{"op": "set", "path": "/userId", "value": "v"}])), None).await;
    assert!(matches!(pk_change, Err(DocsError::Invalid(_))));
    assert_eq!(d.read("people", "p", &json!("u")).await.unwrap()["n"], 6, "failed patches changed nothing");
    let stale = d
        .patch("people", "p", &json!("u"), &ops(json!([{"op": "set", "path": "/n", "value": 0}])), Some("\"fffffff\""))
        .await;
    assert!(matches!(stale, Err(DocsError::Precondition(_))));
}

async fn batches_are_all_or_nothing(db: &TestDb) {
    let d = docs(db).await;
    d.create("people", json!({"id": "existing", "userId": "b", "n": 1})).await.unwrap();
    let ops = |v: Value| serde_json::from_value::<Vec<BatchOp>>(v).unwrap();
    let failed = d
        .batch(
            "people",
            &json!("b"),
            ops(json!([
                {"op": "create", "item": {"id": "new", "userId": "b"}},
                {"op": "delete", "id": "existing"},
                {"op": "create", "item": {"id": "existing-2", "userId": "b"}},
                {"op": "read", "id": "missing"},
            ])),
        )
        .await;
    match failed {
        Err(DocsError::Batch { index: 3, source }) => assert!(matches!(*source, DocsError::NotFound { .. })),
        other => panic!("{other:?}"),
    }
    assert!(matches!(d.read("people", "new", &json!("b")).await, Err(DocsError::NotFound { .. })));
    assert_eq!(d.read("people", "existing", &json!("b")).await.unwrap()["n"], 1);

    let done = d
        .batch(
            "people",
            &json!("b"),
            ops(json!([
                {"op": "create", "item": {"id": "new", "userId": "b"}},
                {"op": "patch", "id": "existing", "operations": [{"op": "incr", "path": "/n", "value": 1}]},
                {"op": "read", "id": "new"},
                {"op": "upsert", "item": {"id": "other", "userId": "b"}},
                {"op": "delete", "id": "other"},
            ])),
        )
        .await
        .unwrap();
    let statuses: Vec<u16> = done.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [201, 200, 200, 201, 204]);
    assert!(done[0].1["_etag"].is_string());
    assert_eq!(d.read("people", "existing", &json!("b")).await.unwrap()["n"], 2);
    assert!(matches!(d.read("people", "other", &json!("b")).await, Err(DocsError::NotFound { .. })));
    let cross = d
        .batch("people", &json!("b"), ops(json!([{"op": "create", "item": {"id": "z", "userId": "elsewhere"}}])))
        .await;
    assert!(matches!(cross, Err(DocsError::Batch { index: 0, .. })));
}

async fn unique_keys_hold_within_a_partition(db: &TestDb) {
    let d = docs(db).await;
    d.create("people", json!({"id": "a", "userId": "u", "email": "x@y"})).await.unwrap();
    let dup = d.create("people", json!({"id": "b", "userId": "u", "email": "x@y"})).await;
    assert!(matches!(dup, Err(DocsError::Unique(ref paths)) if paths == "/email"), "{dup:?}");
    d.create("people", json!({"id": "b", "userId": "other", "email": "x@y"})).await.unwrap();
    // Changing the email frees the old one.
    d.replace("people", "a", &json!("u"), json!({"id": "a", "userId": "u", "email": "new@y"}), None).await.unwrap();
    d.create("people", json!({"id": "c", "userId": "u", "email": "x@y"})).await.unwrap();
}

async fn seed_people(d: &Docs) {
    for (i, (user, status, age)) in
        [("u1", "open", 30), ("u1", "closed", 40), ("u2", "open", 25), ("u3", "open", 50), ("u3", "new", 35)]
            .into_iter()
            .enumerate()
    {
        d.create("people", json!({"id": format!("p{i}"), "userId": user, "status": status, "age": age})).await.unwrap();
    }
}

async fn queries_narrow_then_evaluate(db: &TestDb) {
    let d = docs(db).await;
    seed_people(&d).await;
    let run = |q: &'static str, p: query::Params, pk: Option<Value>| {
        let d = d.clone();
        async move { d.query("people", q, &p, pk.as_ref(), None, 100).await }
    };
    let ids = |page: nimbus_docs::Page| {
        page.items.iter().map(|i| i.as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>()
    };
    // By partition (given, or found in the WHERE clause), by index, and across partitions.
    assert_eq!(
        ids(run("SELECT VALUE c.id FROM c ORDER BY c.id", params(&[]), Some(json!("u1"))).await.unwrap()),
        ["p0", "p1"]
    );
    assert_eq!(
        ids(run(
            "SELECT VALUE c.id FROM c WHERE c.userId = @u ORDER BY c.age DESC",
            params(&[("@u", json!("u3"))]),
            None
        )
        .await
        .unwrap()),
        ["p3", "p4"]
    );
    assert_eq!(
        ids(run("SELECT VALUE c.id FROM c WHERE c.status = 'open' AND c.age > 26 ORDER BY c.id", params(&[]), None)
            .await
            .unwrap()),
        ["p0", "p3"]
    );
    assert_eq!(
        ids(run("SELECT VALUE c.id FROM c WHERE c.status IN ('new', 'closed') ORDER BY c.id", params(&[]), None)
            .await
            .unwrap()),
        ["p1", "p4"]
    );
    assert_eq!(
        ids(run("SELECT VALUE c.id FROM c WHERE c.age BETWEEN 30 AND 40 ORDER BY c.age", params(&[]), None)
            .await
            .unwrap()),
        ["p0", "p4", "p1"]
    );
    let count = run("SELECT VALUE COUNT(1) FROM c", params(&[]), None).await.unwrap();
    assert_eq!(count.items, [json!(5)]);
    let grouped = run("SELECT c.status, COUNT(1) AS n FROM c GROUP BY c.status", params(&[]), None).await.unwrap();
    assert_eq!(grouped.items.len(), 3);
    // Parameters are values, never query text.
    let injected =
        run("SELECT VALUE c.id FROM c WHERE c.status = @s", params(&[("@s", json!("open' OR 1=1 --"))]), None)
            .await
            .unwrap();
    assert!(injected.items.is_empty());
    assert!(matches!(run("SELECT * FROM c WHERE c.status = @s", params(&[]), None).await, Err(DocsError::Invalid(_))));
    match run("SELECT * FROM c WHERE", params(&[]), None).await {
        Err(DocsError::Query(e)) => assert!(e.to_string().contains("1:"), "{e}"),
        other => panic!("{other:?}"),
    }
}

async fn queries_page_with_continuations(db: &TestDb) {
    let d = docs(db).await;
    seed_people(&d).await;
    let p = params(&[]);
    let mut seen = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let page = d
            .query("people", "SELECT VALUE c.id FROM c ORDER BY c.age", &p, None, continuation.as_deref(), 2)
            .await
            .unwrap();
        seen.extend(page.items);
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, [json!("p2"), json!("p0"), json!("p4"), json!("p1"), json!("p3")]);
    let other = d.query("people", "SELECT * FROM c", &p, None, Some("bm90IG91cnM"), 2).await;
    assert!(matches!(other, Err(DocsError::Continuation(_))));
}

async fn feeds_read_in_key_and_change_order(db: &TestDb) {
    let d = docs(db).await;
    seed_people(&d).await;
    let page = d.read_feed("people", None, None, 3).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let rest = d.read_feed("people", None, page.continuation.as_deref(), 10).await.unwrap();
    assert_eq!((rest.items.len(), rest.continuation.is_none()), (2, true));
    let u3 = d.read_feed("people", Some(&json!("u3")), None, 10).await.unwrap();
    assert_eq!(u3.items.len(), 2);

    let feed = d.change_feed("people", None, None, 100).await.unwrap();
    let lsns: Vec<u64> = feed.items.iter().map(|i| i["_lsn"].as_u64().unwrap()).collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]) && lsns.len() == 5);
    // Resume: only what changed since.
    d.upsert("people", json!({"id": "p0", "userId": "u1", "status": "changed"})).await.unwrap();
    let next = d.change_feed("people", None, feed.continuation.as_deref(), 100).await.unwrap();
    assert_eq!(next.items.len(), 1);
    assert_eq!(next.items[0]["status"], "changed");
    let quiet = d.change_feed("people", None, next.continuation.as_deref(), 100).await.unwrap();
    assert!(quiet.items.is_empty() && quiet.continuation.is_some());
    let partition = d.change_feed("people", Some(&json!("u2")), None, 100).await.unwrap();
    assert_eq!(partition.items.len(), 1);
}

async fn expired_items_vanish_then_are_purged(db: &TestDb) {
    let store = db.open().await;
    let d = Docs::new(store.clone(), containers());
    d.create("short", json!({"id": "a", "k": "x"})).await.unwrap();
    d.create("short", json!({"id": "keep", "k": "x", "ttl": -1})).await.unwrap();
    d.create("people", json!({"id": "t", "userId": "u", "ttl": 1})).await.unwrap();
    assert!(d.read("short", "a", &json!("x")).await.is_ok());
    // Time passes by the store's clock, which every expiry reads: no sleeping.
    store.clock().advance(std::time::Duration::from_secs(2));
    assert!(matches!(d.read("short", "a", &json!("x")).await, Err(DocsError::NotFound { .. })));
    assert!(matches!(d.read("people", "t", &json!("u")).await, Err(DocsError::NotFound { .. })));
    let listed = d.query("short", "SELECT VALUE c.id FROM c", &params(&[]), None, None, 10).await.unwrap();
    assert_eq!(listed.items, [json!("keep")]);
    assert!(matches!(d.delete("short", "a", &json!("x"), None).await, Err(DocsError::NotFound { .. })));
    // An expired id can be taken again at once; the purger then finds only the other one.
    d.create("people", json!({"id": "t", "userId": "u"})).await.unwrap();
    assert_eq!(d.purge_expired(100).await.unwrap(), 1);
    assert_eq!(d.purge_expired(100).await.unwrap(), 0);
    assert_eq!(d.read("people", "t", &json!("u")).await.unwrap()["id"], "t");
    assert_eq!(d.read("short", "keep", &json!("x")).await.unwrap()["id"], "keep");
}

async fn concurrent_writers_lose_no_update(db: &TestDb) {
    let d = docs(db).await;
    d.create("people", json!({"id": "counter", "userId": "c", "n": 0})).await.unwrap();
    let ops: Vec<nimbus_docs::PatchOp> =
        serde_json::from_value(json!([{"op": "incr", "path": "/n", "value": 1}])).unwrap();
    let ops = Arc::new(ops);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (d, ops) = (d.clone(), ops.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    d.patch("people", "counter", &json!("c"), &ops, None).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(d.read("people", "counter", &json!("c")).await.unwrap()["n"], 80);
}

/// The Cosmos DB documentation's "Families" sample and queries from its examples, with the
/// results the documentation shows.
async fn cosmos_examples_give_documented_results(db: &TestDb) {
    let d = docs(db).await;
    d.create(
        "families",
        json!({
            "id": "AndersenFamily", "lastName": "Andersen",
            "parents": [{"firstName": "Thomas"}, {"firstName": "Mary Kay"}],
            "children": [{"firstName": "Henriette Thaulow", "gender": "female", "grade": 5, "pets": [{"givenName": "Fluffy"}]}],
            "address": {"state": "WA", "county": "King", "city": "Seattle"},
            "creationDate": 1431620472, "isRegistered": true
        }),
    )
    .await
    .unwrap();
    d.create(
        "families",
        json!({
            "id": "WakefieldFamily", "lastName": "Wakefield",
            "parents": [{"familyName": "Wakefield", "givenName": "Robin"}, {"familyName": "Miller", "givenName": "Ben"}],
            "children": [
                {"familyName": "Merriam", "givenName": "Jesse", "gender": "female", "grade": 1, "pets": [{"givenName": "Goofy"}, {"givenName": "Shadow"}]},
                {"familyName": "Miller", "givenName": "Lisa", "gender": "female", "grade": 8}
            ],
            "address": {"state": "NY", "county": "Manhattan", "city": "NY"},
            "creationDate": 1431620462, "isRegistered": false
        }),
    )
    .await
    .unwrap();
    let table: &[(&str, Value)] = &[
        ("SELECT * FROM Families f WHERE f.id = \"AndersenFamily\"", json!(["AndersenFamily"])),
        (
            "SELECT {\"Name\":f.id, \"City\":f.address.city} AS Family FROM Families f WHERE f.address.city = f.address.state",
            json!([{"Family": {"Name": "WakefieldFamily", "City": "NY"}}]),
        ),
        ("SELECT VALUE f.address.state FROM Families f ORDER BY f.address.state", json!(["NY", "WA"])),
        (
            "SELECT f.id, f.address.city FROM Families f ORDER BY f.creationDate DESC",
            json!([{"id": "AndersenFamily", "city": "Seattle"}, {"id": "WakefieldFamily", "city": "NY"}]),
        ),
        ("SELECT VALUE COUNT(1) FROM Families f WHERE f.isRegistered", json!([1])),
        ("SELECT VALUE ARRAY_LENGTH(f.children) FROM Families f ORDER BY f.id", json!([1, 2])),
        ("SELECT TOP 1 f.id FROM Families f ORDER BY f.id DESC", json!([{"id": "WakefieldFamily"}])),
        ("SELECT VALUE f.id FROM Families f WHERE STARTSWITH(f.id, \"wake\", true)", json!(["WakefieldFamily"])),
        (
            "SELECT VALUE f.lastName FROM f WHERE ARRAY_CONTAINS(f.parents, {\"givenName\": \"Ben\"}, true)",
            json!(["Wakefield"]),
        ),
        ("SELECT f.id, f.address.missing FROM f WHERE f.id = 'AndersenFamily'", json!([{"id": "AndersenFamily"}])),
    ];
    for (q, expected) in table {
        let page = d.query("families", q, &params(&[]), None, None, 100).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        let got = if q.starts_with("SELECT * ") {
            Value::from(page.items.iter().map(|i| i["id"].clone()).collect::<Vec<_>>())
        } else {
            Value::from(page.items)
        };
        assert_eq!(&got, expected, "{q}");
    }
}

/// The vector index answers TOP-k queries; the same query without a bound reads every item. Both
/// must agree, also after updates and deletes (which reach the index through the change feed and
/// tombstones).
async fn nearest_neighbours_match_a_full_scan(db: &TestDb) {
    let d = docs(db).await;
    let vector =
        |i: u64| -> Vec<f64> { (0..8).map(|j| (((i * 7919 + j * 104_729) % 1000) as f64) / 500.0 - 1.0).collect() };
    for i in 0..300u64 {
        d.create("vectors", json!({"id": format!("v{i}"), "p": format!("p{}", i % 7), "e": vector(i)})).await.unwrap();
    }
    d.create("vectors", json!({"id": "no-vector", "p": "p0"})).await.unwrap();
    let q = json!(vector(1_000_003));
    let compare = |metric: &'static str, order: &'static str| {
        let (d, q) = (d.clone(), q.clone());
        async move {
            let opts = format!("{{'distanceFunction': '{metric}'}}");
            let fast =
                format!("SELECT TOP 10 VALUE c.id FROM c ORDER BY VectorDistance(c.e, @q, false, {opts}) {order}");
            let full = format!("SELECT VALUE c.id FROM c ORDER BY VectorDistance(c.e, @q, false, {opts}) {order}");
            let p = params(&[("@q", q)]);
            let got = d.query("vectors", &fast, &p, None, None, 100).await.unwrap().items;
            let all = d.query("vectors", &full, &p, None, None, 1000).await.unwrap().items;
            assert_eq!(got.len(), 10);
            assert_eq!(got[..], all[..10], "{metric} {order}");
            got
        }
    };
    let first = compare("cosine", "").await;
    assert_eq!(compare("cosine", "ASC").await, first);
    compare("dotproduct", "DESC").await;
    // The most similar first whatever the direction (the smallest distances); an item without a
    // vector has no score and comes last.
    let euclidean = compare("euclidean", "ASC").await;
    assert_eq!(compare("euclidean", "DESC").await, euclidean);
    assert!(!euclidean.contains(&json!("no-vector")));
    // Change the best match, delete the second: the index follows.
    let best = first[0].as_str().unwrap();
    let second = first[1].as_str().unwrap();
    let pk_of = |id: &str| json!(format!("p{}", id[1..].parse::<u64>().unwrap() % 7));
    d.patch(
        "vectors",
        best,
        &pk_of(best),
        &serde_json::from_value::<Vec<nimbus_docs::PatchOp>>(json!([{"op": "set", "path": "/e", "value": vector(5)}]))
            .unwrap(),
        None,
    )
    .await
    .unwrap();
    d.delete("vectors", second, &pk_of(second), None).await.unwrap();
    let after = compare("cosine", "").await;
    assert!(!after.contains(&json!(second)));
}

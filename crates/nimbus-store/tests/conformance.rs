//! The store's conformance suite: every test runs on SQLite and on PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_store::testing::TestDb;
use nimbus_store::{CORE_MIGRATIONS, Expect, Migration, Store, StoreError, Write, conformance_suite};

conformance_suite!(
    records_round_trip,
    list_by_prefix_in_byte_order_with_pages,
    commit_is_all_or_nothing,
    conditions_guard_writes,
    versions_are_never_reused,
    concurrent_compare_and_swap_loses_no_update,
    bad_input_is_refused_and_changes_nothing,
    data_survives_reopening,
    leases_are_exclusive_and_fenced,
    leases_expire,
    one_of_many_concurrent_claims_wins,
    migrations_apply_once_and_refuse_a_newer_schema,
    changes_follow_versions,
    get_many_reads_what_exists,
    a_feed_started_now_sees_only_what_comes_later,
    ordered_commits_never_show_a_version_late,
);

async fn records_round_trip(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.get("t", "k").await.unwrap(), None);
    let v1 = store.put("t", "k", b"one").await.unwrap();
    let r = store.get("t", "k").await.unwrap().unwrap();
    assert_eq!((r.ns.as_str(), r.key.as_str(), r.value.as_slice(), r.version), ("t", "k", &b"one"[..], v1));
    let v2 = store.put("t", "k", &[0, 255, 1, 0]).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(store.get("t", "k").await.unwrap().unwrap().value, vec![0, 255, 1, 0]);
    assert_eq!(store.get("other", "k").await.unwrap(), None, "namespaces are separate");
    assert!(store.delete("t", "k").await.unwrap());
    assert!(!store.delete("t", "k").await.unwrap());
    assert_eq!(store.get("t", "k").await.unwrap(), None);
    store.ping().await.unwrap();
}

async fn list_by_prefix_in_byte_order_with_pages(db: &TestDb) {
    let store = db.open().await;
    for key in ["a/3", "a/1", "a/2", "a/é", "a/Z", "a/z", "b/1", "a", "a0"] {
        store.put("t", key, key.as_bytes()).await.unwrap();
    }
    store.put("u", "a/9", b"x").await.unwrap();
    let keys = |records: Vec<nimbus_store::Record>| records.into_iter().map(|r| r.key).collect::<Vec<_>>();
    assert_eq!(keys(store.list("t", "a/", None, 100).await.unwrap()), ["a/1", "a/2", "a/3", "a/Z", "a/z", "a/é"]);
    assert_eq!(keys(store.list("t", "a/", None, 2).await.unwrap()), ["a/1", "a/2"]);
    assert_eq!(keys(store.list("t", "a/", Some("a/2"), 3).await.unwrap()), ["a/3", "a/Z", "a/z"]);
    assert_eq!(keys(store.list("t", "a/", Some("a/é"), 3).await.unwrap()), Vec::<String>::new());
    assert_eq!(keys(store.list("t", "", None, 100).await.unwrap()).len(), 9);
    assert_eq!(keys(store.list("t", "zzz", None, 100).await.unwrap()), Vec::<String>::new());
}

async fn commit_is_all_or_nothing(db: &TestDb) {
    let store = db.open().await;
    let vx = store.put("t", "x", b"old").await.unwrap();
    let err = store
        .commit(vec![
            Write::put("t", "y", "new"),
            Write::delete("t", "x"),
            Write::put("t", "y", "again").expect(Expect::Absent),
        ])
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict { index, ns, key, expected, actual } => {
            // The third write sees the first one: writes apply in order within the commit.
            assert_eq!((index, ns.as_str(), key.as_str(), expected), (2, "t", "y", Expect::Absent));
            assert!(actual.is_some());
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(store.get("t", "y").await.unwrap(), None, "the first write was rolled back");
    let x = store.get("t", "x").await.unwrap().unwrap();
    assert_eq!((x.value.as_slice(), x.version), (&b"old"[..], vx), "the delete was rolled back");

    let versions = store
        .commit(vec![Write::put("t", "a", "1"), Write::put("t", "b", "2"), Write::delete("t", "x")])
        .await
        .unwrap();
    assert!(versions[0].is_some() && versions[1].is_some() && versions[2].is_none());
    assert!(versions[1] > versions[0]);
    assert_eq!(store.get("t", "x").await.unwrap(), None);
    assert_eq!(store.commit(vec![]).await.unwrap(), Vec::<Option<u64>>::new());
}

async fn conditions_guard_writes(db: &TestDb) {
    let store = db.open().await;
    let v1 = store.commit(vec![Write::put("t", "k", "a").expect(Expect::Absent)]).await.unwrap()[0].unwrap();
    let err = store.commit(vec![Write::put("t", "k", "b").expect(Expect::Absent)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { actual: Some(v), .. } if v == v1), "{err}");

    let err = store.commit(vec![Write::put("t", "k", "b").expect(Expect::Version(v1 + 1000))]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { actual: Some(v), .. } if v == v1), "{err}");
    let v2 = store.commit(vec![Write::put("t", "k", "b").expect(Expect::Version(v1))]).await.unwrap()[0].unwrap();

    let err = store.commit(vec![Write::put("t", "missing", "b").expect(Expect::Version(v2))]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { actual: None, .. }), "{err}");

    // Checks gate other writes without changing the checked record.
    let err = store
        .commit(vec![Write::check("t", "k", Expect::Version(v1)), Write::put("t", "gated", "x")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { index: 0, .. }), "{err}");
    assert_eq!(store.get("t", "gated").await.unwrap(), None);
    store.commit(vec![Write::check("t", "k", Expect::Version(v2)), Write::put("t", "gated", "x")]).await.unwrap();
    store.commit(vec![Write::check("t", "nothing", Expect::Absent)]).await.unwrap();
    assert_eq!(store.get("t", "k").await.unwrap().unwrap().version, v2);

    let err = store.commit(vec![Write::delete("t", "k").expect(Expect::Version(v1))]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    store.commit(vec![Write::delete("t", "k").expect(Expect::Version(v2))]).await.unwrap();
    assert_eq!(store.get("t", "k").await.unwrap(), None);
}

async fn versions_are_never_reused(db: &TestDb) {
    let store = db.open().await;
    let v1 = store.put("t", "k", b"a").await.unwrap();
    store.delete("t", "k").await.unwrap();
    let v2 = store.put("t", "k", b"a").await.unwrap();
    assert!(v2 > v1, "a re-created record gets a fresh version ({v2} after {v1})");
    let err = store.commit(vec![Write::put("t", "k", "stale").expect(Expect::Version(v1))]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
}

async fn concurrent_compare_and_swap_loses_no_update(db: &TestDb) {
    let store = db.open().await;
    store.put("t", "counter", b"0").await.unwrap();
    const TASKS: usize = 8;
    const INCREMENTS: usize = 10;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                loop {
                    let r = store.get("t", "counter").await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&r.value).unwrap().parse().unwrap();
                    let write = Write::put("t", "counter", (n + 1).to_string()).expect(Expect::Version(r.version));
                    match store.commit(vec![write]).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let r = store.get("t", "counter").await.unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&r.value).unwrap(), (TASKS * INCREMENTS).to_string());
}

async fn bad_input_is_refused_and_changes_nothing(db: &TestDb) {
    let store = db.open().await;
    store.put("t", "keep", b"v").await.unwrap();
    fn invalid<T>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::Invalid(_)))
    }
    assert!(invalid(store.put("t", "", b"v").await));
    assert!(invalid(store.put("", "k", b"v").await));
    assert!(invalid(store.put("t", "nul\0key", b"v").await));
    assert!(invalid(store.put("t", &"k".repeat(nimbus_store::MAX_KEY_LEN + 1), b"v").await));
    assert!(invalid(store.get("t", "").await));
    let huge = vec![0u8; nimbus_store::MAX_VALUE_LEN + 1];
    assert!(invalid(store.commit(vec![Write::put("t", "a", "x"), Write::put("t", "b", huge)]).await));
    assert!(invalid(store.commit(vec![Write::delete("t", "keep").expect(Expect::Absent)]).await));
    assert!(invalid(store.claim("", "me", Duration::from_secs(1)).await));
    assert!(invalid(store.claim("job", "", Duration::from_secs(1)).await));
    assert!(invalid(store.claim("job", "me", Duration::ZERO).await));
    // Injection-looking input is data, nothing more.
    let sneaky = "k'); DROP TABLE nimbus_kv; --";
    store.put("t", sneaky, b"v").await.unwrap();
    assert_eq!(store.get("t", sneaky).await.unwrap().unwrap().key, sneaky);
    let keys: Vec<_> = store.list("t", "", None, 10).await.unwrap().into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["k'); DROP TABLE nimbus_kv; --", "keep"]);
}

async fn data_survives_reopening(db: &TestDb) {
    let v = {
        let store = db.open().await;
        store.put("t", "k", b"persisted").await.unwrap()
    };
    let store = db.open().await;
    let r = store.get("t", "k").await.unwrap().unwrap();
    assert_eq!((r.value.as_slice(), r.version), (&b"persisted"[..], v));
    assert!(store.put("t", "k2", b"x").await.unwrap() > v, "the version sequence continues after reopening");
}

async fn leases_are_exclusive_and_fenced(db: &TestDb) {
    let store = db.open().await;
    let ttl = Duration::from_secs(30);
    let a = store.claim("job", "node-a", ttl).await.unwrap().expect("a free lease can be claimed");
    assert_eq!((a.name.as_str(), a.holder.as_str()), ("job", "node-a"));
    assert!(a.expires_at > std::time::SystemTime::now() + Duration::from_secs(20));
    assert_eq!(store.claim("job", "node-b", ttl).await.unwrap(), None, "held by someone else");
    assert!(store.claim("other-job", "node-b", ttl).await.unwrap().is_some(), "names are independent");

    let renewed = store.renew(&a, Duration::from_secs(60)).await.unwrap().expect("the holder can renew");
    assert_eq!(renewed.token, a.token);
    assert!(renewed.expires_at > a.expires_at);

    assert!(store.release(&renewed).await.unwrap());
    assert!(!store.release(&renewed).await.unwrap(), "a released lease is no longer held");
    assert_eq!(store.renew(&renewed, ttl).await.unwrap(), None, "a released lease cannot be renewed");

    let b = store.claim("job", "node-b", ttl).await.unwrap().expect("a released lease is free");
    assert!(b.token > a.token, "each claim gets a higher fencing token");
    assert_eq!(store.renew(&a, ttl).await.unwrap(), None, "the old holder's lease is stale");
    assert!(!store.release(&a).await.unwrap(), "the old holder cannot release the new lease");
    assert!(store.renew(&b, ttl).await.unwrap().is_some());
}

async fn leases_expire(db: &TestDb) {
    let store = db.open().await;
    let short = Duration::from_millis(300);
    let a = store.claim("job", "node-a", short).await.unwrap().unwrap();
    let claimed_at = Instant::now();
    assert_eq!(store.claim("job", "node-b", Duration::from_secs(30)).await.unwrap(), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let b = loop {
        if let Some(b) = store.claim("job", "node-b", Duration::from_secs(30)).await.unwrap() {
            break b;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(claimed_at.elapsed() >= Duration::from_millis(250), "taken over before it expired");
    assert!(b.token > a.token);
    assert_eq!(store.renew(&a, short).await.unwrap(), None, "an expired lease cannot be renewed");
}

async fn one_of_many_concurrent_claims_wins(db: &TestDb) {
    let store: Arc<dyn Store> = db.open().await;
    for round in 0..5 {
        let name = format!("race-{round}");
        let mut handles = Vec::new();
        for node in 0..10 {
            let (store, name) = (store.clone(), name.clone());
            handles.push(tokio::spawn(async move {
                store.claim(&name, &format!("node-{node}"), Duration::from_secs(30)).await.unwrap()
            }));
        }
        let mut winners = 0;
        for h in handles {
            winners += h.await.unwrap().is_some() as usize;
        }
        assert_eq!(winners, 1, "round {round}: exactly one claim must win");
    }
}

async fn migrations_apply_once_and_refuse_a_newer_schema(db: &TestDb) {
    let latest = CORE_MIGRATIONS.iter().map(|m| m.version).max().unwrap();
    let next = Migration {
        component: "store",
        version: latest + 1,
        sqlite: "CREATE TABLE conformance_probe (id INTEGER PRIMARY KEY);",
        postgres: "CREATE TABLE conformance_probe (id BIGINT PRIMARY KEY);",
    };
    db.open().await.put("t", "k", b"v").await.unwrap();
    db.open().await; // applying nothing twice is fine
    let newer: Vec<Migration> = CORE_MIGRATIONS.iter().copied().chain([next]).collect();
    let store = db.open_with(&newer).await.expect("the next migration applies on top");
    assert_eq!(store.get("t", "k").await.unwrap().unwrap().value, b"v", "data kept across migrations");
    db.open_with(&newer).await.expect("it is applied only once (the table exists)");
    drop(store);

    let err = match db.open_with(CORE_MIGRATIONS).await {
        Err(e) => e,
        Ok(_) => panic!("an older binary must refuse a newer schema"),
    };
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported, .. } if found == latest + 1 && supported == latest),
        "{err}"
    );
    assert!(err.to_string().contains("newer than this nimbus binary supports"), "{err}");
}

async fn changes_follow_versions(db: &TestDb) {
    let store = db.open().await;
    let keys = |page: nimbus_store::Changes| page.records.into_iter().map(|r| r.key).collect::<Vec<_>>();
    let v1 = store.put("f", "c1/b", b"1").await.unwrap();
    store.put("f", "c1/a", b"2").await.unwrap();
    store.put("f", "c2/x", b"3").await.unwrap();
    store.put("g", "c1/z", b"other namespace").await.unwrap();
    store.put("f", "c1%/q", b"a prefix is not a pattern").await.unwrap();
    assert_eq!(keys(store.changes("f", "c1/", 0, 100).await.unwrap()), ["c1/b", "c1/a"]);
    assert_eq!(keys(store.changes("f", "c1/", v1, 100).await.unwrap()), ["c1/a"]);
    assert_eq!(keys(store.changes("f", "", 0, 2).await.unwrap()), ["c1/b", "c1/a"]);
    // A rewrite moves the key to the end; a delete takes it out.
    store.put("f", "c1/b", b"again").await.unwrap();
    assert_eq!(keys(store.changes("f", "c1/", 0, 100).await.unwrap()), ["c1/a", "c1/b"]);
    store.delete("f", "c1/a").await.unwrap();
    let left = store.changes("f", "c1/", 0, 100).await.unwrap().records;
    assert_eq!((left.len(), left[0].value.as_slice()), (1, &b"again"[..]));
    // A quiet prefix in a busy namespace: the limit counts what is examined, and `through` moves on.
    for i in 0..10 {
        store.put("f", &format!("busy/{i}"), b"x").await.unwrap();
    }
    let page = store.changes("f", "quiet/", 0, 4).await.unwrap();
    assert!(page.records.is_empty() && !page.caught_up && page.through > 0);
    let mut after = page.through;
    loop {
        let page = store.changes("f", "quiet/", after, 4).await.unwrap();
        assert!(page.records.is_empty() && page.through >= after);
        after = page.through;
        if page.caught_up {
            break;
        }
    }
    assert!(store.changes("f", "quiet/", after, 4).await.unwrap().caught_up);
    assert!(store.changes("", "", 0, 1).await.is_err());
}

async fn ordered_commits_never_show_a_version_late(db: &TestDb) {
    let store: Arc<dyn Store> = db.open().await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    let writes =
                        vec![Write::put("o", &format!("k/{w}/{i}"), "x"), Write::put("o", &format!("k/{w}/{i}b"), "y")];
                    store.commit_ordered(writes).await.unwrap();
                }
            })
        })
        .collect();
    // A reader following the feed while they write must see every record exactly once.
    let mut seen = std::collections::HashSet::new();
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 320 && Instant::now() < deadline {
        let page = store.changes("o", "k/", after, 50).await.unwrap();
        for r in page.records {
            assert!(r.version > after);
            assert!(seen.insert(r.key), "seen twice");
        }
        after = page.through;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(seen.len(), 320, "a reader following versions missed records committed late");
}

async fn get_many_reads_what_exists(db: &TestDb) {
    let store = db.open().await;
    let mut keys = Vec::new();
    for i in 0..1200 {
        let key = format!("k/{i:04}");
        if i % 3 != 0 {
            store.put("m", &key, key.as_bytes()).await.unwrap();
        }
        keys.push(key);
    }
    store.put("other", "k/0001", b"other namespace").await.unwrap();
    let mut found = store.get_many("m", &keys).await.unwrap();
    found.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(found.len(), 800);
    assert!(found.iter().all(|r| r.ns == "m" && r.value == r.key.as_bytes()));
    assert!(store.get_many("m", &[]).await.unwrap().is_empty());
    assert!(store.get_many("m", &["".to_owned()]).await.is_err());
}

async fn a_feed_started_now_sees_only_what_comes_later(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.feed_position().await.unwrap(), 0, "an empty store");
    store.commit_ordered(vec![Write::put("n", "k/old", "1")]).await.unwrap();
    let now = store.feed_position().await.unwrap();
    assert!(store.changes("n", "k/", now, 10).await.unwrap().records.is_empty());
    store.commit_ordered(vec![Write::put("n", "k/new", "2")]).await.unwrap();
    let page = store.changes("n", "k/", now, 10).await.unwrap();
    assert_eq!(page.records.into_iter().map(|r| r.key).collect::<Vec<_>>(), ["k/new"]);
}

//! The store's conformance suite: every test runs on SQLite and on PostgreSQL.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nimbus_store::testing::TestDb;
use nimbus_store::{CORE_MIGRATIONS, Expect, Lease, Migration, Op, Store, StoreError, Write, conformance_suite};

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
    the_clock_moves_now_and_lease_expiry,
    fenced_writes_need_the_lease_still_held,
    fenced_writes_stop_at_a_takeover,
    counters_add_and_refuse_beyond_max,
    concurrent_adds_lose_nothing,
    concurrent_adds_stop_exactly_at_max,
    counters_refuse_what_is_not_a_number_and_overflow,
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
    assert!(a.expires_at > store.clock().now() + Duration::from_secs(20));
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
    let ttl = Duration::from_secs(30);
    let a = store.claim("job", "node-a", ttl).await.unwrap().unwrap();
    assert_eq!(store.claim("job", "node-b", ttl).await.unwrap(), None);
    store.clock().advance(Duration::from_secs(25));
    assert_eq!(store.claim("job", "node-b", ttl).await.unwrap(), None, "taken over before it expired");
    store.clock().advance(Duration::from_secs(6));
    let b = store.claim("job", "node-b", ttl).await.unwrap().expect("an expired lease can be taken over");
    assert!(b.token > a.token);
    assert_eq!(store.renew(&a, ttl).await.unwrap(), None, "an expired lease cannot be renewed");
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

async fn the_clock_moves_now_and_lease_expiry(db: &TestDb) {
    let store = db.open().await;
    let clock = store.clock();
    assert_eq!(clock.offset(), Duration::ZERO, "a store opens with the wall clock");
    let hour = Duration::from_secs(3600);
    clock.advance(hour);
    clock.advance(Duration::from_secs(60));
    assert_eq!(clock.offset(), hour + Duration::from_secs(60));
    let wall = SystemTime::now();
    assert!(clock.now() >= wall + hour && clock.now() < wall + hour + Duration::from_secs(120));

    // Lease times are in the store's clock: on PostgreSQL the database's clock plus the offset.
    let ttl = Duration::from_secs(600);
    let a = store.claim("job", "node-a", ttl).await.unwrap().unwrap();
    let lower = wall + hour + Duration::from_secs(60) + ttl - Duration::from_secs(5);
    assert!(a.expires_at > lower, "the expiry includes the offset");
    assert!(a.expires_at < clock.now() + ttl + Duration::from_secs(5));
    let renewed = store.renew(&a, ttl).await.unwrap().unwrap();
    assert!(renewed.expires_at > lower);

    // Another store on the same data has a clock of its own, at the wall clock: to it the lease
    // is held for another hour.
    let other = db.open().await;
    assert_eq!(other.clock().offset(), Duration::ZERO);
    clock.advance(ttl + Duration::from_secs(1));
    assert_eq!(other.claim("job", "node-b", ttl).await.unwrap(), None, "not expired by the other store's clock");
    let b = store.claim("job", "node-b", ttl).await.unwrap().expect("expired by this store's clock");
    assert!(b.token > a.token);
    assert!(!store.release(&a).await.unwrap());
    assert!(store.release(&b).await.unwrap());
}

/// A fenced put of `key` = `value` in namespace `t`.
fn fenced(lease: &Lease, key: &str, value: &str) -> Vec<Write> {
    vec![Write::holding(lease), Write::put("t", key, value)]
}

fn lease_lost(result: Result<Vec<Option<u64>>, StoreError>) -> (usize, String) {
    match result {
        Err(StoreError::LeaseLost { index, name }) => (index, name),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

async fn fenced_writes_need_the_lease_still_held(db: &TestDb) {
    let store = db.open().await;
    let ttl = Duration::from_secs(30);
    let a = store.claim("job", "node-a", ttl).await.unwrap().unwrap();
    let holding = Write::holding(&a);
    assert_eq!((holding.ns.as_str(), holding.key.as_str()), (nimbus_store::LEASE_NAMESPACE, "job"));
    assert_eq!(holding.op, Op::Holding { holder: "node-a".into(), token: a.token });

    // Held: the writes apply; the fence itself changes nothing and has no version.
    let versions = store.commit(fenced(&a, "k", "1")).await.unwrap();
    assert!(versions[0].is_none() && versions[1].is_some());
    assert_eq!(store.get("lease", "job").await.unwrap(), None, "leases are not records");
    let renewed = store.renew(&a, ttl).await.unwrap().unwrap();
    store.commit(vec![Write::put("t", "k", "2"), Write::holding(&renewed)]).await.unwrap();
    store.commit_ordered(fenced(&a, "k", "3")).await.expect("a renewal keeps the token: the old value fences too");
    assert_eq!(store.get("t", "k").await.unwrap().unwrap().value, b"3");

    // A lease of another holder or token fences nothing of ours.
    let forged = Lease { holder: "node-b".into(), ..a.clone() };
    assert_eq!(lease_lost(store.commit(fenced(&forged, "k", "x")).await), (0, "job".into()));
    let newer = Lease { token: a.token + 1, ..a.clone() };
    lease_lost(store.commit(fenced(&newer, "k", "x")).await);
    let never = Lease { name: "never-claimed".into(), ..a.clone() };
    lease_lost(store.commit(fenced(&never, "k", "x")).await);

    // Expired (by the store's clock), before and after someone else takes it over.
    store.clock().advance(ttl + Duration::from_secs(1));
    let before = store.get("t", "k").await.unwrap().unwrap();
    let late = vec![Write::put("t", "k", "late"), Write::put("t", "new", "x"), Write::holding(&a)];
    assert_eq!(lease_lost(store.commit(late).await), (2, "job".into()), "expired, not yet taken over");
    let b = store.claim("job", "node-b", ttl).await.unwrap().unwrap();
    let err = store.commit_ordered(fenced(&a, "k", "late")).await.unwrap_err();
    assert_eq!(err.to_string(), "lease `job` is no longer held (the write at index 0 is fenced by it)", "taken over");
    assert_eq!(err.kind(), "lease_lost");
    assert_eq!(store.get("t", "k").await.unwrap(), Some(before.clone()), "nothing was written");
    assert_eq!(store.get("t", "new").await.unwrap(), None);
    store.commit(fenced(&b, "k", "b")).await.unwrap();

    // Mixed with conditions: whichever fails first answers, and nothing is written.
    let vk = store.get("t", "k").await.unwrap().unwrap().version;
    let err = store
        .commit(vec![
            Write::put("t", "gated", "x"),
            Write::holding(&b),
            Write::put("t", "k", "y").expect(Expect::Version(vk + 1000)),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { index: 2, .. }), "{err}");
    let err =
        store.commit(vec![Write::check("t", "k", Expect::Version(vk + 1000)), Write::holding(&b)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { index: 0, .. }), "{err}");
    let err = store
        .commit(vec![Write::holding(&a), Write::put("t", "k", "y").expect(Expect::Version(vk + 1000))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { index: 0, .. }), "{err}");
    assert_eq!(store.get("t", "gated").await.unwrap(), None);
    assert_eq!(store.get("t", "k").await.unwrap().unwrap().version, vk);
    store
        .commit(vec![Write::holding(&b), Write::put("t", "k", "z").expect(Expect::Version(vk))])
        .await
        .expect("a fence and a condition that both hold");

    // Released.
    assert!(store.release(&b).await.unwrap());
    lease_lost(store.commit(fenced(&b, "k", "after release")).await);

    // The same holder claiming again gets a new token (a claim always does), so what was fenced
    // by its old token is refused.
    let c1 = store.claim("job", "node-c", ttl).await.unwrap().unwrap();
    let c2 = store.claim("job", "node-c", ttl).await.unwrap().expect("a holder can claim its own lease again");
    assert_eq!(c2.token, c1.token + 1);
    lease_lost(store.commit(fenced(&c1, "k", "old token")).await);
    store.commit(fenced(&c2, "k", "new token")).await.unwrap();
    assert_eq!(store.get("t", "k").await.unwrap().unwrap().value, b"new token");

    // Validation, as for leases.
    fn invalid(r: Result<Vec<Option<u64>>, StoreError>) -> bool {
        matches!(r, Err(StoreError::Invalid(_)))
    }
    assert!(invalid(store.commit(fenced(&Lease { holder: String::new(), ..c2.clone() }, "k", "x")).await));
    assert!(invalid(store.commit(fenced(&Lease { name: String::new(), ..c2.clone() }, "k", "x")).await));
    assert!(invalid(store.commit(vec![Write { ns: "t".into(), ..Write::holding(&c2) }]).await));
    assert!(invalid(store.commit(vec![Write::holding(&c2).expect(Expect::Absent)]).await));
}

async fn fenced_writes_stop_at_a_takeover(db: &TestDb) {
    let store: Arc<dyn Store> = db.open().await;
    let mut lease = store.claim("job", "node-0", Duration::from_secs(30)).await.unwrap().unwrap();
    // Each round, the holder of the last round loses the lease to the next one.
    for round in 0..5 {
        lease = take_over_while_writing(&store, round, lease).await;
    }
}

/// While the holder of `old` commits fenced writes from several tasks, moves the clock past its
/// lease and takes the lease over; checks that none of its writes landed after that. Returns the
/// new holder's lease.
async fn take_over_while_writing(store: &Arc<dyn Store>, round: usize, old: Lease) -> Lease {
    const WRITERS: usize = 4;
    const PUTS: usize = 50;
    let ttl = Duration::from_secs(30);
    let taken = Arc::new(AtomicBool::new(false));
    let (progress, mut progressed) = tokio::sync::mpsc::unbounded_channel();

    // The old holder keeps committing until each task has seen the takeover and then tried a few
    // more times. Each commit is long (50 puts, the fence first or last), so the takeover lands
    // while some are in flight, past their fence.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, taken, old, progress) = (store.clone(), taken.clone(), old.clone(), progress.clone());
            tokio::spawn(async move {
                let mut results = Vec::new(); // (key prefix, taken before the commit began, committed)
                let mut after_takeover = 0;
                for i in 0..100_000 {
                    let was_taken = taken.load(Ordering::SeqCst);
                    let prefix = format!("w/{round}/{w}/{i:06}/");
                    let mut writes: Vec<_> =
                        (0..PUTS).map(|j| Write::put("t", &format!("{prefix}{j:02}"), "a")).collect();
                    let fence = Write::holding(&old);
                    if (i + w) % 2 == 0 {
                        writes.insert(0, fence)
                    } else {
                        writes.push(fence)
                    }
                    let committed = match store.commit(writes).await {
                        Ok(_) => true,
                        Err(StoreError::LeaseLost { .. }) => false,
                        Err(e) => panic!("{e}"),
                    };
                    results.push((prefix, was_taken, committed));
                    let _ = progress.send(w);
                    if was_taken {
                        after_takeover += 1;
                        if after_takeover == 5 {
                            break;
                        }
                    }
                }
                results
            })
        })
        .collect();
    drop(progress);
    let mut commits = [0; WRITERS];
    while commits.iter().any(|&n| n < 3) {
        commits[progressed.recv().await.unwrap()] += 1;
    }
    // The new holder moves the clock past the old lease and takes it over while writes go on.
    store.clock().advance(ttl + Duration::from_secs(1));
    let holder = format!("node-{}", round + 1);
    let new = store.claim("job", &holder, ttl).await.unwrap().expect("the expired lease is taken over");
    taken.store(true, Ordering::SeqCst);
    let first = store.commit(fenced(&new, &format!("new/{round}"), "x")).await.unwrap()[1].unwrap();

    let mut committed = BTreeSet::new();
    for writer in writers {
        let results = writer.await.unwrap();
        let refused = results.iter().position(|(_, _, ok)| !ok).expect("the old holder was refused");
        assert!(refused >= 3, "round {round}: the old holder's writes went through while it held the lease");
        assert!(results[refused..].iter().all(|(_, _, ok)| !ok), "round {round}: once refused, always refused");
        assert!(
            results.iter().all(|(_, was_taken, ok)| !(*was_taken && *ok)),
            "round {round}: a fenced write that began after the takeover was observed committed"
        );
        committed.extend(results.into_iter().filter(|(_, _, ok)| *ok).map(|(prefix, _, _)| prefix));
    }
    // The records agree with the answers: exactly the committed writes exist, whole, and every
    // one of them is older than the new holder's first write.
    let records = store.list("t", &format!("w/{round}/"), None, 1_000_000).await.unwrap();
    assert_eq!(records.len(), committed.len() * PUTS, "round {round}: a commit was applied in part");
    let written: BTreeSet<_> = records.iter().map(|r| r.key[..r.key.len() - 2].to_owned()).collect();
    assert_eq!(written, committed, "round {round}");
    let late = records.iter().filter(|r| r.version > first).count();
    assert_eq!(late, 0, "round {round}: writes of the old holder landed after the takeover");
    new
}

fn counter(record: Option<nimbus_store::Record>) -> Option<(String, u64)> {
    record.map(|r| (String::from_utf8(r.value).unwrap(), r.version))
}

async fn counters_add_and_refuse_beyond_max(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.add("c", "n", 5, None).await.unwrap(), Some(5), "an absent counter starts at 0");
    let (text, v1) = counter(store.get("c", "n").await.unwrap()).unwrap();
    assert_eq!(text, "5", "a counter is the decimal text of its value");
    assert_eq!(store.add("c", "n", -7, None).await.unwrap(), Some(-2));
    let (text, v2) = counter(store.get("c", "n").await.unwrap()).unwrap();
    assert_eq!(text, "-2");
    assert!(v2 > v1, "each add draws a new version");
    let vp = store.put("c", "other", b"x").await.unwrap();
    assert!(vp > v2, "from the same sequence as puts");

    // Over max: nothing changes, not even the version.
    assert_eq!(store.add("c", "n", 10, Some(5)).await.unwrap(), None);
    assert_eq!(store.add("c", "n", 8, Some(5)).await.unwrap(), None);
    assert_eq!(counter(store.get("c", "n").await.unwrap()), Some(("-2".into(), v2)));
    assert_eq!(store.add("c", "n", 7, Some(5)).await.unwrap(), Some(5), "up to max exactly");
    assert_eq!(store.add("c", "n", 0, Some(5)).await.unwrap(), Some(5));
    assert_eq!(store.add("c", "n", 1, Some(5)).await.unwrap(), None);
    assert_eq!(store.add("c", "n", -10, Some(5)).await.unwrap(), Some(-5), "taking away is within max");
    let (_, v) = counter(store.get("c", "n").await.unwrap()).unwrap();
    // A delta above max can still fit an existing counter below zero; an absent one stays absent.
    assert_eq!(store.add("c", "n", 6, Some(3)).await.unwrap(), Some(1));
    assert!(counter(store.get("c", "n").await.unwrap()).unwrap().1 > v);
    assert_eq!(store.add("c", "n", 6, Some(3)).await.unwrap(), None);
    assert_eq!(store.add("c", "absent", 3, Some(2)).await.unwrap(), None);
    assert_eq!(store.add("c", "absent", -3, Some(-4)).await.unwrap(), None);
    assert_eq!(store.get("c", "absent").await.unwrap(), None, "a refused add creates nothing");
    assert_eq!(store.add("c", "absent", 2, Some(2)).await.unwrap(), Some(2));

    // An ordinary record: listed, deleted, and counted from 0 again after the delete.
    let keys: Vec<_> = store.list("c", "", None, 10).await.unwrap().into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["absent", "n", "other"]);
    assert!(store.delete("c", "n").await.unwrap());
    assert_eq!(store.add("c", "n", 0, None).await.unwrap(), Some(0));
    assert_eq!(counter(store.get("c", "n").await.unwrap()).unwrap().0, "0");
    assert!(matches!(store.add("", "n", 1, None).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.add("c", "", 1, None).await, Err(StoreError::Invalid(_))));
}

async fn concurrent_adds_lose_nothing(db: &TestDb) {
    let store: Arc<dyn Store> = db.open().await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.add("c", "hits", 1, None).await.unwrap().unwrap() })
        })
        .collect();
    let mut answers = BTreeSet::new();
    for task in tasks {
        assert!(answers.insert(task.await.unwrap()), "two adds answered the same value");
    }
    assert_eq!(answers, (1..=50).collect::<BTreeSet<i64>>());
    assert_eq!(counter(store.get("c", "hits").await.unwrap()).unwrap().0, "50");
}

async fn concurrent_adds_stop_exactly_at_max(db: &TestDb) {
    let store: Arc<dyn Store> = db.open().await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.add("c", "quota", 1, Some(20)).await.unwrap() })
        })
        .collect();
    let mut granted = BTreeSet::new();
    for task in tasks {
        if let Some(n) = task.await.unwrap() {
            assert!(granted.insert(n), "two adds answered the same value");
        }
    }
    assert_eq!(granted, (1..=20).collect::<BTreeSet<i64>>(), "exactly 20 adds are granted");
    assert_eq!(counter(store.get("c", "quota").await.unwrap()).unwrap().0, "20");
}

async fn counters_refuse_what_is_not_a_number_and_overflow(db: &TestDb) {
    let store = db.open().await;
    let not_numbers: [&[u8]; 12] = [
        b"",
        b"abc",
        b"1.5",
        b" 1",
        b"+1",
        b"1\n",
        b"0x10",
        b"1_000",
        b"9223372036854775808",
        b"00000000000000000001",
        &[0xff, 0xfe],
        b"1\0",
    ];
    for (i, value) in not_numbers.iter().enumerate() {
        let key = format!("bad/{i}");
        let version = store.put("c", &key, value).await.unwrap();
        for max in [None, Some(100)] {
            match store.add("c", &key, 1, max).await {
                Err(StoreError::Invalid(message)) => assert!(message.contains(&format!("c/{key}")), "{message}"),
                other => panic!("{value:?} is not a counter, yet adding to it answered {other:?}"),
            }
        }
        let r = store.get("c", &key).await.unwrap().unwrap();
        assert_eq!((r.value.as_slice(), r.version), (*value, version), "{value:?} was changed");
    }
    store.put("c", "padded", b"007").await.unwrap();
    assert_eq!(store.add("c", "padded", 1, None).await.unwrap(), Some(8), "leading zeros are digits too");
    assert_eq!(counter(store.get("c", "padded").await.unwrap()).unwrap().0, "8");

    let top = store.add("c", "big", i64::MAX, None).await.unwrap();
    assert_eq!(top, Some(i64::MAX));
    let version = store.get("c", "big").await.unwrap().unwrap().version;
    for max in [None, Some(i64::MAX)] {
        let err = store.add("c", "big", 1, max).await.unwrap_err();
        assert!(matches!(&err, StoreError::Invalid(m) if m.contains("c/big") && m.contains("overflow")), "{err}");
    }
    assert_eq!(counter(store.get("c", "big").await.unwrap()), Some((i64::MAX.to_string(), version)));
    assert_eq!(store.add("c", "big", -1, None).await.unwrap(), Some(i64::MAX - 1));

    assert_eq!(store.add("c", "small", i64::MIN, None).await.unwrap(), Some(i64::MIN));
    assert!(matches!(store.add("c", "small", -1, Some(0)).await, Err(StoreError::Invalid(_))));
    assert_eq!(counter(store.get("c", "small").await.unwrap()).unwrap().0, i64::MIN.to_string());
}

//! No input may panic: random strings, and random soups of the language's tokens, go through
//! `parse`, and whatever parses runs over a few documents (with and without parameters). Pages of
//! any size put together give the whole result. Hostile queries (nested REPLICATE, REPLACE and
//! CONCAT, copies of large values, many JOINs over generated arrays) end within their budget or
//! with its error, and never hold much more memory than the budget allows (measured by a counting
//! allocator). The case counts are bounded so this stays a unit test.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Limits, Params, QueryErrorKind, Window, parse};

/// The test binary's allocator: counts each thread's live bytes, so a test can measure what a
/// run held at most.
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    pub(crate) struct Counting;

    fn add(n: isize) {
        let _ = LIVE.try_with(|live| {
            let v = live.get() + n;
            live.set(v);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(v)));
        });
    }

    // SAFETY: every call goes to the system allocator unchanged; only counters are kept beside.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) };
            add(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                add(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Runs `f`; answers its result and the most bytes this thread held at once meanwhile, beyond
    /// what it held before.
    pub(crate) fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let base = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let out = f();
        (out, (PEAK.with(Cell::get) - base).max(0) as usize)
    }
}

fn docs() -> Vec<Value> {
    vec![
        json!({ "id": "1", "a": 1, "b": "x", "c": [1, 2, {"d": null}], "e": { "f": true, "g": [0.5] } }),
        json!({ "id": "2", "a": 2.5, "b": "", "c": [], "e": {} }),
        json!({ "id": "3", "a": "1", "b": null, "c": "not an array", "v": [0.1, 0.2] }),
        json!({ "id": "4", "a": -9223372036854775807_i64, "b": 18446744073709551615_u64, "c": [[[]]], "v": [1, 2] }),
        json!([1, 2]),
        json!("a bare string"),
    ]
}

fn params() -> Params {
    [
        ("@p".to_string(), json!(1)),
        ("@s".to_string(), json!("x")),
        ("@v".to_string(), json!([0.5, 0.5])),
        ("@o".to_string(), json!({ "distanceFunction": "euclidean" })),
        ("@n".to_string(), json!(-1)),
    ]
    .into_iter()
    .collect()
}

const TOKENS: &[&str] = &[
    "SELECT",
    "DISTINCT",
    "TOP",
    "VALUE",
    "*",
    "FROM",
    "c",
    "r",
    "root",
    "IN",
    "JOIN",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "BETWEEN",
    "LIKE",
    "ESCAPE",
    "GROUP",
    "ORDER",
    "BY",
    "ASC",
    "DESC",
    "OFFSET",
    "LIMIT",
    "AS",
    "c.a",
    "c.b",
    "c.c",
    "c.e.f",
    "c[\"a\"]",
    "c.c[0]",
    "c.c[2].d",
    "c.v",
    "x",
    "x.d",
    ".",
    ",",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ":",
    "?",
    "??",
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "/",
    "%",
    "||",
    "|",
    "&",
    "^",
    "~",
    "<<",
    ">>",
    ">>>",
    "0",
    "1",
    "2",
    "-1",
    "1.5",
    "1e308",
    "9223372036854775807",
    "0x10",
    "'a%'",
    "'_'",
    "\"x\"",
    "''",
    "'[a-'",
    "true",
    "false",
    "null",
    "undefined",
    "@p",
    "@s",
    "@v",
    "@o",
    "@n",
    "@missing",
    "COUNT(1)",
    "COUNT(c.a)",
    "SUM(c.a)",
    "AVG(c.a)",
    "MIN(c.b)",
    "MAX(c.b)",
    "COUNT(*)",
    "COUNT",
    "SUM",
    "IS_DEFINED",
    "LOWER",
    "SUBSTRING",
    "ARRAY_SLICE",
    "ARRAY_CONTAINS",
    "CONCAT",
    "VectorDistance",
    "ROUND",
    "POWER",
    "LOG",
    "INDEX_OF",
    "REPLICATE",
    "StringToObject",
    "IIF",
    "LEFT",
    "RIGHT",
    "ABS",
    "--",
    "\n",
    "{\"a\": c.a}",
    "[c.a, 1]",
];

fn check(text: &str) {
    if let Ok(q) = parse(text) {
        let docs = docs();
        let _ = q.execute(&docs, &params());
        let _ = q.execute(&docs, &Params::new());
        let _ = q.equalities(&params());
        let _ = q.execute(&docs[..0], &params());
    }
}

/// Random well-formed expressions, so that most generated queries parse and exercise evaluation.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(
        &[
            "c.a",
            "c.b",
            "c.c",
            "c.e",
            "c.e.f",
            "c.e.g[0]",
            "c.v",
            "c.id",
            "c.missing",
            "c[\"a\"]",
            "x",
            "1",
            "0",
            "-1",
            "2.5",
            "1e300",
            "'x'",
            "''",
            "'%'",
            "true",
            "false",
            "null",
            "undefined",
            "@p",
            "@s",
            "@v",
            "@o",
            "[1, 'a']",
            "{\"a\": 1}",
            "[]",
            "{}",
        ][..],
    )
    .prop_map(str::to_string);
    leaf.prop_recursive(6, 48, 3, |inner| {
        let ops = prop::sample::select(
            &[
                "+", "-", "*", "/", "%", "||", "=", "!=", "<", "<=", ">", ">=", "AND", "OR", "??", "|", "&", "^", "<<",
                ">>", ">>>",
            ][..],
        );
        let funcs = prop::sample::select(
            &[
                "IS_DEFINED",
                "LOWER",
                "LENGTH",
                "ABS",
                "ROUND",
                "SQRT",
                "TOSTRING",
                "ARRAY_LENGTH",
                "REVERSE",
                "IS_NUMBER",
                "CONCAT",
                "CONTAINS",
                "STARTSWITH",
                "ARRAY_CONTAINS",
                "ARRAY_SLICE",
                "POWER",
                "LOG",
                "LEFT",
                "INDEX_OF",
                "SUBSTRING",
                "REPLACE",
                "IIF",
                "VectorDistance",
                "ARRAY_CONCAT",
                "SetUnion",
            ][..],
        );
        prop_oneof![
            (inner.clone(), ops, inner.clone()).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (prop::sample::select(&["-", "NOT ", "~", "+"][..]), inner.clone())
                .prop_map(|(op, a)| format!("{op}({a})")),
            (funcs, prop::collection::vec(inner.clone(), 1..4))
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
            (inner.clone(), prop::collection::vec(inner.clone(), 1..4))
                .prop_map(|(a, list)| format!("{a} IN ({})", list.join(", "))),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(a, b, c)| format!("({a} BETWEEN {b} AND {c})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} LIKE {b})")),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(a, b, c)| format!("({a} ? {b} : {c})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}[{b}]")),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|items| format!("[{}]", items.join(", "))),
            inner.prop_map(|a| format!("{{\"k\": {a}}}")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(chars in prop::collection::vec(any::<char>(), 0..64)) {
        let text: String = chars.into_iter().collect();
        check(&text);
        check(&format!("SELECT {text}"));
        check(&format!("SELECT * FROM c WHERE {text}"));
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..24)) {
        check(&tokens.join(" "));
        check(&format!("SELECT {}", tokens.join(" ")));
        check(&format!("SELECT VALUE {} FROM c", tokens.join(" ")));
        check(&format!("SELECT * FROM c WHERE {}", tokens.join(" ")));
        check(&format!("SELECT c.id FROM c JOIN x IN c.c WHERE {}", tokens.join(" ")));
        check(&format!("SELECT TOP 2 VALUE c.id FROM c ORDER BY {}", tokens.join(" ")));
        check(&format!("SELECT COUNT(1) AS n, c.a FROM c GROUP BY {}", tokens.join(" ")));
    }

    #[test]
    fn valid_shapes_run(
        expr in prop::sample::select(&[
            "c.a", "c.b", "c.a + 1", "c.a * @p", "-c.a", "c.b || 'y'", "LOWER(c.b)", "c.c[0]", "c.e.f ? 1 : 2",
            "c.a ?? c.b", "c.a BETWEEN 0 AND 2", "c.b LIKE 'x%'", "c.a IN (1, '1')", "ARRAY_LENGTH(c.c)",
            "VectorDistance(c.v, @v)", "VectorDistance(c.v, @v, false, @o)", "c.a / 0", "c.a % 0", "~c.a",
            "c.a << 70", "ROUND(c.a)", "POWER(c.a, 1000)", "REPLICATE(c.b, 100000)", "SUBSTRING(c.b, -5, 99)",
            "ARRAY_SLICE(c.c, -9, -9)", "INDEX_OF(c.b, '', 50)", "LOG(c.a, 1)", "ABS(c.a)", "c.a - 1",
        ][..]),
        clause in 0usize..6,
    ) {
        let text = match clause {
            0 => format!("SELECT VALUE {expr} FROM c"),
            1 => format!("SELECT * FROM c WHERE {expr}"),
            2 => format!("SELECT TOP 2 c.id, {expr} AS x FROM c ORDER BY {expr} DESC"),
            3 => format!("SELECT {expr} AS k, COUNT(1) AS n, MIN({expr}) AS lo, AVG({expr}) AS avg FROM c GROUP BY {expr}"),
            4 => format!("SELECT DISTINCT VALUE {expr} FROM c ORDER BY c.id OFFSET 1 LIMIT 2"),
            _ => format!("SELECT VALUE SUM({expr}) FROM c"),
        };
        let q = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        q.execute(&docs(), &params()).unwrap_or_else(|e| panic!("{text}: {e}"));
    }

    #[test]
    fn generated_queries_run(a in expr(), b in expr(), clause in 0usize..6) {
        let text = match clause {
            0 => format!("SELECT VALUE {a} FROM c WHERE {b}"),
            1 => format!("SELECT {a} AS x, {b} FROM c JOIN x IN c.c"),
            2 => format!("SELECT TOP 3 VALUE {a} FROM c ORDER BY {b} DESC, c.id"),
            3 => format!("SELECT {a} AS k, COUNT(1) AS n, MAX({b}) AS m, SUM({b}) AS s FROM c JOIN x IN c.c GROUP BY {a}"),
            4 => format!("SELECT DISTINCT VALUE {a} FROM c ORDER BY {b} OFFSET 1 LIMIT 3"),
            _ => format!("SELECT VALUE {a}"),
        };
        check(&text);
    }
}

/// Query shapes whose pages must put together into their whole result.
fn paged_shape(a: String, b: String, clause: usize) -> String {
    match clause {
        0 => format!("SELECT VALUE {a} FROM c WHERE {b}"),
        1 => format!("SELECT {a} AS x, {b} FROM c JOIN x IN c.c"),
        2 => format!("SELECT TOP 5 VALUE {a} FROM c JOIN x IN c.c ORDER BY {b} DESC, c.id"),
        3 => format!("SELECT {a} AS k, COUNT(1) AS n FROM c JOIN x IN c.c GROUP BY {a}"),
        4 => format!("SELECT DISTINCT VALUE {a} FROM c JOIN x IN c.c ORDER BY {b}"),
        5 => format!("SELECT DISTINCT VALUE {a} FROM c JOIN x IN c.c"),
        6 => format!("SELECT VALUE {a} FROM c JOIN x IN c.c OFFSET 1 LIMIT 4"),
        _ => format!("SELECT * FROM c WHERE {b} OFFSET 2 LIMIT 3"),
    }
}

/// Generated arrays to JOIN over, and a large string to copy.
fn hostile_docs(lengths: &[usize]) -> Vec<Value> {
    let big = "x".repeat(256 * 1024);
    lengths
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let arr: Vec<Value> = (0..*n).map(|k| json!(format!("e{}", k % 7))).collect();
            json!({ "id": i.to_string(), "s": "ab", "n": i, "arr": arr, "big": big })
        })
        .collect()
}

/// String expressions that multiply: every one is well-formed.
fn hostile_string() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(&["'a'", "'ab'", "c.s", "c.big", "$a", "$b", "TOSTRING(c)", "TOSTRING(c.arr)"][..])
        .prop_map(str::to_string);
    leaf.prop_recursive(5, 24, 4, |inner| {
        let counts = prop::sample::select(&["0", "1", "10", "1000", "5000", "10000", "10001", "1000000"][..]);
        prop_oneof![
            (inner.clone(), counts).prop_map(|(x, n)| format!("REPLICATE({x}, {n})")),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(x, y, z)| format!("REPLACE({x}, {y}, {z})")),
            prop::collection::vec(inner.clone(), 2..6).prop_map(|xs| format!("CONCAT({})", xs.join(", "))),
            (inner.clone(), inner.clone()).prop_map(|(x, y)| format!("({x} || {y})")),
            inner.clone().prop_map(|x| format!("UPPER({x})")),
            inner.clone().prop_map(|x| format!("TOSTRING([{x}, {x}, {x}, {x}])")),
            inner.prop_map(|x| format!("SUBSTRING({x}, 1, 100000)")),
        ]
    })
}

fn hostile_query(s: String, joins: usize, shape: usize) -> String {
    let aliases = ["a", "b", "d", "e", "f", "g"];
    let mut from = "FROM c".to_string();
    for alias in &aliases[..joins] {
        from.push_str(&format!(" JOIN {alias} IN c.arr"));
    }
    // `$a` and `$b` stand for the first two JOIN aliases, or the item's string without them.
    let s = s.replace("$a", if joins >= 1 { "a" } else { "c.s" }).replace("$b", if joins >= 2 { "b" } else { "c.s" });
    match shape {
        0 => format!("SELECT VALUE LENGTH({s}) {from}"),
        1 => format!("SELECT c.id, {s} AS x {from}"),
        2 => format!("SELECT VALUE [{s}, {s}, c.big] {from} ORDER BY {s}"),
        3 => format!("SELECT DISTINCT VALUE {s} {from}"),
        4 => format!("SELECT {s} AS k, COUNT(1) AS n, MAX({s}) AS m {from} GROUP BY {s}"),
        5 => format!("SELECT TOP 3 c AS item, {s} AS x {from}"),
        6 => format!("SELECT VALUE COUNT(1) {from} WHERE {s} != ''"),
        _ => format!("SELECT VALUE {{\"x\": {s}, \"y\": [{s}, {s}]}} {from}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pages_put_together_give_the_whole_result(
        a in expr(),
        b in expr(),
        clause in 0usize..8,
        rows in 1u64..4,
        bytes in prop::sample::select(&[1usize, 100, usize::MAX][..]),
    ) {
        let text = paged_shape(a, b, clause);
        let Ok(q) = parse(&text) else { return Ok(()) };
        let docs = docs();
        let Ok(whole) = q.execute(&docs, &params()) else { return Ok(()) };
        let mut pages = Vec::new();
        let mut skip = 0;
        loop {
            let page = q.run(&docs, &params(), Window { skip, rows, bytes }, &Limits::default()).unwrap();
            prop_assert!(!page.rows.is_empty() || !page.more, "{text}: an empty page with more to come");
            prop_assert!(page.rows.len() as u64 <= rows);
            skip += page.rows.len() as u64;
            pages.extend(page.rows);
            if !page.more {
                break;
            }
        }
        prop_assert_eq!(pages, whole, "{}", text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Hostile queries end with their rows or the budget's error, in time, and never hold much
    /// more than the budget (4 MiB here) even where, unbounded, they would build hundreds of MB.
    #[test]
    fn hostile_queries_stay_within_their_budget(
        s in hostile_string(),
        joins in 0usize..6,
        shape in 0usize..8,
        lengths in prop::collection::vec(0usize..40, 1..4),
        page in prop::sample::select(&[1u64, 10, u64::MAX][..]),
    ) {
        let text = hostile_query(s, joins, shape);
        let q = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let docs = hostile_docs(&lengths);
        let memory = 4 * 1024 * 1024;
        let time = Duration::from_millis(100);
        let limits = Limits { memory, deadline: Some(Instant::now() + time), cancel: None };
        let started = Instant::now();
        let window = Window { skip: 0, rows: page, bytes: usize::MAX };
        let (result, peak) = counting::peak(|| q.run(&docs, &params(), window, &limits));
        let took = started.elapsed();
        match &result {
            Ok(_) => {}
            Err(e) => prop_assert!(
                matches!(e.kind, QueryErrorKind::TooExpensive | QueryErrorKind::Timeout),
                "{text}: {e}"
            ),
        }
        prop_assert!(took < time + Duration::from_secs(2), "{text}: took {took:?}");
        prop_assert!(peak <= 4 * memory + (8 << 20), "{text}: held {peak} bytes at once");
        drop(result);
    }
}

/// The attacks the limits were made for: each ends at once, within its budget.
#[test]
fn reported_attacks_are_contained() {
    let item = json!({ "id": "1", "arr": (0..20_000).map(|i| json!(format!("element-{i:08}-{}", "y".repeat(30)))).collect::<Vec<_>>() });
    let docs = vec![item];
    let limits = Limits::default();
    let all = Window::ALL;
    let replace = "SELECT VALUE LENGTH(REPLACE(REPLACE(REPLICATE('a',10000),'a',REPLICATE('b',10000)),'b',REPLICATE('c',10000))) FROM c";
    let (rows, peak) = counting::peak(|| parse(replace).unwrap().run(&docs, &Params::new(), all, &limits).unwrap());
    assert_eq!(rows.rows, Vec::<Value>::new(), "a string longer than 2 MiB is undefined");
    assert!(peak < 8 << 20, "held {peak} bytes");

    // One row of a 1 MB item's triple JOIN: the page is full after it.
    let join = parse("SELECT c FROM c JOIN a IN c.arr JOIN b IN c.arr").unwrap();
    let started = Instant::now();
    let page = Window { skip: 0, rows: 1, bytes: usize::MAX };
    let (rows, peak) = counting::peak(|| join.run(&docs, &Params::new(), page, &limits).unwrap());
    assert_eq!((rows.rows.len(), rows.more), (1, true));
    assert!(started.elapsed() < Duration::from_secs(2) && peak < 16 << 20, "{:?}, {peak} bytes", started.elapsed());

    // Rows that ORDER BY must hold: refused at the budget, not at the allocator.
    let ordered = parse("SELECT c.id, a FROM c JOIN a IN c.arr JOIN b IN c.arr ORDER BY b").unwrap();
    let small = Limits { memory: 4 << 20, ..Limits::default() };
    let (result, peak) = counting::peak(|| ordered.run(&docs, &Params::new(), all, &small));
    assert_eq!(result.unwrap_err().kind, QueryErrorKind::TooExpensive);
    assert!(peak < 24 << 20, "held {peak} bytes");

    // Work without memory: the deadline ends it.
    let count = parse("SELECT VALUE COUNT(1) FROM c JOIN a IN c.arr JOIN b IN c.arr JOIN d IN c.arr").unwrap();
    let timed = Limits { deadline: Some(Instant::now() + Duration::from_millis(200)), ..Limits::default() };
    let started = Instant::now();
    assert_eq!(count.run(&docs, &Params::new(), all, &timed).unwrap_err().kind, QueryErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // And the cancel flag, set from another thread.
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cancel = Limits { cancel: Some(flag.clone()), ..Limits::default() };
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(count.run(&docs, &Params::new(), all, &cancel).unwrap_err().kind, QueryErrorKind::Cancelled);
    setter.join().unwrap();
}

/// The deepest queries the parser accepts also evaluate (and drop) without exhausting a test
/// thread's stack in a debug build.
#[test]
fn deepest_accepted_queries_run() {
    let n = 120;
    let shapes = [
        format!("SELECT VALUE {}1{}", "(".repeat(n), ")".repeat(n)),
        format!("SELECT VALUE {}1{}", "[".repeat(n), "]".repeat(n)),
        format!("SELECT VALUE {}c.a", "- ".repeat(n)),
        format!("SELECT VALUE {}true", "NOT ".repeat(n)),
        format!("SELECT VALUE c.a{}", " + 1".repeat(n)),
        format!("SELECT VALUE c{}", ".e".repeat(n)),
        format!("SELECT VALUE {}c.a{}", "ABS(".repeat(n), ")".repeat(n)),
        format!("SELECT VALUE {}1{}", "{\"a\": ".repeat(n), "}".repeat(n)),
        format!("SELECT VALUE c.a ?? {}1", "c.b ?? ".repeat(n)),
        format!("SELECT VALUE {}1", "c.a ? 1 : ".repeat(n)),
    ];
    for text in shapes {
        let text = format!("{text} FROM c");
        let q = parse(&text).unwrap_or_else(|e| panic!("{}…: {e}", &text[..40]));
        q.execute(&docs(), &params()).unwrap();
        q.execute(&docs(), &Params::new()).unwrap();
    }
}

//! No input may panic: random strings, and random soups of the language's tokens, go through
//! `parse`, and whatever parses runs over a few documents (with and without parameters). The case
//! counts are bounded so this stays a unit test.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Params, parse};

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

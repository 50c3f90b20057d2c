//! The docs benchmark's operations done directly on SQLite: the same `nimbus_kv` rows Nimbus
//! keeps (bench/docs.sh points this at the node's own database file, so the data is the same),
//! the same pragmas as `crates/nimbus-store/src/sqlite.rs` (WAL, `synchronous = NORMAL`,
//! `busy_timeout = 5000`), and the same concurrency shape: THREADS threads sharing one writer
//! connection behind a mutex for writes, one read-only connection per thread for reads.
//!
//! ```text
//! direct-sqlite DB OP SECONDS THREADS RUN
//!   insert  one transaction: the item record and its index record (versions from nimbus_sequence)
//!   read    one item by primary key, among ITEMS preloaded ones
//!   query   the index records of one group (a key-prefix range), then its 10 items by key
//!   vector  every item of the `vectors` container read and parsed, cosine similarity to a random
//!           query vector, the 10 best kept: what a backend without a vector index does
//! ```
//!
//! Prints `OP ops_s=… ops=… secs=… cpu_us=…` (CPU of this process per operation).

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

/// The same filler the wrk scripts put in inserted items (bench/docs/insert.lua).
const TEXT: &str = "the quick brown fox jumps over the lazy dog, then it rests a while";

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn signed_unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn writer(path: &str) -> Result<Connection, Error> {
    let c = Connection::open(path)?;
    let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("not in WAL mode: {mode}").into());
    }
    c.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")?;
    Ok(c)
}

fn reader(path: &str) -> Result<Connection, Error> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    c.execute_batch("PRAGMA busy_timeout = 5000;")?;
    Ok(c)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, as in proc(5)).
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok())).sum();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn insert(conn: &Mutex<Connection>, run: &str, thread: usize, n: u64) -> Result<(), Error> {
    let id = format!("d{run}-{thread}-{n}");
    let pk = format!("p{}", n % 100);
    let group = format!("d{run}-{thread}-{}", n / 10);
    let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    let item = format!(r#"{{"id":"{id}","pk":"{pk}","group":"{group}","n":{n},"text":"{TEXT}","_ts":{ts}}}"#);
    let key = format!("items/\"{pk}\"/{id}");
    let index_key = format!("items/%2Fgroup/\"{group}\"/\"{pk}\"/{id}");
    let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (ns, key, value) in [("docs", key, item.into_bytes()), ("docs-index", index_key, Vec::new())] {
        let version: i64 = tx
            .prepare_cached("UPDATE nimbus_sequence SET value = value + 1 WHERE id = 1 RETURNING value")?
            .query_row([], |r| r.get(0))?;
        tx.prepare_cached("INSERT INTO nimbus_kv (ns, key, value, version) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![ns, key, value, version])?;
    }
    tx.commit()?;
    Ok(())
}

/// One item by key: its value's length (0 when missing).
fn get(c: &Connection, key: &str) -> Result<usize, Error> {
    let found = c
        .prepare_cached("SELECT ns, key, value, version FROM nimbus_kv WHERE ns = 'docs' AND key = ?1")?
        .query_row(params![key], |r| Ok(r.get_ref(2)?.as_bytes()?.len()))
        .optional()?;
    Ok(found.unwrap_or(0))
}

fn read(c: &Connection, rng: &mut Rng, items: u64) -> Result<usize, Error> {
    let i = rng.below(items);
    get(c, &format!("items/\"p{}\"/r{i}", i % 100))
}

/// The items of one group through its index records, like the store's `list` (keys from the
/// prefix on, stopping at the first without it), then each item by key. Answers how many.
fn query(c: &Connection, rng: &mut Rng, groups: u64) -> Result<usize, Error> {
    let prefix = format!("items/%2Fgroup/\"g{}\"/", rng.below(groups));
    let mut keys = Vec::with_capacity(10);
    {
        let mut stmt = c.prepare_cached(
            "SELECT key FROM nimbus_kv WHERE ns = 'docs-index' AND key >= ?1 AND key > ?2 ORDER BY key LIMIT 1000",
        )?;
        let mut rows = stmt.query(params![prefix, ""])?;
        while let Some(row) = rows.next()? {
            let key = row.get_ref(0)?.as_str()?;
            let Some(rest) = key.strip_prefix(prefix.as_str()) else { break };
            keys.push(format!("items/{rest}"));
        }
    }
    let mut found = 0;
    for key in keys {
        if get(c, &key)? > 0 {
            found += 1;
        }
    }
    Ok(found)
}

#[derive(serde::Deserialize)]
struct Embedded {
    embedding: Vec<f32>,
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Top 10 by cosine similarity over every item of the `vectors` container. Answers how many.
fn vector(c: &Connection, rng: &mut Rng, dims: usize) -> Result<usize, Error> {
    let q: Vec<f32> = (0..dims).map(|_| rng.signed_unit()).collect();
    let q_norm = norm(&q);
    let mut best: Vec<(f32, String)> = Vec::with_capacity(11);
    let mut stmt = c.prepare_cached(
        "SELECT key, value FROM nimbus_kv WHERE ns = 'docs' AND key >= 'vectors/' AND key < 'vectors0'",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let item: Embedded = serde_json::from_slice(row.get_ref(1)?.as_bytes()?)?;
        if item.embedding.len() != q.len() {
            continue;
        }
        let dot: f32 = item.embedding.iter().zip(&q).map(|(a, b)| a * b).sum();
        let n = norm(&item.embedding) * q_norm;
        if n == 0.0 {
            continue;
        }
        let score = dot / n;
        if best.len() < 10 || score > best[best.len() - 1].0 {
            let at = best.partition_point(|(s, _)| *s >= score);
            best.insert(at, (score, row.get_ref(0)?.as_str()?.to_owned()));
            best.truncate(10);
        }
    }
    Ok(best.len())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, op, seconds, threads, run] = args.as_slice() else {
        return Err("usage: direct-sqlite DB insert|read|query|vector SECONDS THREADS RUN".into());
    };
    let seconds: f64 = seconds.parse()?;
    let threads: usize = threads.parse()?;
    let items = env_u64("ITEMS", 10_000);
    let dims = env_u64("DIMS", 384) as usize;
    // What each operation must find, to catch a benchmark that measures nothing.
    let expect = match op.as_str() {
        "insert" => 0,
        "read" => 1,
        "query" | "vector" => 10,
        other => return Err(format!("unknown operation {other}").into()),
    };
    let shared_writer = Arc::new(Mutex::new(writer(db)?));
    let start = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (db, op, run, start, shared_writer) =
            (db.clone(), op.clone(), run.clone(), start.clone(), shared_writer.clone());
        handles.push(std::thread::spawn(move || -> Result<(u64, Instant), Error> {
            let conn = reader(&db)?;
            let mut rng =
                Rng::new(t as u64 + 1 + SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_nanos() as u64);
            start.wait();
            let deadline = Instant::now() + Duration::from_secs_f64(seconds);
            let mut n = 0u64;
            // Whole operations only: one that starts before the deadline finishes.
            while Instant::now() < deadline {
                let found = match op.as_str() {
                    "insert" => insert(&shared_writer, &run, t, n).map(|()| 0)?,
                    "read" => usize::from(read(&conn, &mut rng, items)? > 0),
                    "query" => query(&conn, &mut rng, items / 10)?,
                    _ => vector(&conn, &mut rng, dims)?,
                };
                if found != expect {
                    return Err(format!("{op} found {found}, expected {expect}: is the data loaded?").into());
                }
                n += 1;
            }
            Ok((n, Instant::now()))
        }));
    }
    start.wait();
    let (began, cpu_before) = (Instant::now(), cpu_time());
    let mut ops = 0;
    let mut last = began;
    for h in handles {
        let (n, ended) = h.join().map_err(|_| "a benchmark thread panicked")??;
        ops += n;
        last = last.max(ended);
    }
    let secs = (last - began).as_secs_f64();
    let cpu = cpu_time().saturating_sub(cpu_before);
    println!(
        "{op} ops_s={:.1} ops={ops} secs={secs:.2} cpu_us={:.1}",
        ops as f64 / secs,
        cpu.as_secs_f64() * 1e6 / ops.max(1) as f64
    );
    Ok(())
}

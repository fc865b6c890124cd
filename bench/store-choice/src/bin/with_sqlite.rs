//! SQLite (bundled) for the same work as `with_redb`: `BATCH TOTAL PATH`, WAL with
//! `synchronous=FULL` (every commit synced, as the sidecar's acknowledgement requires), one JSON
//! line.

use std::time::Instant;

use rusqlite::{params, Connection};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, batch, total, path] = args.as_slice() else {
        eprintln!("usage: with_sqlite BATCH TOTAL PATH");
        std::process::exit(2);
    };
    let (batch, total): (u64, u64) = (batch.parse().expect("BATCH"), total.parse().expect("TOTAL"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    let mut db = Connection::open(path).expect("open the database");
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE usage (hour INTEGER, dimension TEXT, tags TEXT, quantity INTEGER,
                             PRIMARY KEY (hour, dimension, tags)) WITHOUT ROWID;",
    )
    .expect("schema");
    let started = Instant::now();
    let mut written = 0;
    let mut transactions = 0;
    while written < total {
        let txn = db.transaction().expect("begin");
        {
            let mut add = txn
                .prepare_cached(
                    "INSERT INTO usage VALUES (1, 'requests', ?1, 1)
                     ON CONFLICT (hour, dimension, tags) DO UPDATE SET quantity = quantity + 1",
                )
                .expect("prepare");
            for _ in 0..batch.min(total - written) {
                add.execute(params![format!("team={}", written % 16)]).expect("upsert");
                written += 1;
            }
        }
        txn.commit().expect("commit");
        transactions += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"store\": \"sqlite\", \"batch\": {batch}, \"records\": {written}, \"transactions\": {transactions}, \"seconds\": {seconds:.3}, \"transactions_per_second\": {:.1}, \"records_per_second\": {:.1}}}",
        transactions as f64 / seconds,
        written as f64 / seconds
    );
}

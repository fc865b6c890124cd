//! redb as the sidecar uses it: `BATCH TOTAL PATH` writes TOTAL records of (hour, dimension, tag
//! set) -> quantity in durable transactions (Durability::Immediate: fsync) of BATCH each, and
//! prints one JSON line.

use std::time::Instant;

use redb::{Database, Durability, ReadableTable as _, TableDefinition};

const USAGE: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("usage");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, batch, total, path] = args.as_slice() else {
        eprintln!("usage: with_redb BATCH TOTAL PATH");
        std::process::exit(2);
    };
    let (batch, total): (u64, u64) = (batch.parse().expect("BATCH"), total.parse().expect("TOTAL"));
    let _ = std::fs::remove_file(path);
    let db = Database::create(path).expect("create the database");
    let started = Instant::now();
    let mut written = 0;
    let mut transactions = 0;
    while written < total {
        let mut txn = db.begin_write().expect("begin");
        txn.set_durability(Durability::Immediate).expect("durability");
        {
            let mut usage = txn.open_table(USAGE).expect("table");
            for _ in 0..batch.min(total - written) {
                let tags = format!("team={}", written % 16);
                let old = usage.get((1, "requests", tags.as_str())).expect("get").map_or(0, |v| v.value());
                usage.insert((1, "requests", tags.as_str()), old + 1).expect("insert");
                written += 1;
            }
        }
        txn.commit().expect("commit");
        transactions += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"store\": \"redb\", \"batch\": {batch}, \"records\": {written}, \"transactions\": {transactions}, \"seconds\": {seconds:.3}, \"transactions_per_second\": {:.1}, \"records_per_second\": {:.1}}}",
        transactions as f64 / seconds,
        written as f64 / seconds
    );
}

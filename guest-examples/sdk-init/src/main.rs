//! An Amphi function whose state is costly to build: a lookup table that takes about half a
//! second. `setup` builds it, registered as the initializer:
//!
//! ```text
//! amphi deploy search target/wasm-guests/amphi/sdk-init.wasm --init   # built once, at deploy
//! amphi deploy lazy target/wasm-guests/amphi/sdk-init.wasm            # built in every call
//! ```
//!
//! Deployed with `--init`, every instance starts with the table built; without it, each call
//! (a fresh instance) finds no table and builds it first, which is what a lazily initializing
//! function pays on every request.
//!
//! With `INIT_FAIL` set (trap, loop, grow) the initializer panics, never returns, or allocates
//! 1 GiB: what the platform's tests deploy to see such a deploy refused.
//!
//! | route | answer |
//! |---|---|
//! | `/` | `table ready: N entries, checksum C; initializer runs seen: R` |
//! | `/lookup?key=K` | the table's entry for K |
//! | `/env` | `GREETING` as the initializer saw it |
//! | `/state` | one more than what earlier calls left in a counter: 1 unless state leaked |

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use amphi_sdk::{Request, Response, StatusCode};

/// Entries in the table.
const ENTRIES: usize = 1 << 16;
/// Mixing rounds per entry: what makes building it take about 0.5 s on wasm.
const ROUNDS: u32 = 4_000;

static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
static INITIALIZER_RUNS: AtomicU32 = AtomicU32::new(0);
static GREETING_AT_INIT: Mutex<Option<String>> = Mutex::new(None);
static CALLS: AtomicU32 = AtomicU32::new(0);

fn build_table() -> Vec<u64> {
    (0..ENTRIES as u64)
        .map(|key| {
            let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..ROUNDS {
                x ^= x >> 33;
                x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
            }
            x
        })
        .collect()
}

fn setup() {
    // Initializers that go wrong, for the platform's tests: `INIT_FAIL` = trap, loop or grow.
    match std::env::var("INIT_FAIL").as_deref() {
        Ok("trap") => panic!("the initializer gave up"),
        Ok("loop") => loop {
            std::hint::spin_loop();
        },
        Ok("grow") => {
            let hoard = vec![1u8; 1 << 30];
            std::hint::black_box(hoard);
        }
        _ => {}
    }
    INITIALIZER_RUNS.fetch_add(1, Ordering::Relaxed);
    *GREETING_AT_INIT.lock().unwrap_or_else(|e| e.into_inner()) = std::env::var("GREETING").ok();
    TABLE.get_or_init(build_table);
    println!("table built: {ENTRIES} entries");
}

fn handle(req: Request) -> Response {
    let table = TABLE.get_or_init(build_table);
    match req.path() {
        "/" => {
            let checksum = table.iter().fold(0u64, |a, x| a ^ x);
            Response::text(format!(
                "table ready: {} entries, checksum {checksum:016x}; initializer runs seen: {}\n",
                table.len(),
                INITIALIZER_RUNS.load(Ordering::Relaxed)
            ))
        }
        "/lookup" => match req.query_param("key").and_then(|k| k.parse::<usize>().ok()) {
            Some(key) if key < table.len() => Response::text(format!("{:016x}\n", table[key])),
            _ => Response::new(StatusCode::BAD_REQUEST).with_body("key must be 0 to 65535\n"),
        },
        "/env" => {
            let greeting = GREETING_AT_INIT.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Response::text(format!("{}\n", greeting.unwrap_or_else(|| "(unset at init)".into())))
        }
        "/state" => {
            req.logger().log(format_args!("counting"));
            Response::text(format!("{}\n", CALLS.fetch_add(1, Ordering::Relaxed) + 1))
        }
        _ => Response::new(StatusCode::NOT_FOUND).with_body("no such route\n"),
    }
}

amphi_sdk::main!(handle, init = setup);

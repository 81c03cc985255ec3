//! Instructions per datum of [`Validator::validate`] on the bench schemas,
//! and of the general walker alone ([`Validator::validate_walking`]), for
//! comparison (not a check; a wall-clock figure on a shared machine means
//! little). Count them with callgrind:
//!
//! ```sh
//! cargo test --release -p relay-channel --lib validate::speed --no-run
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/deps/relay_channel-HASH validate::speed --ignored --test-threads 1
//! callgrind_annotate --inclusive=yes cg.out | grep 'speed::run_'
//! ```
//!
//! Each `run_*` function validates [`N`] datums; its inclusive count over
//! `N` is the cost of one (the loop's own few instructions included).
use super::*;
use crate::varint::put_long;

/// Validations per schema.
const N: usize = 100_000;
/// Distinct datums per schema, validated in turn `N / POOL` times.
const POOL: usize = 1_000;

/// Datums of a bench samples schema as `loadgen` sends them: a current
/// timestamp, an increasing counter, one block of `values` doubles (16-bit
/// quantised sines), the end of the array.
fn samples(values: usize) -> Vec<Vec<u8>> {
    (0..POOL)
        .map(|i| {
            let mut x = Vec::with_capacity(26 + 8 * values);
            put_long(&mut x, 1_767_225_600_000_000 + 200 * i as i64);
            put_long(&mut x, 1_000_000 + i as i64);
            put_long(&mut x, values as i64);
            for k in 0..values {
                let q = (((i + 37 * k) as f64 / 40.0).sin() * 30_000.0).round();
                x.extend_from_slice(&(q / 32_768.0).to_le_bytes());
            }
            put_long(&mut x, 0);
            x
        })
        .collect()
}

/// Datums of `channels.d/example.avsc` (a string among the fields).
fn example() -> Vec<Vec<u8>> {
    (0..POOL)
        .map(|i| {
            let mut x = Vec::new();
            put_long(&mut x, 1_767_225_600_000_000 + 200 * i as i64);
            let message = format!("sample {i}");
            put_long(&mut x, message.len() as i64);
            x.extend_from_slice(message.as_bytes());
            put_long(&mut x, i as i64);
            for k in 0..4 {
                x.extend_from_slice(&((i * k) as f64).to_le_bytes());
            }
            x
        })
        .collect()
}

fn run(v: &Validator, pool: &[Vec<u8>], walking: bool) -> usize {
    let mut valid = 0;
    for x in pool.iter().cycle().take(N) {
        let x = std::hint::black_box(x);
        let verdict = if walking {
            v.validate_walking(x)
        } else {
            v.validate(x)
        };
        valid += usize::from(verdict.is_ok());
    }
    valid
}

type Runner = fn(&Validator, &[Vec<u8>]) -> usize;
/// A schema's name, its runners (with and without the fast path), its
/// validator, its datums and how many of `N` are valid.
type Case = (&'static str, [Runner; 2], Validator, Vec<Vec<u8>>, usize);

/// One function per schema and path, so that callgrind counts each
/// apart (each does something of its own, so that the linker cannot
/// fold them into one).
macro_rules! runner {
    ($name:ident, $walking:expr, $tag:expr) => {
        #[inline(never)]
        fn $name(v: &Validator, pool: &[Vec<u8>]) -> usize {
            run(v, pool, $walking) + $tag * std::hint::black_box(0)
        }
    };
}
runner!(run_64, false, 64);
runner!(run_800, false, 800);
runner!(run_8k, false, 8192);
runner!(run_example, false, 50);
runner!(run_64_walking, true, 65);
runner!(run_800_walking, true, 801);
runner!(run_8k_walking, true, 8193);
runner!(run_example_walking, true, 51);
runner!(run_800_rejected, false, 802);
runner!(run_800_rejected_walking, true, 803);

#[test]
#[ignore]
fn instructions_per_datum() {
    let compile = |json: &str| Validator::new(&Schema::parse_str(json).unwrap()).unwrap();
    let cases: [Case; 5] = [
        (
            "samples-64",
            [run_64, run_64_walking],
            compile(include_str!("../../../benches/schemas/samples-64.avsc")),
            samples(6),
            N,
        ),
        (
            "samples-800",
            [run_800, run_800_walking],
            compile(include_str!("../../../benches/schemas/samples-800.avsc")),
            samples(99),
            N,
        ),
        (
            "samples-8k",
            [run_8k, run_8k_walking],
            compile(include_str!("../../../benches/schemas/samples-8k.avsc")),
            samples(1020),
            N,
        ),
        (
            "example",
            [run_example, run_example_walking],
            compile(include_str!("../../../channels.d/example.avsc")),
            example(),
            N,
        ),
        // Rejected at the end (a byte too many): the fast path runs
        // through, then the walker again.
        (
            "samples-800, trailing byte",
            [run_800_rejected, run_800_rejected_walking],
            compile(include_str!("../../../benches/schemas/samples-800.avsc")),
            samples(99)
                .into_iter()
                .map(|mut x| {
                    x.push(0);
                    x
                })
                .collect(),
            0,
        ),
    ];
    for (name, runners, v, pool, valid) in &cases {
        for f in runners {
            assert_eq!(f(v, pool), *valid, "{name}");
        }
        eprintln!(
            "{name}: {N} datums of {} bytes validated ({valid} valid), with and without \
             the fast path",
            pool[0].len()
        );
    }
}

//! `mover-testdata`: generate a test tree or compare two trees from the command line (for the
//! demo and benchmark scripts).
//!
//! ```text
//! mover-testdata generate DIR [--entries N] [--max-file-size SIZE] [--big KIND:SIZE]... [--plain] [--seed N]
//! mover-testdata compare A B [--no-ownership] [--no-allocation]
//! ```
//! KIND is `random`, `text`, `database` or `sparse`; SIZE takes a `K`, `M` or `G` suffix.

use std::path::PathBuf;
use std::process::ExitCode;

use mover_testdata::{BigFile, CompareOptions, TreeSpec};

fn size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let number: u64 = digits.parse().map_err(|_| format!("bad size `{text}`"))?;
    let factor = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(format!("bad size unit in `{text}`")),
    };
    Ok(number * factor)
}

fn big(text: &str) -> Result<BigFile, String> {
    let (kind, bytes) = text.split_once(':').ok_or_else(|| format!("`--big {text}`: expected KIND:SIZE"))?;
    let bytes = size(bytes)?;
    Ok(match kind {
        "random" => BigFile::Random(bytes),
        "text" => BigFile::Text(bytes),
        "database" => BigFile::Database(bytes),
        "sparse" => BigFile::Sparse { size: bytes, data_every: 16 << 20, data_len: 256 << 10 },
        _ => return Err(format!("unknown big file kind `{kind}` (random, text, database, sparse)")),
    })
}

fn run(args: &[String]) -> Result<bool, String> {
    let usage = "usage: mover-testdata generate DIR [--entries N] [--max-file-size SIZE] [--big KIND:SIZE]... [--plain] [--seed N]\n       mover-testdata compare A B [--no-ownership] [--no-allocation]";
    match args.first().map(String::as_str) {
        Some("generate") => {
            let dir = PathBuf::from(args.get(1).ok_or(usage)?);
            let mut spec = TreeSpec::with_entries(2_000);
            let mut bigs = Vec::new();
            let mut rest = args[2..].iter();
            while let Some(flag) = rest.next() {
                let mut value = || rest.next().ok_or_else(|| format!("`{flag}` needs a value"));
                match flag.as_str() {
                    "--entries" => {
                        let seed = spec.seed;
                        let exotic = spec.exotic;
                        spec = TreeSpec::with_entries(value()?.parse().map_err(|_| "bad --entries")?);
                        spec.seed = seed;
                        spec.exotic = exotic;
                    }
                    "--max-file-size" => spec.max_file_size = size(value()?)?,
                    "--big" => bigs.push(big(value()?)?),
                    "--plain" => spec.exotic = false,
                    "--seed" => spec.seed = value()?.parse().map_err(|_| "bad --seed")?,
                    other => return Err(format!("unknown flag `{other}`\n{usage}")),
                }
            }
            if !bigs.is_empty() {
                spec.big_files = bigs;
            }
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let stats = mover_testdata::generate(&dir, &spec).map_err(|e| format!("generate: {e}"))?;
            println!("{} entries, {} files, {} bytes", stats.entries, stats.files, stats.bytes);
            Ok(true)
        }
        Some("compare") => {
            let (a, b) = (args.get(1).ok_or(usage)?, args.get(2).ok_or(usage)?);
            let mut options = CompareOptions::default();
            for flag in &args[3..] {
                match flag.as_str() {
                    "--no-ownership" => options.ownership = false,
                    "--no-allocation" => options.allocation = false,
                    other => return Err(format!("unknown flag `{other}`\n{usage}")),
                }
            }
            let differences =
                mover_testdata::compare(a.as_ref(), b.as_ref(), &options).map_err(|e| format!("compare: {e}"))?;
            for difference in differences.iter().take(50) {
                println!("{difference}");
            }
            if differences.is_empty() {
                println!("identical");
            } else {
                println!("{} differences", differences.len());
            }
            Ok(differences.is_empty())
        }
        _ => Err(usage.to_owned()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

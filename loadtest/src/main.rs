//! `pingwheel-loadtest <idle|push|echo|churn> --url ws://HOST:PORT/PATH ...` — see
//! `--help` and docs/loadtest.md.

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]

use std::fs::File;
use std::io::BufWriter;
use std::process::ExitCode;

use clap::Parser;

use pingwheel_loadtest::cli::Args;
use pingwheel_loadtest::plan::Plan;
use pingwheel_loadtest::{coordinator, fleet, plot};

/// Exit status for usage and setup errors (clap uses the same).
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let child = args.child_index.zip(args.child_count);
    let mut plan = match Plan::new(args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("pingwheel-loadtest: {message}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    if let Some((index, count)) = child {
        return ExitCode::from(fleet::run_child(&plan, index, count));
    }
    if let Err(message) = coordinator::prefill_recovery(&mut plan) {
        eprintln!("pingwheel-loadtest: {message}");
        return ExitCode::from(USAGE_ERROR);
    }
    let (report, histogram) = match coordinator::execute(&plan) {
        Ok(done) => done,
        Err(message) => {
            eprintln!("pingwheel-loadtest: {message}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    print!("{}", report.summary_table());
    if let Some(path) = &plan.args.json {
        let written = File::create(path).map_err(|e| e.to_string()).and_then(|f| {
            serde_json::to_writer_pretty(BufWriter::new(f), &report).map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            eprintln!("pingwheel-loadtest: cannot write {}: {e}", path.display());
            return ExitCode::from(USAGE_ERROR);
        }
    }
    if let Some(path) = &plan.args.plot
        && let Err(message) = plot::draw(path, &report, &histogram)
    {
        eprintln!("pingwheel-loadtest: {message}");
        return ExitCode::from(USAGE_ERROR);
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

//! The command-line conventions (help, exit codes, JSON errors, colour, broken pipes, Ctrl-C,
//! completions) and `pgflip demo`, checked by running the real binary.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const COMMANDS: [&str; 11] = [
    "sync",
    "migrate",
    "schema",
    "green",
    "status",
    "list",
    "rollback",
    "cleanup",
    "verify",
    "demo",
    "completions",
];

/// Every command is built; these need a subcommand and say so (usage error).
const NEED_SUBCOMMAND: [&[&str]; 2] = [&["migrate"], &["green"]];

/// A command that fails at run time: nothing listens on port 1.
const FAILS: [&str; 4] = [
    "migrate",
    "status",
    "--target",
    "postgresql://postgres@127.0.0.1:1/none",
];

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgflip"));
    cmd.env_remove("NO_COLOR").stdin(Stdio::null());
    cmd
}

#[test]
fn help_lists_every_command() {
    let o = pgflip(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for c in COMMANDS {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(c)),
            "--help does not list {c}:\n{out}"
        );
    }
    for flag in [
        "--json",
        "--dry-run",
        "--quiet",
        "--verbose",
        "--env",
        "--no-env-file",
    ] {
        assert!(out.contains(flag), "--help does not list {flag}:\n{out}");
    }
}

#[test]
fn commands_without_their_subcommand_are_usage_errors() {
    for args in NEED_SUBCOMMAND {
        let o = pgflip(args);
        let name = format!("pgflip {}", args.join(" "));
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("Usage"), "{name}: {}", stderr(&o));
        assert!(
            stdout(&o).is_empty(),
            "{name} wrote to stdout without --json"
        );
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let o = pgflip(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.len() > 1000, "{shell} completions are too short");
        for c in ["sync", "rollback", "demo", "completions", "json"] {
            assert!(out.contains(c), "{shell} completions do not mention {c}");
        }
    }
    let o = pgflip(&["completions", "tcsh"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn json_errors_are_json_on_stdout_with_the_exit_code() {
    // A command error.
    let mut args = vec!["--json"];
    args.extend(FAILS);
    let o = pgflip(&args);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(&o)));
    assert_eq!(v["exit_code"], 3);
    assert!(v["error"].as_str().unwrap().contains("could not connect"));
    // The human message still goes to stderr.
    assert!(stderr(&o).contains("could not connect"));

    // A usage error (clap's): exit 2, JSON too.
    let o = pgflip(&["demo", "--json", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(&o)));
    assert_eq!(v["exit_code"], 2);
    assert!(v["error"].as_str().unwrap().contains("--no-such-flag"));

    // Without --json, stdout stays empty on errors.
    let o = pgflip(&["demo", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty());
}

#[test]
fn quiet_and_verbose_are_global_and_exclusive() {
    let mut args = FAILS.to_vec();
    args.push("-q");
    let o = pgflip(&args);
    assert_eq!(o.status.code(), Some(3), "errors still show with -q");
    assert!(stderr(&o).contains("could not connect"));
    let mut args = vec!["-vv"];
    args.extend(FAILS);
    let o = pgflip(&args);
    assert_eq!(o.status.code(), Some(3));
    let o = pgflip(&["-q", "-v", "list"]);
    assert_eq!(o.status.code(), Some(2), "-q and -v conflict");
}

/// Runs `args` under a pseudo-terminal (`script`), returning everything it printed; `None`
/// when `script` (util-linux) is not installed.
fn on_a_terminal(args: &str, no_color: Option<&str>) -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v script >/dev/null"])
        .status()
        .ok()?;
    if !found.success() {
        return None;
    }
    let line = format!("{} {args}", env!("CARGO_BIN_EXE_pgflip"));
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .stdin(Stdio::null());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let o = cmd.output().expect("run script");
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    // Piped: never colour, whatever NO_COLOR says.
    let o = bin().args(["--help"]).output().unwrap();
    assert!(!stdout(&o).contains('\x1b'));
    let o = bin().args(FAILS).output().unwrap();
    assert!(!stderr(&o).contains('\x1b'));
    let fails = FAILS.join(" ");

    let Some(coloured) = on_a_terminal(&fails, None) else {
        eprintln!("skipping the terminal part: `script` is not installed");
        return;
    };
    // On a terminal there is colour (so the next assertion means something)...
    assert!(
        coloured.contains('\x1b'),
        "no colour on a terminal: {coloured:?}"
    );
    // ...and NO_COLOR turns it off, for our messages and for clap's help alike.
    let plain = on_a_terminal(&fails, Some("1")).unwrap();
    assert!(plain.contains("could not connect"), "{plain:?}");
    assert!(
        !plain.contains('\x1b'),
        "colour despite NO_COLOR: {plain:?}"
    );
    let help = on_a_terminal("--help", Some("1")).unwrap();
    assert!(help.contains("Usage"), "{help:?}");
    assert!(!help.contains('\x1b'), "colour despite NO_COLOR: {help:?}");
    // An empty NO_COLOR does not count (no-color.org).
    let empty = on_a_terminal(&fails, Some("")).unwrap();
    assert!(empty.contains('\x1b'), "{empty:?}");
}

#[test]
fn a_closed_pipe_is_success_not_a_panic() {
    for (args, read) in [
        (&["completions", "bash"][..], 0usize),
        (&["completions", "zsh"][..], 16),
        (&["--help"][..], 0),
    ] {
        let mut child = bin()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = child.stdout.take().unwrap();
        if read > 0 {
            let mut buf = vec![0; read];
            reader.read_exact(&mut buf).unwrap();
        }
        drop(reader);
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
}

/// Waits until no process mentions `dir` on its command line (the server and its watchdog).
fn assert_no_process_mentions(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holders: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle))
            .collect();
        if holders.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes still use {needle}: {holders:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_removed(dirs: &[PathBuf]) {
    assert_eq!(dirs.len(), 2, "the demo names two server directories");
    for d in dirs {
        assert!(
            d.starts_with(std::env::temp_dir()),
            "{} is not a temp dir",
            d.display()
        );
        assert!(!d.exists(), "{} is left behind", d.display());
        assert_no_process_mentions(d);
    }
}

#[test]
fn demo_shows_each_act_and_removes_its_servers() {
    let o = pgflip(&["demo"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}\n{}", out, stderr(&o));
    for act in ["1. The sample", "2. pgflip schema dump"] {
        assert!(out.contains(act), "the demo does not show {act:?}:\n{out}");
    }
    // The sample is really there, with the mixed-case table and the differences.
    let orders = out
        .lines()
        .find(|l| l.contains("public.\"Orders\""))
        .expect("the sample lists \"Orders\"");
    assert_eq!(
        orders.split_whitespace().collect::<Vec<_>>(),
        ["public.\"Orders\"", "table", "8", "6"]
    );
    assert!(out.contains("public.customer_totals") && out.contains("view"));
    let dirs: Vec<PathBuf> = out
        .lines()
        .filter_map(|l| l.split("(files in ").nth(1))
        .map(|rest| PathBuf::from(rest.trim_end_matches(')')))
        .collect();
    assert!(out.contains("Stopped both servers and removed"));
    assert_removed(&dirs);
}

#[test]
fn demo_json_prints_one_line_per_act() {
    let o = pgflip(&["demo", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let acts: Vec<&str> = lines.iter().map(|v| v["act"].as_str().unwrap()).collect();
    assert_eq!(
        acts,
        [
            "servers",
            "sample",
            "schema-dump",
            "schema-diff",
            "staging-sync",
            "swap",
            "rollback",
            "migrate",
            "green",
            "generation-cleanup",
            "cleanup"
        ]
    );
    // Every command an act ran exited as the demo expected, and the diff found what the
    // sample was built to show: one new, one updated and one deleted product.
    for line in &lines[3..lines.len() - 1] {
        for c in line["result"]["commands"].as_array().unwrap() {
            assert_eq!(c["exit_code"], 0, "{c}");
        }
    }
    let diff = lines[4]["result"]["commands"][0]["output"]
        .as_str()
        .unwrap();
    assert!(
        diff.contains("New rows:     1")
            && diff.contains("Updated rows: 1")
            && diff.contains("Deleted rows: 1"),
        "{diff}"
    );
    let sample = &lines[1]["result"]["relations"];
    let orders = sample
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "Orders")
        .expect("Orders in the sample");
    assert_eq!(orders["source_rows"], 8);
    assert_eq!(orders["target_rows"], 6);
    assert!(lines[2]["result"]["sql"]
        .as_str()
        .unwrap()
        .contains("Orders"));
    assert!(lines[1]["explanation"].as_str().unwrap().len() > 20);
    assert_eq!(lines[lines.len() - 1]["removed"], true);
    let dirs: Vec<PathBuf> = ["source", "target"]
        .iter()
        .map(|s| PathBuf::from(lines[0][s]["dir"].as_str().unwrap()))
        .collect();
    assert_removed(&dirs);
}

#[test]
fn demo_interrupted_with_ctrl_c_exits_130_and_removes_its_servers() {
    let mut child = bin()
        .args(["demo", "--keep", "--json"])
        .stdin(Stdio::piped()) // kept open: --keep waits for Enter
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut dirs = vec![];
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["act"] == "servers" {
            for side in ["source", "target"] {
                dirs.push(PathBuf::from(v[side]["dir"].as_str().unwrap()));
            }
        }
        if v["act"] == "keep" {
            break;
        }
    }
    assert!(dirs.iter().all(|d| d.exists()), "servers run while kept");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    drop(stdin);
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let last: serde_json::Value =
        serde_json::from_str(rest.last().expect("an error line")).unwrap();
    assert_eq!(last["exit_code"], 130);
    assert_removed(&dirs);
}

#[test]
fn demo_into_a_closed_pipe_still_removes_its_servers() {
    let mut child = bin()
        .args(["demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut first = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("pgflip demo"));
    drop(reader);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
    // Server directories are named after the process that started them.
    let prefix = format!("pgflip-pg-{pid}-");
    let left: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_no_process_mentions(Path::new(&format!(
        "{}/{prefix}",
        std::env::temp_dir().display()
    )));
}

/// `println!` / `eprintln!` panic on a closed stream, and the library must never print: every
/// write goes through `cli::output`.
#[test]
fn nothing_prints_with_println() {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, found);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                // Unit tests inside a file may print.
                let code = text.split("#[cfg(test)]").next().unwrap();
                for (i, line) in code.lines().enumerate() {
                    let l = line.trim_start();
                    if l.starts_with("//") {
                        continue;
                    }
                    if ["println!", "eprintln!", "print!(", "eprint!(", "dbg!("]
                        .iter()
                        .any(|m| l.contains(m))
                    {
                        found.push(format!("{}:{}: {l}", p.display(), i + 1));
                    }
                }
            }
        }
    }
    let mut found = vec![];
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    assert!(
        found.is_empty(),
        "route output through cli::output: {found:#?}"
    );
}

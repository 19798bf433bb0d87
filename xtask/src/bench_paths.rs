//! The paths part of `cargo xtask bench`, every path made by `mptcpify paths auto` (or the
//! agent's `[paths]`) alone: unequal paths against the sum of each path's own TCP rate, and the
//! loss of a path in the middle of a transfer, beside plain TCP on the lost path.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use serde_json::{Value, json};

use crate::{
    bench::{CGROUPS, Env, iperf_to, two_paths},
    process::sh,
    topology::Shape,
};

const FAST: Shape = Shape { mbit: 50, delay_ms: 5 };
const SLOW: Shape = Shape { mbit: 20, delay_ms: 40 };

/// How long the paths runs are (the smoke run only proves they work).
#[derive(Clone, Copy)]
pub struct PathsSize {
    pub secs: u32,
    pub rounds: usize,
    /// When path 1 goes down, from the start of the sampling.
    pub loss_at_s: f64,
    pub failover_secs: u32,
}

pub const FULL: PathsSize = PathsSize { secs: 8, rounds: 3, loss_at_s: 4.0, failover_secs: 10 };
pub const SMOKE: PathsSize = PathsSize { secs: 2, rounds: 1, loss_at_s: 1.5, failover_secs: 4 };

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn enable_cgroups(env: &Env) -> Result<()> {
    for cg in CGROUPS {
        std::fs::create_dir_all(env.cg_root.join(cg))?;
    }
    env.mptcpify(&format!("enable --cgroup {} --cgroup {} >/dev/null", CGROUPS[0], CGROUPS[1]))?;
    Ok(())
}

/// 50 Mbit/s 5 ms + 20 Mbit/s 40 ms: MPTCP over both against each path's own TCP.
pub fn unequal(env: &Env, size: PathsSize) -> Result<Value> {
    env.mptcpify("reset >/dev/null")?;
    two_paths(env, [FAST, SLOW], "")?;
    enable_cgroups(env)?;
    let mut runs: Vec<(f64, f64, f64)> = Vec::new();
    for round in 0..size.rounds {
        eprintln!("bench: unequal paths, round {}/{}", round + 1, size.rounds);
        let rate = |mode, server| -> Result<f64> {
            iperf_to(env, mode, size.secs, server)?["mbit_per_s"].as_f64().ok_or_else(|| anyhow!("no rate"))
        };
        runs.push((rate("tcp", "10.88.1.2")?, rate("tcp", "10.88.2.2")?, rate("mptcpify", "10.88.1.2")?));
    }
    let _ = sh("ip netns del mb-cli; ip netns del mb-srv");
    env.mptcpify("reset >/dev/null")?;
    let (tcp1, tcp2, mptcp) = (
        median(runs.iter().map(|r| r.0).collect()),
        median(runs.iter().map(|r| r.1).collect()),
        median(runs.iter().map(|r| r.2).collect()),
    );
    let per_round: Vec<f64> = runs.iter().map(|r| r.2 / (r.0 + r.1)).collect();
    Ok(json!({
        "paths": [{ "mbit": FAST.mbit, "delay_ms": FAST.delay_ms }, { "mbit": SLOW.mbit, "delay_ms": SLOW.delay_ms }],
        "seconds_per_run": size.secs,
        "rounds": size.rounds,
        "tcp_path1_mbit": tcp1,
        "tcp_path2_mbit": tcp2,
        "mptcpify_mbit": mptcp,
        "ratio": { "name": "mptcpify / (path 1 TCP + path 2 TCP)", "value": median(per_round), "goal": 0.90 },
    }))
}

/// Samples the client's receive counters of c1 and c2 every 50 ms inside its namespace, and
/// takes path 1 down (`ip link set c1 down`) `loss_at` seconds in: one JSON object per line.
const SAMPLER: &str = r#"
import json, os, sys, time
loss_at, until = float(sys.argv[1]), float(sys.argv[2])
rx = lambda d: int(open(f"/sys/class/net/{d}/statistics/rx_bytes").read())
t0, lost = time.monotonic(), None
while True:
    t = time.monotonic() - t0
    if lost is None and t >= loss_at:
        os.system("ip link set c1 down")
        lost = time.monotonic() - t0
    print(json.dumps({"t": t, "c1": rx("c1"), "c2": rx("c2"), "lost": lost}), flush=True)
    if t >= until:
        break
    time.sleep(0.05)
"#;

/// The agent keeping `[paths]` in the client's namespace (nsenter: `ip netns exec` would hide
/// bpffs and the cgroup tree).
fn start_agent(env: &Env, backup: bool) -> Result<(Child, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    let backup = if backup { "backup = [\"c2\"]\n" } else { "" };
    std::fs::write(&policy, format!("[paths]\nauto = true\n{backup}"))?;
    let child = Command::new("nsenter")
        .arg("--net=/run/netns/mb-cli")
        .arg(&env.mptcpify)
        .args(["agent", "--config"])
        .arg(&policy)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    // Its first pass makes both endpoints (the topology has none).
    for _ in 0..200 {
        let v: Value = serde_json::from_str(&env.mptcpify("paths --netns mb-cli --json")?)?;
        let ours = v["endpoints"].as_array().map_or(0, |e| e.iter().filter(|e| e["owner"] == "mptcpify").count());
        if ours == 2 {
            return Ok((child, dir));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(anyhow!("the agent made no endpoints in mb-cli within 20 s"))
}

/// One transfer during which path 1 is lost: how long until the client receives at 0.9 of the
/// surviving path's rate again, and what path 2 carried before the loss.
fn lose_path_one(env: &Env, mode: &str, size: PathsSize, surviving_mbit: f64) -> Result<Value> {
    // Plain TCP never finishes on a lost path: iperf3 is stopped a while after its end.
    let deadline = size.failover_secs + 10;
    let command = |ns: &str, cgroup: &str, args: &str| {
        let inner = format!("ip netns exec {ns} timeout -s KILL {deadline} iperf3 {args}");
        if mode == "tcp" { inner } else { env.in_cgroup(cgroup, &inner) }
    };
    let mut server =
        Command::new("sh").arg("-c").arg(command("mb-srv", CGROUPS[0], "-s -1")).stdout(Stdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    let args = format!("-c 10.88.1.2 -R -t {} -J", size.failover_secs);
    let client =
        Command::new("sh").arg("-c").arg(command("mb-cli", CGROUPS[1], &args)).stdout(Stdio::piped()).spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let until = f64::from(size.failover_secs) - 1.0;
    let samples = sh(&format!(
        "ip netns exec mb-cli python3 -c '{}' {} {until}",
        SAMPLER.replace('\'', "'\\''"),
        size.loss_at_s
    ))?;
    let out = client.wait_with_output()?;
    let _ = server.kill();
    let _ = server.wait();
    let samples: Vec<Value> = samples.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let completed = out.status.success();
    let iperf: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok(json!({
        "mode": mode,
        "completed": completed,
        "mbit_per_s": iperf["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e6),
        "recovery": recovery(&samples, 0.9 * surviving_mbit),
    }))
}

/// From the samples: path 2's share before the loss, and the time from the loss to the first
/// 250 ms window at `target_mbit` or more (`null`: never).
fn recovery(samples: &[Value], target_mbit: f64) -> Value {
    let get = |s: &Value, k: &str| s[k].as_f64().unwrap_or(0.0);
    let Some(lost) = samples.iter().find_map(|s| s["lost"].as_f64()) else {
        return json!({ "error": "no loss recorded" });
    };
    let before: Vec<&Value> = samples.iter().filter(|s| get(s, "t") < lost).collect();
    let (first, last) = (before.first(), before.last());
    let moved = |k: &str| match (first, last) {
        (Some(a), Some(b)) => (get(b, k) - get(a, k)) / 1e6,
        _ => 0.0,
    };
    let mut back_after = None;
    for (i, s) in samples.iter().enumerate() {
        let t = get(s, "t");
        if t < lost + 0.25 {
            continue;
        }
        let Some(w) = samples[..i].iter().rev().find(|p| t - get(p, "t") >= 0.25) else { continue };
        let bytes = get(s, "c1") + get(s, "c2") - get(w, "c1") - get(w, "c2");
        if bytes * 8.0 / 1e6 / (t - get(w, "t")) >= target_mbit {
            back_after = Some(t - lost);
            break;
        }
    }
    json!({
        "loss_at_s": lost,
        "mbytes_before_loss": { "path1": moved("c1"), "path2": moved("c2") },
        "seconds_to_90_percent": back_after,
        "target_mbit": target_mbit,
    })
}

/// Path 1 goes down mid-transfer: plain TCP on path 1; MPTCP with the paths `paths auto` made
/// and nothing watching them (the kernel alone); with the agent's `[paths]` following the link;
/// and with path 2 as `backup`.
pub fn failover(env: &Env, size: PathsSize) -> Result<Value> {
    env.mptcpify("reset >/dev/null")?;
    let mut rows = Vec::new();
    let mut surviving = f64::NAN;
    for (mode, agent, backup) in
        [("tcp", false, false), ("mptcpify", false, false), ("mptcpify", true, false), ("mptcpify", true, true)]
    {
        eprintln!("bench: failover, {mode}, agent {agent}, path 2 backup {backup}");
        two_paths(env, [FAST; 2], if backup { "--backup c2" } else { "" })?;
        enable_cgroups(env)?;
        if surviving.is_nan() {
            surviving = iperf_to(env, "tcp", size.secs, "10.88.2.2")?["mbit_per_s"].as_f64().unwrap_or(f64::NAN);
        }
        let agent = if agent { Some(start_agent(env, backup)?) } else { None };
        let mut row = lose_path_one(env, mode, size, surviving)?;
        row["path2_backup"] = json!(backup);
        row["agent"] = json!(agent.is_some());
        rows.push(row);
        if let Some((mut child, _dir)) = agent {
            let _ = sh(&format!("kill -TERM {}", child.id()));
            let _ = child.wait();
        }
        let _ = sh("ip netns del mb-cli; ip netns del mb-srv");
        env.mptcpify("reset >/dev/null")?;
    }
    Ok(
        json!({ "surviving_path_tcp_mbit": surviving, "transfer_secs": size.failover_secs, "rows": rows, "goal_seconds": 1.0 }),
    )
}

pub fn markdown(r: &Value) -> String {
    let mut md = String::new();
    let u = &r["unequal_paths"];
    if !u.is_null() {
        let v = u["ratio"]["value"].as_f64().unwrap_or(f64::NAN);
        let goal = u["ratio"]["goal"].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "\n### Unequal paths\n\nPath 1 {} Mbit/s + {} ms, path 2 {} Mbit/s + {} ms each way, the client's paths made by `mptcpify paths auto` alone; iperf3 -R for {} s, {} interleaved rounds; medians.\n\n| mode | Mbit/s |\n|---|---:|\n| TCP over path 1 | {:.1} |\n| TCP over path 2 | {:.1} |\n| mptcpify (both) | {:.1} |\n\n| ratio | value | goal |\n|---|---:|---|\n| {} | {v:.3} | {goal} {} |\n",
            u["paths"][0]["mbit"], u["paths"][0]["delay_ms"], u["paths"][1]["mbit"], u["paths"][1]["delay_ms"],
            u["seconds_per_run"], u["rounds"],
            u["tcp_path1_mbit"].as_f64().unwrap_or(f64::NAN),
            u["tcp_path2_mbit"].as_f64().unwrap_or(f64::NAN),
            u["mptcpify_mbit"].as_f64().unwrap_or(f64::NAN),
            u["ratio"]["name"].as_str().unwrap_or(""),
            if v >= goal { "✅ met" } else { "❌ missed" },
        ));
    }
    let f = &r["failover"];
    if !f.is_null() {
        md.push_str(&format!(
            "\n### Losing a path mid-transfer\n\nTwo paths of {} Mbit/s + {} ms; an iperf3 -R of {} s; path 1 (the first subflow's) is taken down (`ip link set c1 down` on the client) {} s into it; the client's receive counters sampled every 50 ms. The agent, where it runs, keeps `[paths] auto = true` in the client's namespace (run there with nsenter). Recovered: the first 250 ms window at 0.9 of path 2's own TCP rate ({:.1} Mbit/s). Goal: under {} s.\n\n| mode | completed | Mbit/s overall | MB over path 2 before the loss | seconds to 90 % after the loss |\n|---|---|---:|---:|---:|\n",
            FAST.mbit, FAST.delay_ms, f["transfer_secs"], f["rows"][0]["recovery"]["loss_at_s"].as_f64().map_or("?".into(), |t| format!("{t:.1}")),
            f["surviving_path_tcp_mbit"].as_f64().unwrap_or(f64::NAN), f["goal_seconds"],
        ));
        for row in f["rows"].as_array().into_iter().flatten() {
            let mode = match (row["mode"].as_str(), row["agent"].as_bool(), row["path2_backup"].as_bool()) {
                (Some("tcp"), ..) => "plain TCP over path 1",
                (_, Some(false), _) => "mptcpify, `paths auto` once, no agent (the kernel alone)",
                (_, _, Some(true)) => "mptcpify + agent `[paths]`, path 2 `backup`",
                _ => "mptcpify + agent `[paths]`, both paths active",
            };
            let rec = &row["recovery"];
            let secs = rec["seconds_to_90_percent"].as_f64().map_or("never".into(), |s| {
                format!("{s:.2} {}", if s < f["goal_seconds"].as_f64().unwrap_or(1.0) { "✅" } else { "❌" })
            });
            md.push_str(&format!(
                "| {mode} | {} | {} | {:.1} | {secs} |\n",
                if row["completed"].as_bool() == Some(true) { "yes" } else { "no" },
                row["mbit_per_s"].as_f64().map_or("n/a".into(), |m| format!("{m:.1}")),
                rec["mbytes_before_loss"]["path2"].as_f64().unwrap_or(f64::NAN),
            ));
        }
    }
    md
}

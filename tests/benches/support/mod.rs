//! What the broker benchmarks share: the payload, the rounds that alternate the sides, CPU
//! accounting from `/proc`, the paced latency runs, and the report with its targets.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use topiq_adapter::{
    Adapter, ConsumeOptions, NewMessage, PublishReceipt, SubscriptionKey, SubscriptionSpec,
    TopicName, TopicSpec, TriggerName,
};

/// In-flight publishes, and topiq's prefetch equal to raw's consumer window.
pub const WINDOW: usize = 256;
pub const PIPELINED: usize = 20_000;
pub const ONE_AT_A_TIME: usize = 5_000;
pub const END_TO_END: usize = 20_000;
pub const RATE: usize = 5_000;
pub const LATENCY_SECONDS: usize = 2;
/// Latency rounds per side; the table shows p50 and p99 over all their samples, and the
/// median over the rounds of each round's p99 difference (the target is judged on that).
pub const LATENCY_ROUNDS: usize = 8;
/// Rounds per throughput measure; the table shows the median.
pub const ROUNDS: usize = 7;

pub fn payload(n: usize) -> Value {
    json!({"n": n, "to": "someone@example.com", "subject": "Order shipped", "total": 99.95})
}

pub fn bytes(n: usize) -> bytes::Bytes {
    serde_json::to_vec(&payload(n)).unwrap().into()
}

pub fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// The value at fraction `p` (0 to 1) of `sorted`.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// One side of a latency run: how it publishes message `n`, and what its consumer received.
pub struct LatencySide {
    pub publish: Box<dyn Fn(usize) -> BoxFuture<'static, ()> + Send + Sync>,
    pub received: Arc<std::sync::Mutex<Vec<(usize, Instant)>>>,
    pub receiving: tokio::task::JoinHandle<()>,
}

/// Publishes `RATE` msg/s on every side for `LATENCY_SECONDS`, the sides taking turns message
/// by message within each millisecond, and returns each side's publish → receipt latency of
/// every message by its number (`None`: not received), after one warm-up message per side.
pub async fn paced(sides: &[LatencySide]) -> Vec<Vec<Option<Duration>>> {
    // One message through each side first, so neither side's measurement includes its
    // consumer's start (getting the consumer, the first pull).
    for side in sides {
        (side.publish)(0).await;
        while side.received.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        side.received.lock().unwrap().clear();
    }
    let total = RATE * LATENCY_SECONDS;
    let mut sent_at = vec![vec![Instant::now(); total]; sides.len()];
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let per_tick = RATE / 1000;
    let mut n = 0;
    let mut publishes = Vec::with_capacity(total * sides.len());
    while n < total {
        ticker.tick().await;
        for _ in 0..per_tick {
            for (side, sent_at) in sides.iter().zip(&mut sent_at) {
                sent_at[n] = Instant::now();
                publishes.push(tokio::spawn((side.publish)(n)));
            }
            n += 1;
        }
    }
    for publish in publishes {
        publish.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for side in sides {
        while side.received.lock().unwrap().len() < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        side.receiving.abort();
    }
    sides
        .iter()
        .zip(&sent_at)
        .map(|(side, sent_at)| {
            let mut latencies = vec![None; total];
            for (n, at) in side.received.lock().unwrap().iter() {
                latencies[*n] = Some(at.duration_since(sent_at[*n]));
            }
            latencies
        })
        .collect()
}

/// The received latencies of one side, sorted.
fn sorted(latencies: &[Option<Duration>]) -> Vec<Duration> {
    let mut sorted: Vec<Duration> = latencies.iter().flatten().copied().collect();
    sorted.sort();
    sorted
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // twelfth and stime the thirteenth; both in clock ticks of 1/100 s on Linux.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

/// A measured rate and the CPU it cost per message, in the benchmark and in the server.
pub struct Measured {
    pub rate: f64,
    pub client_us: f64,
    pub server_us: f64,
}

pub async fn measured(
    server: u32,
    count: usize,
    run: impl std::future::Future<Output = f64>,
) -> Measured {
    let (client_before, server_before) = (cpu_seconds(std::process::id()), cpu_seconds(server));
    let rate = run.await;
    let per_message = |seconds: f64| seconds * 1e6 / count as f64;
    Measured {
        rate,
        client_us: per_message(cpu_seconds(std::process::id()) - client_before),
        server_us: per_message(cpu_seconds(server) - server_before),
    }
}

/// Medians over the rounds of one side.
pub fn median(mut runs: Vec<Measured>) -> Measured {
    let middle = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut rates: Vec<f64> = runs.iter().map(|run| run.rate).collect();
    let mut clients: Vec<f64> = runs.iter().map(|run| run.client_us).collect();
    let mut servers: Vec<f64> = runs.iter().map(|run| run.server_us).collect();
    runs.clear();
    Measured {
        rate: middle(&mut rates),
        client_us: middle(&mut clients),
        server_us: middle(&mut servers),
    }
}

/// Runs raw and topiq `ROUNDS` times each, alternating which goes first (the machine's
/// noise then hits both alike), and returns the median of each side.
pub async fn compare(
    server: u32,
    count: usize,
    raw: impl AsyncFn(usize) -> f64,
    topiq: impl AsyncFn(usize) -> f64,
) -> (Measured, Measured) {
    let (mut raw_runs, mut topiq_runs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            raw_runs.push(measured(server, count, raw(round)).await);
            topiq_runs.push(measured(server, count, topiq(round)).await);
        } else {
            topiq_runs.push(measured(server, count, topiq(round)).await);
            raw_runs.push(measured(server, count, raw(round)).await);
        }
        println!(
            "      round {}/{ROUNDS}: raw {:.0} msg/s, topiq {:.0} msg/s",
            round + 1,
            raw_runs[round].rate,
            topiq_runs[round].rate
        );
    }
    (median(raw_runs), median(topiq_runs))
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One latency round's two sides, and what ends the round (closing the adapter).
pub struct LatencyRound {
    pub raw: LatencySide,
    pub topiq: LatencySide,
    pub finish: BoxFuture<'static, ()>,
}

/// Latency samples of `LATENCY_ROUNDS` rounds per side, pooled per side (raw, topiq);
/// `round(name)` sets up one round on fresh names. In turn, each round runs one side after
/// the other (alternating which goes first); side by side, both publish at once, each at
/// `RATE`, so every stall of the machine lands on both.
pub async fn latency<R>(side_by_side: bool, round: R) -> Latencies
where
    R: AsyncFn(String) -> LatencyRound,
{
    let mut pooled = Latencies::default();
    let mode = if side_by_side {
        "side by side"
    } else {
        "in turn"
    };
    for n in 0..LATENCY_ROUNDS {
        let name = format!("latency{}{n}", if side_by_side { "s" } else { "t" });
        let LatencyRound { raw, topiq, finish } = round(name).await;
        let raw_first = n % 2 == 0;
        let (raw_round, topiq_round) = match (side_by_side, raw_first) {
            (true, true) => {
                let mut both = paced(&[raw, topiq]).await;
                let topiq = both.pop().unwrap();
                (both.pop().unwrap(), topiq)
            }
            (true, false) => {
                let mut both = paced(&[topiq, raw]).await;
                let raw = both.pop().unwrap();
                (raw, both.pop().unwrap())
            }
            (false, true) => {
                let raw = paced(&[raw]).await.pop().unwrap();
                (raw, paced(&[topiq]).await.pop().unwrap())
            }
            (false, false) => {
                let topiq = paced(&[topiq]).await.pop().unwrap();
                (paced(&[raw]).await.pop().unwrap(), topiq)
            }
        };
        finish.await;
        if side_by_side {
            // Message n of each side left within microseconds of the other: their difference
            // is topiq's own cost, whatever the machine or the broker did to both.
            pooled
                .pair_differences
                .extend(
                    raw_round
                        .iter()
                        .zip(&topiq_round)
                        .filter_map(|pair| match pair {
                            (Some(raw), Some(topiq)) => Some(ms(*topiq) - ms(*raw)),
                            _ => None,
                        }),
                );
        }
        let (raw_round, topiq_round) = (sorted(&raw_round), sorted(&topiq_round));
        pooled
            .round_p99_differences
            .push(ms(percentile(&topiq_round, 0.99)) - ms(percentile(&raw_round, 0.99)));
        println!(
            "      {mode} round {}/{LATENCY_ROUNDS}: p50 raw {:.3} ms, topiq {:.3} ms; p99 raw {:.3} ms, topiq {:.3} ms",
            n + 1,
            ms(percentile(&raw_round, 0.5)),
            ms(percentile(&topiq_round, 0.5)),
            ms(percentile(&raw_round, 0.99)),
            ms(percentile(&topiq_round, 0.99))
        );
        pooled.raw.extend(raw_round);
        pooled.topiq.extend(topiq_round);
    }
    pooled.raw.sort();
    pooled.topiq.sort();
    pooled.pair_differences.sort_by(f64::total_cmp);
    pooled.round_p99_differences.sort_by(f64::total_cmp);
    pooled
}

/// Every latency sample of one way of measuring, pooled over the rounds.
#[derive(Default)]
pub struct Latencies {
    pub raw: Vec<Duration>,
    pub topiq: Vec<Duration>,
    /// Side by side only: topiq's latency minus raw's for each pair of messages sent at the
    /// same moment (ms), sorted.
    pub pair_differences: Vec<f64>,
    /// Each round's p99 of topiq minus its p99 of raw (ms), sorted.
    pub round_p99_differences: Vec<f64>,
}

impl Latencies {
    /// The median over the rounds of each round's p99 difference (ms): a round where the
    /// broker paused one side's queue moves it no more than any other round.
    pub fn median_round_p99_difference(&self) -> f64 {
        let d = &self.round_p99_differences;
        if d.is_empty() {
            return f64::NAN;
        }
        let middle = d.len() / 2;
        if d.len().is_multiple_of(2) {
            (d[middle - 1] + d[middle]) / 2.0
        } else {
            d[middle]
        }
    }

    /// `+0.050 ms (-0.300 … +2.000)`: the median and the range of the rounds' p99 differences.
    fn round_p99_summary(&self) -> String {
        let d = &self.round_p99_differences;
        match (d.first(), d.last()) {
            (Some(low), Some(high)) => format!(
                "{:+.3} ms ({low:+.3} … {high:+.3})",
                self.median_round_p99_difference()
            ),
            _ => "-".to_owned(),
        }
    }
}

/// The broker on the first half of the machine's cores and this process on the other, while
/// it lives; both back on every core when dropped. On a 2-core machine the OS otherwise
/// preempts one for the other in the middle of a message, at random, and that (not either
/// client) sets the latency tail.
pub struct SeparateCores {
    broker: u32,
    all: String,
}

impl SeparateCores {
    /// Splits the cores (`taskset` on every thread of both processes); `None` on a machine
    /// with one core.
    pub fn split(broker: u32) -> Option<Self> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if cores < 2 {
            println!("      (one core: broker and benchmark share it)");
            return None;
        }
        let half = cores / 2;
        let list = |from: usize, to: usize| {
            if to - from == 1 {
                from.to_string()
            } else {
                format!("{from}-{}", to - 1)
            }
        };
        pin(broker, &list(0, half));
        pin(std::process::id(), &list(half, cores));
        println!(
            "      broker on cores {}, benchmark on cores {}",
            list(0, half),
            list(half, cores)
        );
        Some(Self {
            broker,
            all: list(0, cores),
        })
    }
}

impl Drop for SeparateCores {
    fn drop(&mut self) {
        pin(self.broker, &self.all);
        pin(std::process::id(), &self.all);
    }
}

/// Every thread of process `pid` on the cores in `list` (`0-1`).
fn pin(pid: u32, list: &str) {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", list, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("taskset (util-linux)");
    assert!(status.success(), "taskset -a -p -c {list} {pid}: {status}");
}

/// Every measure of one run, raw first in each pair.
pub struct Report {
    /// What the raw side is, for the table's header ("raw async-nats").
    pub raw_name: &'static str,
    pub concurrent: (Measured, Measured),
    pub batches: (Measured, Measured),
    pub one_at_a_time: (f64, f64),
    pub end_to_end: (Measured, Measured),
    pub side_by_side: Latencies,
    pub in_turn: Latencies,
    /// An extra raw row, for scale (label, rate).
    pub for_scale: Option<(&'static str, f64)>,
    /// Side by side with raw on both sides (two queues or streams): how far apart two
    /// identical clients land, the noise floor of the comparison above.
    pub control: Latencies,
}

impl Report {
    /// Prints the table with topiq/raw ratios, the CPU table, and whether the targets are met
    /// (throughput ≥ 0.9× raw; p99 side by side ≤ raw + 0.3 ms in the median round).
    pub fn print(&self) {
        self.print_rates_and_latencies();
        self.print_cpu();
        self.print_targets();
    }

    /// The throughput rows, then the latency rows and their per-round and control figures.
    fn print_rates_and_latencies(&self) {
        println!();
        println!("| measure | {} | topiq | topiq/raw |", self.raw_name);
        println!("|---|---:|---:|---:|");
        let row = |what: &str, raw: f64, topiq: f64| {
            println!("| {what} | {raw:.0} | {topiq:.0} | {:.2} |", topiq / raw);
        };
        row(
            "publish, 256 concurrent calls (msg/s)",
            self.concurrent.0.rate,
            self.concurrent.1.rate,
        );
        row(
            "publish, batches of 256 (msg/s)",
            self.batches.0.rate,
            self.batches.1.rate,
        );
        row(
            "publish, one at a time (msg/s)",
            self.one_at_a_time.0,
            self.one_at_a_time.1,
        );
        row(
            "end to end: publish → consume → parse → ack (msg/s)",
            self.end_to_end.0.rate,
            self.end_to_end.1.rate,
        );
        self.print_latencies();
        if let Some((label, rate)) = self.for_scale {
            println!("| for scale: {label} (msg/s) | {rate:.0} | | |");
        }
    }

    /// p50 and p99 side by side and in turn, each round's p99 difference, and the control.
    fn print_latencies(&self) {
        let latency_rows = |how: &str, raw: &[Duration], topiq: &[Duration]| {
            for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
                let (raw, topiq) = (ms(percentile(raw, p)), ms(percentile(topiq, p)));
                println!(
                    "| {name} latency at 5,000 msg/s, {how} (ms) | {raw:.3} | {topiq:.3} | {:+.3} ms |",
                    topiq - raw
                );
            }
        };
        latency_rows(
            "side by side",
            &self.side_by_side.raw,
            &self.side_by_side.topiq,
        );
        latency_rows("in turn", &self.in_turn.raw, &self.in_turn.topiq);
        for (how, latencies) in [
            ("side by side: topiq − raw", &self.side_by_side),
            ("in turn: topiq − raw", &self.in_turn),
            ("control: raw − raw, side by side", &self.control),
        ] {
            if !latencies.round_p99_differences.is_empty() {
                println!(
                    "| p99 per round, {how}, median of {} rounds (range) | | | {} |",
                    latencies.round_p99_differences.len(),
                    latencies.round_p99_summary()
                );
            }
        }
        let differences = &self.side_by_side.pair_differences;
        if !differences.is_empty() {
            let at = |p: f64| percentile(differences, p);
            println!(
                "| topiq − raw per pair of messages sent together, side by side: p50 / p99 (ms) | | | {:+.3} / {:+.3} ms |",
                at(0.5),
                at(0.99)
            );
        }
        self.print_control();
    }

    /// Raw against raw side by side: the comparison's noise floor.
    fn print_control(&self) {
        let control = &self.control;
        if !control.raw.is_empty() {
            let (first, second) = (
                ms(percentile(&control.raw, 0.99)),
                ms(percentile(&control.topiq, 0.99)),
            );
            println!(
                "| control: raw vs raw, side by side, p99 (ms) | {first:.3} | {second:.3} | {:+.3} ms |",
                second - first
            );
            let d = &control.pair_differences;
            if !d.is_empty() {
                let at = |p: f64| percentile(d, p);
                println!(
                    "| control: raw − raw per pair of messages sent together: p50 / p99 (ms) | | | {:+.3} / {:+.3} ms |",
                    at(0.5),
                    at(0.99)
                );
            }
        }
    }

    /// Client and broker CPU a message, raw and topiq.
    fn print_cpu(&self) {
        println!();
        println!("CPU per message (µs), benchmark process / broker:");
        println!();
        println!("| measure | raw client | topiq client | raw broker | topiq broker |");
        println!("|---|---:|---:|---:|---:|");
        let cpu = |what: &str, (raw, topiq): &(Measured, Measured)| {
            println!(
                "| {what} | {:.1} | {:.1} | {:.1} | {:.1} |",
                raw.client_us, topiq.client_us, raw.server_us, topiq.server_us
            );
        };
        cpu("publish, 256 concurrent calls", &self.concurrent);
        cpu("publish, batches of 256", &self.batches);
        cpu("end to end", &self.end_to_end);
    }

    /// Whether the targets are met.
    fn print_targets(&self) {
        println!();
        let throughput_met = [
            self.concurrent.1.rate / self.concurrent.0.rate,
            self.batches.1.rate / self.batches.0.rate,
            self.one_at_a_time.1 / self.one_at_a_time.0,
            self.end_to_end.1.rate / self.end_to_end.0.rate,
        ]
        .iter()
        .all(|ratio| *ratio >= 0.9);
        let latency_met = self.side_by_side.median_round_p99_difference() <= 0.3;
        println!(
            "targets: throughput ≥ 0.9× raw → {}; p99 side by side ≤ raw + 0.3 ms (median round) → {}",
            if throughput_met { "met" } else { "NOT met" },
            if latency_met { "met" } else { "NOT met" }
        );
    }
}

// The topiq side, the same code on every adapter.

/// Declares topic `name` with one trigger `t`.
pub async fn declare<A: Adapter>(adapter: &A, name: &str) -> (TopicName, SubscriptionKey) {
    let topic = TopicName::new(name).unwrap();
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("t").unwrap());
    adapter
        .declare_topic(TopicSpec::new(topic.clone()))
        .await
        .unwrap();
    adapter
        .declare_subscription(SubscriptionSpec::new(key.clone()))
        .await
        .unwrap();
    (topic, key)
}

/// topiq's RabbitMQ adapter on `url` (prefix `tq`), with topic `name` and its trigger `t`.
pub async fn rabbitmq_topiq(
    url: &str,
    name: &str,
) -> (topiq_rabbitmq::RabbitMqAdapter, TopicName, SubscriptionKey) {
    let adapter = topiq_rabbitmq::RabbitMqAdapter::connect(topiq_rabbitmq::RabbitMqConfig {
        url: url.to_owned(),
        connection: topiq_rabbitmq::ConnectionOptions {
            prefix: "tq".to_owned(),
            ..Default::default()
        },
        ..topiq_rabbitmq::RabbitMqConfig::default()
    })
    .await
    .unwrap();
    let (topic, key) = declare(&adapter, name).await;
    (adapter, topic, key)
}

/// The trigger's deliveries, `WINDOW` at most unsettled (as raw's consumer window).
pub async fn consume<A: Adapter>(
    adapter: &A,
    key: &SubscriptionKey,
) -> topiq_adapter::Subscription {
    adapter
        .consume(key, ConsumeOptions::with_prefetch(WINDOW as u32))
        .await
        .unwrap()
}

/// Keeps `WINDOW` `publish` calls in flight, the way concurrent application tasks publish
/// (the raw sides run the same loop).
pub async fn topiq_concurrent<A: Adapter + Clone>(
    adapter: &A,
    topic: &TopicName,
    count: usize,
) -> f64 {
    let started = Instant::now();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for n in 0..count {
        if in_flight.len() >= WINDOW {
            let receipt: topiq_adapter::Result<PublishReceipt> = in_flight.next().await.unwrap();
            receipt.unwrap();
        }
        let (adapter, topic) = (adapter.clone(), topic.clone());
        in_flight.push(async move { adapter.publish(&topic, NewMessage::new(payload(n))).await });
    }
    while let Some(receipt) = in_flight.next().await {
        receipt.unwrap();
    }
    rate(count, started.elapsed())
}

/// `publish_batch` with `WINDOW` messages, batch after batch.
pub async fn topiq_batches<A: Adapter>(adapter: &A, topic: &TopicName, count: usize) -> f64 {
    let started = Instant::now();
    let mut n = 0;
    while n < count {
        let batch: Vec<NewMessage> = (n..(n + WINDOW).min(count))
            .map(|i| NewMessage::new(payload(i)))
            .collect();
        n += batch.len();
        for receipt in adapter.publish_batch(topic, batch).await.unwrap() {
            receipt.unwrap();
        }
    }
    rate(count, started.elapsed())
}

/// Publishes `count` messages with [`topiq_concurrent`] while a consumer acks them (the
/// handler gets the payload as JSON already); the rate of the whole.
pub async fn topiq_end_to_end<A: Adapter + Clone>(
    adapter: &A,
    topic: &TopicName,
    key: &SubscriptionKey,
    count: usize,
) -> f64 {
    let mut subscription = consume(adapter, key).await;
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        for _ in 0..count {
            let delivery = subscription.next().await.unwrap().unwrap();
            delivery.ack().await.unwrap();
        }
    });
    topiq_concurrent(adapter, topic, count).await;
    receiving.await.unwrap();
    rate(count, started.elapsed())
}

/// topiq's side of a latency round: publishes `n` with `publish`, records receipts.
pub async fn topiq_latency_side<A: Adapter + Clone>(
    adapter: &A,
    topic: &TopicName,
    key: &SubscriptionKey,
) -> LatencySide {
    let mut subscription = consume(adapter, key).await;
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let receiving = tokio::spawn(async move {
        while let Some(Ok(delivery)) = subscription.next().await {
            let at = Instant::now();
            let n = delivery.envelope().data["n"].as_u64().unwrap() as usize;
            sink.lock().unwrap().push((n, at));
            delivery.ack().await.unwrap();
        }
    });
    let (adapter, topic) = (adapter.clone(), topic.clone());
    let publish = Box::new(move |n| {
        let (adapter, topic) = (adapter.clone(), topic.clone());
        async move {
            adapter
                .publish(&topic, NewMessage::new(payload(n)))
                .await
                .unwrap();
        }
        .boxed()
    });
    LatencySide {
        publish,
        received,
        receiving,
    }
}

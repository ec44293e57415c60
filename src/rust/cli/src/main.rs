//! rscvi-cli: train and evaluate SCVI from files, without R. Used for GPU runs on machines
//! without R and for benchmarks.
//!
//! rscvi-cli train --mtx M.mtx.gz --obs obs.tsv.gz [--features f.tsv.gz] [--genes list.txt]
//!     [--filter COL=VALUE] [--batch-key COL] [--labels-key COL] [--epochs N] [--seed S]
//!     [--batch-size B] [--device cpu|cuda|auto] [--gene-likelihood zinb|nb|poisson]
//!     [--val-every N] [--mc-samples N] [--out DIR]
//! rscvi-cli device

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::time::Instant;

use rscvi_core::backend::resolve_device;
use rscvi_core::data::{Categorical, CsrMatrix, DataSet};
use rscvi_core::infer;
use rscvi_core::metrics;
use rscvi_core::model::ScviModel;
use rscvi_core::on_device;
use rscvi_core::scvi::ScviConfig;
use rscvi_core::train::{EpochRecord, Observer, TrainConfig};

// Burn allocates a fresh buffer for every tensor op; glibc's malloc hands large buffers back
// to the kernel and page-faults them in again on every step, which cost a third of CPU time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;
/// (n_features, n_cells, (feature, cell, value) triplets).
type Triplets = (usize, usize, Vec<(usize, usize, f32)>);

fn open(path: &str) -> AnyResult<Box<dyn BufRead>> {
    let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let r: Box<dyn Read> = if path.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::new(r)))
}

/// MatrixMarket coordinate file, features x cells; returns (n_features, n_cells, triplets).
fn read_mtx(path: &str) -> AnyResult<Triplets> {
    let mut lines = open(path)?.lines();
    let mut header = String::new();
    for line in lines.by_ref() {
        let line = line?;
        if !line.starts_with('%') {
            header = line;
            break;
        }
    }
    let dims: Vec<usize> = header
        .split_whitespace()
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?;
    let mut trip = Vec::with_capacity(dims[2]);
    for line in lines {
        let line = line?;
        let mut it = line.split_whitespace();
        let (r, c, v) = (it.next(), it.next(), it.next());
        if let (Some(r), Some(c), Some(v)) = (r, c, v) {
            trip.push((
                r.parse::<usize>()? - 1,
                c.parse::<usize>()? - 1,
                v.parse::<f32>()?,
            ));
        }
    }
    Ok((dims[0], dims[1], trip))
}

fn read_tsv(path: &str) -> AnyResult<(Vec<String>, Vec<Vec<String>>)> {
    let mut lines = open(path)?.lines();
    let header: Vec<String> = lines
        .next()
        .ok_or("empty table")??
        .split('\t')
        .map(String::from)
        .collect();
    let rows = lines
        .map(|l| l.map(|l| l.split('\t').map(String::from).collect()))
        .collect::<Result<Vec<Vec<String>>, _>>()?;
    Ok((header, rows))
}

fn column(header: &[String], rows: &[Vec<String>], name: &str) -> AnyResult<Vec<String>> {
    let j = header
        .iter()
        .position(|h| h == name)
        .ok_or(format!("no column {name}"))?;
    Ok(rows.iter().map(|r| r[j].clone()).collect())
}

/// Sorted-category codes, as scvi-tools assigns them.
fn categorical(values: &[String]) -> (Categorical, Vec<String>) {
    let mut cats: Vec<String> = values.to_vec();
    cats.sort();
    cats.dedup();
    let pos: HashMap<&String, u32> = cats
        .iter()
        .enumerate()
        .map(|(i, c)| (c, i as u32))
        .collect();
    (
        Categorical {
            codes: values.iter().map(|v| pos[v]).collect(),
            n_categories: cats.len(),
        },
        cats,
    )
}

struct Args(HashMap<String, String>);
impl Args {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str())
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> AnyResult<T> {
        match self.get(k) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{k}: cannot parse {v}").into()),
            None => Ok(default),
        }
    }
}

struct Printer;
impl Observer for Printer {
    fn on_epoch(&mut self, r: &EpochRecord, done: usize, total: usize, elapsed: f64) {
        if done == 1 || done == total || done.is_multiple_of(10) {
            eprintln!(
                "epoch {done}/{total} {:.3}s/epoch elbo_train {:.2} elbo_validation {:?}",
                elapsed / done as f64,
                r.elbo_train,
                r.elbo_validation
            );
        }
    }
}

fn train_cmd(a: &Args) -> AnyResult<()> {
    let (n_feat, n_cells_all, trip) = read_mtx(a.get("mtx").ok_or("--mtx is required")?)?;
    let (header, obs) = read_tsv(a.get("obs").ok_or("--obs is required")?)?;
    let mut keep_cells: Vec<usize> = (0..n_cells_all).collect();
    if let Some(f) = a.get("filter") {
        let (col, val) = f.split_once('=').ok_or("--filter expects COL=VALUE")?;
        let c = column(&header, &obs, col)?;
        keep_cells.retain(|&i| c[i] == val);
    }
    let mut keep_genes: Vec<usize> = (0..n_feat).collect();
    if let Some(g) = a.get("genes") {
        let (_, feats) = read_tsv(a.get("features").ok_or("--genes needs --features")?)?;
        let pos: HashMap<&str, usize> = feats
            .iter()
            .enumerate()
            .map(|(i, r)| (r[0].as_str(), i))
            .collect();
        keep_genes = open(g)?
            .lines()
            .map(|l| Ok(pos[l?.trim()]))
            .collect::<AnyResult<_>>()?;
    }
    let gene_pos: HashMap<usize, usize> = keep_genes
        .iter()
        .enumerate()
        .map(|(i, &g)| (g, i))
        .collect();
    let cell_pos: HashMap<usize, usize> = keep_cells
        .iter()
        .enumerate()
        .map(|(i, &c)| (c, i))
        .collect();
    let n = keep_cells.len();
    let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    for (g, c, v) in trip {
        if let (Some(&gi), Some(&ci)) = (gene_pos.get(&g), cell_pos.get(&c)) {
            rows[ci].push((gi as u32, v));
        }
    }
    let mut indptr = vec![0];
    let (mut indices, mut values) = (vec![], vec![]);
    for r in rows.iter_mut() {
        r.sort_by_key(|e| e.0);
        indices.extend(r.iter().map(|e| e.0));
        values.extend(r.iter().map(|e| e.1));
        indptr.push(values.len());
    }
    let counts = CsrMatrix::new(n, keep_genes.len(), indptr, indices, values)?;
    let sub = |name: &str| -> AnyResult<Vec<String>> {
        let c = column(&header, &obs, name)?;
        Ok(keep_cells.iter().map(|&i| c[i].clone()).collect())
    };
    let (batch, _) = match a.get("batch-key") {
        Some(k) => categorical(&sub(k)?),
        None => (Categorical::constant(n), vec![]),
    };
    let (labels, _) = match a.get("labels-key") {
        Some(k) => categorical(&sub(k)?),
        None => (Categorical::constant(n), vec![]),
    };
    let data = DataSet::new(counts, batch, labels, vec![], vec![], None)?;
    let gene_likelihood = serde_json::from_value(serde_json::Value::String(
        a.get("gene-likelihood").unwrap_or("zinb").to_string(),
    ))?;
    let config = ScviConfig {
        n_labels: data.labels.n_categories,
        gene_likelihood,
        ..ScviConfig::new(data.n_genes(), data.batch.n_categories)
    };
    let mut model = ScviModel::new(config, &data, serde_json::Value::Null)?;
    let cfg = TrainConfig {
        max_epochs: Some(a.num("epochs", 50usize)?),
        check_val_every_n_epoch: a.num("val-every", 1usize)?,
        seed: Some(a.num("seed", 0u64)?),
        batch_size: a.num("batch-size", 128usize)?,
        ..Default::default()
    };
    let device = resolve_device(a.get("device").unwrap_or("cpu"))?;
    eprintln!(
        "{} cells x {} genes, {} batches, device {}",
        n,
        data.n_genes(),
        data.batch.n_categories,
        device.name()
    );
    let t0 = Instant::now();
    let summary = model.train(&data, &cfg, device, &mut Printer)?;
    let secs = t0.elapsed().as_secs_f64();
    let all: Vec<usize> = (0..n).collect();
    let val = model.state.split.validation.clone();
    let (rec, kl, mll, latent) = on_device!(model, device, |m, d| {
        let (rec, kl) = infer::elbo_terms(m, &data, &val, 128, d)?;
        let (rec_all, kl_all) = infer::elbo_terms(m, &data, &all, 128, d)?;
        let t = Instant::now();
        let mll = infer::marginal_ll(m, &data, &val, a.num("mc-samples", 1000usize)?, 128, d)?;
        eprintln!("marginal LL: {:.2}s", t.elapsed().as_secs_f64());
        let (lat, _, _) = infer::latent(m, &data, &all, true, 1, 128, d)?;
        ((rec, kl), (rec_all, kl_all), mll, lat)
    });
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let purity = metrics::knn_purity(&latent.values, latent.n_cols, &data.labels.codes, 15)?;
    let mixing = metrics::batch_mixing(
        &latent.values,
        latent.n_cols,
        &data.labels.codes,
        &data.batch.codes,
        15,
    )?;
    let out = serde_json::json!({
        "epochs": summary.epochs_run,
        "train_seconds": secs,
        "seconds_per_epoch": secs / summary.epochs_run.max(1) as f64,
        "elbo_validation": mean(&rec.0) + mean(&rec.1),
        "elbo_all": mean(&kl.0) + mean(&kl.1),
        "marginal_ll_validation": infer::mean_of_minibatch_means(&mll, 128),
        "knn_purity": purity,
        "batch_mixing": mixing,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    if let Some(dir) = a.get("out") {
        std::fs::create_dir_all(dir)?;
        let mut csv = String::new();
        for r in 0..latent.n_rows {
            let row: Vec<String> = latent.values[r * latent.n_cols..(r + 1) * latent.n_cols]
                .iter()
                .map(|v| v.to_string())
                .collect();
            csv.push_str(&row.join(","));
            csv.push('\n');
        }
        std::fs::write(format!("{dir}/latent.csv"), csv)?;
        std::fs::write(
            format!("{dir}/metrics.json"),
            serde_json::to_string_pretty(&out)?,
        )?;
    }
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut map = HashMap::new();
    let mut i = 1;
    while i < argv.len() {
        if let Some(k) = argv[i].strip_prefix("--") {
            map.insert(k.to_string(), argv.get(i + 1).cloned().unwrap_or_default());
            i += 2;
        } else {
            i += 1;
        }
    }
    let args = Args(map);
    let result = match argv.first().map(|s| s.as_str()) {
        Some("train") => train_cmd(&args),
        Some("device") => {
            println!(
                "cuda compiled: {}, driver: {}",
                rscvi_core::backend::cuda_compiled(),
                rscvi_core::backend::cuda_driver_available()
            );
            Ok(())
        }
        _ => Err("usage: rscvi-cli <train|device> [--options]; see the source header".into()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

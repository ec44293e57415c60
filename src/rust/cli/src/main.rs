//! rscvi-cli: train and evaluate SCVI from files, without R. Used for GPU runs on machines
//! without R and for benchmarks.
//!
//! rscvi-cli train --mtx M.mtx.gz --obs obs.tsv.gz [--features f.tsv.gz] [--genes list.txt]
//!     [--filter COL=VALUE] [--batch-key COL] [--labels-key COL] [--epochs N] [--seed S]
//!     [--batch-size B] [--device cpu|cuda|auto] [--gene-likelihood zinb|nb|poisson]
//!     [--val-every N] [--mc-samples N] [--devices N] [--out DIR]
//! rscvi-cli synth (the train data options, as --source-*) --cells N [--source-epochs E]
//!     [--seed S] --out DIR      synthetic dataset drawn from a model fitted on the source
//! rscvi-cli bench --data DIR [--max-cells N] [--epochs E] [--batch-size B] [--device D]
//!     [--devices N] [--out DIR]
//! rscvi-cli gpu-check --cellbench DIR [--multivi DIR] [--splicevi DIR] [--family-epochs E]
//!     [--out DIR]    parity + CPU-vs-CUDA training check (DIRs: bench/gpu/export_small.R)
//! rscvi-cli device

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::time::Instant;

mod npy;

use std::path::Path;

use rscvi_core::backend::resolve_device;
use rscvi_core::data::{Categorical, CsrMatrix, DataSet};
use rscvi_core::infer;
use rscvi_core::metrics;
use rscvi_core::models::scvi::synth;
use rscvi_core::models::scvi::ScviConfig;
use rscvi_core::models::scvi::{queries, ScviModel};
use rscvi_core::on_device;
use rscvi_core::train::{EpochRecord, Observer, TrainConfig};

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

/// The data named by --mtx/--obs/--features/--genes/--filter/--batch-key/--labels-key.
fn load_data(a: &Args) -> AnyResult<DataSet> {
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
    Ok(DataSet::new(counts, batch, labels, vec![], vec![], vec![])?)
}

fn train_cmd(a: &Args) -> AnyResult<()> {
    let data = load_data(a)?;
    let n = data.n_cells();
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
        devices: a.num("devices", 1usize)?,
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
    let summary = model.train(&[&data], &cfg, device, &mut Printer)?;
    let secs = t0.elapsed().as_secs_f64();
    let all: Vec<usize> = (0..n).collect();
    let val = model.state.splits[0].validation.clone();
    let (rec, kl, mll, latent) = on_device!(model, device, |m, d| {
        let val_terms = infer::elbo_terms(m, 0, &data, &val, 128, d)?;
        let (rec, kl) = (val_terms.reconstruction, val_terms.kl_local);
        let all_terms = infer::elbo_terms(m, 0, &data, &all, 128, d)?;
        let (rec_all, kl_all) = (all_terms.reconstruction, all_terms.kl_local);
        let t = Instant::now();
        let mll = queries::marginal_ll(m, &data, &val, a.num("mc-samples", 1000usize)?, 128, d)?;
        eprintln!("marginal LL: {:.2}s", t.elapsed().as_secs_f64());
        let (lat, _, _) = infer::latent(m, 0, &data, &all, true, 1, 128, d)?;
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
        "marginal_ll_validation": queries::mean_of_minibatch_means(&mll, 128),
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

/// Fits SCVI on the source data, then writes a synthetic dataset of --cells cells.
fn synth_cmd(a: &Args) -> AnyResult<()> {
    let mut src = HashMap::new();
    for k in [
        "mtx",
        "obs",
        "features",
        "genes",
        "filter",
        "batch-key",
        "labels-key",
    ] {
        if let Some(v) = a.get(&format!("source-{k}")).or_else(|| a.get(k)) {
            src.insert(k.to_string(), v.to_string());
        }
    }
    let data = load_data(&Args(src))?;
    let config = ScviConfig::new(data.n_genes(), data.batch.n_categories);
    let mut model = ScviModel::new(config, &data, serde_json::Value::Null)?;
    let cfg = TrainConfig {
        max_epochs: Some(a.num("source-epochs", 100usize)?),
        seed: Some(a.num("seed", 0u64)?),
        check_val_every_n_epoch: 0,
        ..Default::default()
    };
    model.train(
        &[&data],
        &cfg,
        rscvi_core::backend::DeviceKind::Cpu,
        &mut Printer,
    )?;
    let n = a.num("cells", 10_000usize)?;
    let t = Instant::now();
    let (counts, batch) = synth::sample(&model, n, a.num("seed", 0u64)?)?;
    let dir = Path::new(a.get("out").ok_or("--out is required")?);
    std::fs::create_dir_all(dir)?;
    npy::write(
        &dir.join("indptr.npy"),
        &counts.indptr.iter().map(|&v| v as i64).collect::<Vec<_>>(),
    )?;
    npy::write(
        &dir.join("indices.npy"),
        &counts.indices.iter().map(|&v| v as i32).collect::<Vec<_>>(),
    )?;
    npy::write(&dir.join("data.npy"), &counts.values)?;
    npy::write(
        &dir.join("batch.npy"),
        &batch.iter().map(|&v| v as i32).collect::<Vec<_>>(),
    )?;
    let meta = serde_json::json!({
        "n_cells": n, "n_genes": counts.n_cols, "n_batch": data.batch.n_categories,
        "nnz": counts.values.len(), "seconds": t.elapsed().as_secs_f64(),
    });
    std::fs::write(dir.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    println!("{meta}");
    Ok(())
}

/// The synthetic dataset in `dir`, or its first `max_cells` cells (a CSR row prefix).
fn read_synthetic(dir: &Path, max_cells: Option<usize>) -> AnyResult<DataSet> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)?;
    let get = |k: &str| {
        meta[k]
            .as_u64()
            .map(|v| v as usize)
            .ok_or(format!("meta.json lacks {k}"))
    };
    let (n, g, nb) = (get("n_cells")?, get("n_genes")?, get("n_batch")?);
    let n = max_cells.map_or(n, |m| m.min(n));
    let indptr: Vec<usize> = npy::read_prefix::<i64>(&dir.join("indptr.npy"), Some(n + 1))?
        .into_iter()
        .map(|v| v as usize)
        .collect();
    let nnz = *indptr.last().ok_or("indptr.npy is empty")?;
    let indices: Vec<u32> = npy::read_prefix::<i32>(&dir.join("indices.npy"), Some(nnz))?
        .into_iter()
        .map(|v| v as u32)
        .collect();
    let values = npy::read_prefix::<f32>(&dir.join("data.npy"), Some(nnz))?;
    let batch: Vec<u32> = npy::read_prefix::<i32>(&dir.join("batch.npy"), Some(n))?
        .into_iter()
        .map(|v| v as u32)
        .collect();
    let counts = CsrMatrix::new(n, g, indptr, indices, values)?;
    let batch = Categorical {
        codes: batch,
        n_categories: nb,
    };
    Ok(DataSet::with_batches(counts, batch)?)
}

/// Times SCVI training on a synthetic dataset (validation only after the last epoch).
fn bench_cmd(a: &Args) -> AnyResult<()> {
    let dir = Path::new(a.get("data").ok_or("--data is required")?);
    let max_cells = a
        .get("max-cells")
        .map(|_| a.num("max-cells", 0usize))
        .transpose()?;
    let data = read_synthetic(dir, max_cells)?;
    let device = resolve_device(a.get("device").unwrap_or("auto"))?;
    let epochs = a.num("epochs", 5usize)?;
    let batch_size = a.num("batch-size", 128usize)?;
    let config = ScviConfig::new(data.n_genes(), data.batch.n_categories);
    let mut model = ScviModel::new(config, &data, serde_json::Value::Null)?;
    let cfg = TrainConfig {
        max_epochs: Some(epochs),
        batch_size,
        seed: Some(a.num("seed", 0u64)?),
        check_val_every_n_epoch: epochs,
        devices: a.num("devices", 1usize)?,
        ..Default::default()
    };
    let t = Instant::now();
    let summary = model.train(&[&data], &cfg, device, &mut Printer)?;
    let total = t.elapsed().as_secs_f64();
    let h = &model.state.history;
    let epoch_seconds: Vec<f64> = h.iter().map(|r| r.seconds).collect();
    // The first epoch includes uploads and kernel compilation: report the rest too.
    let steady = if epoch_seconds.len() > 1 {
        epoch_seconds[1..].iter().sum::<f64>() / (epoch_seconds.len() - 1) as f64
    } else {
        total
    };
    let out = serde_json::json!({
        "n_cells": data.n_cells(), "n_genes": data.n_genes(), "batch_size": batch_size,
        "device": device.name(), "devices": cfg.devices,
        "n_parameters": model.n_parameters(),
        "epochs": summary.epochs_run,
        "seconds_total": total, "seconds_per_epoch": total / summary.epochs_run.max(1) as f64,
        "seconds_per_epoch_after_first": steady, "epoch_seconds": epoch_seconds,
        "elbo_train_last": h.last().map(|r| r.elbo_train),
        "elbo_validation": h.last().and_then(|r| r.elbo_validation),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    if let Some(o) = a.get("out") {
        std::fs::create_dir_all(o)?;
        std::fs::write(
            Path::new(o).join("metrics.json"),
            serde_json::to_string_pretty(&out)?,
        )?;
    }
    Ok(())
}

/// On a CUDA build: the parity vectors on the GPU backend, then SCVI on cellbench trained on
/// the CPU and on the GPU with the same seed; the validation ELBOs must agree within 1%.
fn gpu_check_cmd(a: &Args) -> AnyResult<()> {
    #[cfg(not(feature = "cuda"))]
    {
        let _ = a;
        Err("rscvi-cli was built without the cuda feature".into())
    }
    #[cfg(feature = "cuda")]
    {
        let device = resolve_device("cuda")?;
        let checks = rscvi_core::parity::check_tensor_likelihoods::<rscvi_core::backend::Gpu>(
            &Default::default(),
        );
        let parity_ok = checks.iter().all(|c| c.ok);
        // Written after every part, so that a run cut short keeps what it finished.
        let save = |out: &serde_json::Value| -> AnyResult<()> {
            if let Some(o) = a.get("out") {
                std::fs::create_dir_all(o)?;
                std::fs::write(
                    Path::new(o).join("gpu-check.json"),
                    serde_json::to_string_pretty(out)?,
                )?;
            }
            Ok(())
        };
        save(&serde_json::json!({"parity_ok": parity_ok, "parity": checks}))?;
        let dir = a.get("cellbench").ok_or("--cellbench DIR is required")?;
        let mut src = HashMap::new();
        for (k, v) in [
            ("mtx", format!("{dir}/matrix.mtx.gz")),
            ("obs", format!("{dir}/obs.tsv.gz")),
            ("features", format!("{dir}/features.tsv.gz")),
            ("genes", format!("{dir}/hvg2000.txt")),
            ("filter", "demuxlet_cls=SNG".into()),
            ("batch-key", "batch".into()),
            ("labels-key", "cell_line".into()),
        ] {
            src.insert(k.to_string(), v);
        }
        let data = load_data(&Args(src))?;
        let epochs = a.num("epochs", 50usize)?;
        let mut elbo = Vec::new();
        for kind in [rscvi_core::backend::DeviceKind::Cpu, device] {
            let config = ScviConfig::new(data.n_genes(), data.batch.n_categories);
            let mut model = ScviModel::new(config, &data, serde_json::Value::Null)?;
            let cfg = TrainConfig {
                max_epochs: Some(epochs),
                seed: Some(0),
                ..Default::default()
            };
            let t = Instant::now();
            model.train(&[&data], &cfg, kind, &mut Printer)?;
            let secs = t.elapsed().as_secs_f64();
            let val = model.state.splits[0].validation.clone();
            let t = on_device!(model, kind, |m, d| infer::elbo_terms(
                m, 0, &data, &val, 128, d
            )?);
            let (rec, kl) = (t.reconstruction, t.kl_local);
            let v = (rec.iter().sum::<f64>() + kl.iter().sum::<f64>()) / val.len() as f64;
            elbo.push((kind.name(), v, secs));
        }
        let rel = (elbo[1].1 - elbo[0].1).abs() / elbo[0].1;
        let mut out = serde_json::json!({
            "parity_ok": parity_ok, "parity": checks,
            "cellbench_epochs": epochs,
            "elbo_validation": elbo.iter().map(|(k, v, s)| serde_json::json!({"device": k, "elbo_validation": v, "train_seconds": s})).collect::<Vec<_>>(),
            "relative_difference": rel, "within_1_percent": rel <= 0.01,
        });
        save(&out)?;
        let mut others_ok = true;
        let family_epochs = a.num("family-epochs", 30usize)?;
        if let Some(dir) = a.get("multivi") {
            let (data, n_genes) = family_data(dir)?;
            let config = rscvi_core::models::multivi::MultiviConfig::new(
                n_genes,
                data.n_genes() - n_genes,
                data.batch.n_categories,
            );
            let make = || {
                rscvi_core::models::multivi::MultiviModel::new(
                    config.clone(),
                    &data,
                    serde_json::Value::Null,
                )
            };
            let r = cpu_and_cuda(make, &data, family_epochs, device)?;
            others_ok &= r["within_1_percent"] == true;
            out["multivi"] = r;
            save(&out)?;
        }
        if let Some(dir) = a.get("splicevi") {
            let (data, n_genes) = family_data(dir)?;
            let atse: Vec<u32> = std::fs::read_to_string(format!("{dir}/atse.txt"))?
                .lines()
                .map(|l| l.trim().parse())
                .collect::<Result<_, _>>()?;
            let config = rscvi_core::models::splicevi::SpliceviConfig::new(
                n_genes,
                atse,
                data.batch.n_categories,
            );
            let make = || {
                rscvi_core::models::splicevi::SpliceviModel::new(
                    config.clone(),
                    &data,
                    serde_json::Value::Null,
                )
            };
            let r = cpu_and_cuda(make, &data, family_epochs, device)?;
            others_ok &= r["within_1_percent"] == true;
            out["splicevi"] = r;
            save(&out)?;
        }
        // A diverging run on the GPU (reads of the loss are deferred there) must still end
        // in the non-finite error, keeping the last completed epoch's weights.
        let diverging = TrainConfig {
            max_epochs: Some(5),
            seed: Some(0),
            lr: 1e4,
            ..Default::default()
        };
        let mut model = ScviModel::new(
            ScviConfig::new(data.n_genes(), data.batch.n_categories),
            &data,
            serde_json::Value::Null,
        )?;
        let outcome = match model.train(&[&data], &diverging, device, &mut Printer) {
            Ok(_) => "trained without a non-finite loss (inconclusive)".to_string(),
            Err(e) => e.to_string(),
        };
        out["non_finite_on_gpu"] = serde_json::json!({
            "lr": 1e4, "outcome": outcome, "epochs_kept": model.state.history.len(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        save(&out)?;
        if parity_ok && rel <= 0.01 && others_ok {
            Ok(())
        } else {
            Err("gpu-check failed".into())
        }
    }
}

/// A model-family dataset written by bench/gpu/export_small.R: the counts (genes first) with
/// `library` as the batch, and the number of genes.
#[cfg(feature = "cuda")]
fn family_data(dir: &str) -> AnyResult<(DataSet, usize)> {
    let mut src = HashMap::new();
    src.insert("mtx".to_string(), format!("{dir}/matrix.mtx.gz"));
    src.insert("obs".to_string(), format!("{dir}/obs.tsv.gz"));
    src.insert("batch-key".to_string(), "library".to_string());
    let data = load_data(&Args(src))?;
    let n_genes = std::fs::read_to_string(format!("{dir}/n_genes.txt"))?
        .trim()
        .parse()?;
    Ok((data, n_genes))
}

/// Trains a model made by `make` on the CPU and on `gpu` with the same seed: the last
/// validation ELBOs of the two runs, and whether they agree within 1%.
#[cfg(feature = "cuda")]
fn cpu_and_cuda<K: rscvi_core::family::TrainableEverywhere>(
    make: impl Fn() -> rscvi_core::Result<rscvi_core::family::Model<K>>,
    data: &DataSet,
    epochs: usize,
    gpu: rscvi_core::backend::DeviceKind,
) -> AnyResult<serde_json::Value> {
    let mut runs = Vec::new();
    for kind in [rscvi_core::backend::DeviceKind::Cpu, gpu] {
        let mut model = make()?;
        let cfg = TrainConfig {
            max_epochs: Some(epochs),
            seed: Some(0),
            ..Default::default()
        };
        let t = Instant::now();
        model.train(&[data], &cfg, kind, &mut Printer)?;
        let secs = t.elapsed().as_secs_f64();
        let last = model.state.history.last().ok_or("no epoch ran")?;
        let elbo = last.elbo_validation.ok_or("no validation ELBO")?;
        runs.push(serde_json::json!({
            "device": kind.name(), "elbo_validation": elbo, "train_seconds": secs,
        }));
    }
    let v = |i: usize| runs[i]["elbo_validation"].as_f64().unwrap_or(f64::NAN);
    let rel = (v(1) - v(0)).abs() / v(0).abs();
    Ok(serde_json::json!({
        "epochs": epochs, "n_cells": data.n_cells(), "runs": runs,
        "relative_difference": rel, "within_1_percent": rel <= 0.01,
    }))
}

fn main() {
    rscvi_core::alloc::tune_allocator();
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
        Some("synth") => synth_cmd(&args),
        Some("bench") => bench_cmd(&args),
        Some("gpu-check") => gpu_check_cmd(&args),
        Some("device") => {
            println!(
                "cuda compiled: {}, driver: {}",
                rscvi_core::backend::cuda_compiled(),
                rscvi_core::backend::cuda_driver_available()
            );
            Ok(())
        }
        _ => Err("usage: rscvi-cli <train|synth|bench|gpu-check|device> [--options]; see the source header".into()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

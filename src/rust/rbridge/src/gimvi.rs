//! extendr glue of GIMVI: model handles over two data sets (0 = sequencing, 1 = spatial).

use std::path::Path;

use extendr_api::prelude::*;
use extendr_api::Result;
use rscvi_core::backend::resolve_device;
use rscvi_core::data::DataSet;
use rscvi_core::gimvi::{self, GimviConfig};
use rscvi_core::gimvi_model::GimviModel;
use rscvi_core::train::TrainConfig;

use crate::{dataset, guarded, history_list, indices, matrix, other, summary_list, RProgress};

fn gimvi_ref(m: &Robj) -> Result<&GimviModel> {
    let p: &ExternalPtr<GimviModel> = m
        .try_into()
        .map_err(|_| other("invalid GIMVI model handle"))?;
    p.try_addr().map_err(|_| {
        other("the model handle is no longer valid (save models with save_model() and restore them with load_model())")
    })
}

fn gimvi_mut(m: &mut Robj) -> Result<&mut GimviModel> {
    let p: &mut ExternalPtr<GimviModel> = m
        .try_into()
        .map_err(|_| other("invalid GIMVI model handle"))?;
    p.try_addr_mut()
        .map_err(|_| other("the model handle is no longer valid"))
}

fn pair<'a>(seq: &'a Robj, spatial: &'a Robj) -> Result<[&'a DataSet; 2]> {
    Ok([dataset(seq)?, dataset(spatial)?])
}

fn which_dataset(i: i32) -> Result<usize> {
    match i {
        0 | 1 => Ok(i as usize),
        _ => Err(other("internal: dataset must be 0 (seq) or 1 (spatial)")),
    }
}

#[extendr]
fn rs_gimvi_new(seq: Robj, spatial: Robj, config_json: &str, registry_json: &str) -> Result<Robj> {
    let data = pair(&seq, &spatial)?;
    let config: GimviConfig = serde_json::from_str(config_json)
        .map_err(|e| other(format!("internal: bad model config: {e}")))?;
    let registry: serde_json::Value = serde_json::from_str(registry_json)
        .map_err(|e| other(format!("internal: bad registry: {e}")))?;
    let model = guarded(|| GimviModel::new(config, data, registry))?;
    Ok(ExternalPtr::new(model).into())
}

#[extendr]
fn rs_gimvi_train(
    mut model: Robj,
    seq: Robj,
    spatial: Robj,
    train_json: &str,
    kappa: f64,
    device: &str,
    progress: bool,
) -> Result<Robj> {
    let data = pair(&seq, &spatial)?;
    let cfg: TrainConfig = serde_json::from_str(train_json)
        .map_err(|e| other(format!("internal: bad train config: {e}")))?;
    let m = gimvi_mut(&mut model)?;
    let mut observer = RProgress::new(progress);
    let summary = guarded(|| {
        let kind = resolve_device(device)?;
        m.train(data, &cfg, kappa, kind, &mut observer)
    });
    observer.finish(summary.is_err());
    Ok(summary_list(&summary?))
}

#[extendr]
fn rs_gimvi_history(model: Robj) -> Result<Robj> {
    Ok(history_list(&gimvi_ref(&model)?.state.history))
}

#[extendr]
fn rs_gimvi_state(model: Robj) -> Result<Robj> {
    let m = gimvi_ref(&model)?;
    let one_based = |v: &Vec<usize>| v.iter().map(|&i| i as i32 + 1).collect::<Vec<i32>>();
    let split = |i: usize| {
        let s = &m.state.splits[i];
        list!(
            train = one_based(&s.train),
            validation = one_based(&s.validation),
            test = one_based(&s.test)
        )
    };
    Ok(list!(
        is_trained = m.state.is_trained,
        seq = split(0),
        spatial = split(1),
        config = serde_json::to_string(m.config()).unwrap_or_default(),
        registry = m.registry.to_string()
    )
    .into())
}

#[extendr]
fn rs_gimvi_latent(
    model: Robj,
    which: i32,
    ds: Robj,
    idx: Robj,
    deterministic: bool,
    batch_size: i32,
) -> Result<Robj> {
    let (m, data, i) = (gimvi_ref(&model)?, dataset(&ds)?, which_dataset(which)?);
    let cells = indices(&idx, data.n_cells())?;
    let z = guarded(|| {
        gimvi::latent(
            &m.module,
            i,
            data,
            &cells,
            deterministic,
            batch_size.max(1) as usize,
            &Default::default(),
        )
    })?;
    Ok(matrix(&z, cells.len(), m.config().n_latent))
}

/// `decode_mode` < 0: the dataset's own mode.
#[extendr]
#[allow(clippy::too_many_arguments)]
fn rs_gimvi_imputed(
    model: Robj,
    which: i32,
    ds: Robj,
    idx: Robj,
    deterministic: bool,
    normalized: bool,
    decode_mode: i32,
    batch_size: i32,
) -> Result<Robj> {
    let (m, data, i) = (gimvi_ref(&model)?, dataset(&ds)?, which_dataset(which)?);
    let cells = indices(&idx, data.n_cells())?;
    let mode = if decode_mode < 0 {
        None
    } else {
        Some(which_dataset(decode_mode)?)
    };
    let v = guarded(|| {
        gimvi::imputed_values(
            &m.module,
            i,
            data,
            &cells,
            deterministic,
            normalized,
            mode,
            batch_size.max(1) as usize,
            &Default::default(),
        )
    })?;
    Ok(matrix(&v, cells.len(), m.config().n_genes))
}

#[extendr]
fn rs_gimvi_save(model: Robj, dir: &str, overwrite: bool) -> Result<Robj> {
    let m = gimvi_ref(&model)?;
    guarded(|| m.save(Path::new(dir), overwrite))?;
    Ok(().into())
}

#[extendr]
fn rs_gimvi_load(dir: &str) -> Result<Robj> {
    let m = guarded(|| GimviModel::load(Path::new(dir)))?;
    Ok(ExternalPtr::new(m).into())
}

extendr_module! {
    mod gimvi;
    fn rs_gimvi_new;
    fn rs_gimvi_train;
    fn rs_gimvi_history;
    fn rs_gimvi_state;
    fn rs_gimvi_latent;
    fn rs_gimvi_imputed;
    fn rs_gimvi_save;
    fn rs_gimvi_load;
}

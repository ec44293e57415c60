//! MULTIVI in the family: its minibatches (expression and accessibility columns of one
//! dataset), its step loss, the batch classifier of its adversarial training plan (§6.2), its
//! expression head for normalized expression and DE, and the model handle's constructor.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::backend::Cpu;
use crate::data::batch::host;
use crate::data::DataSet;
use crate::error::{invalid_arg, Result};
use crate::family::arches::FreezeSpec;
use crate::family::{
    Adversary, ClassifierOptimizer, Expression, ExpressionModule, FamilyModule, Head,
    LatentPosterior, Model, ModelKind, StepLoss, Terms, TrainPlan,
};
use crate::infer::{check_query, posterior_latent, LatentRequest, Matrix};
use crate::models::multivi::arches;
use crate::models::multivi::{
    check_data, default_n_hidden, default_n_latent, Multivae, MultiviBatch, MultiviConfig,
    MultiviInference,
};
use crate::train::grad::GradRule;
use crate::train::TrainConfig;
use serde::{Deserialize, Serialize};

/// Default number of epochs of `MULTIVI.train`.
pub const DEFAULT_MAX_EPOCHS: usize = 500;

/// The MULTIVI model kind.
pub struct MultiviKind;

/// What a MULTIVI model keeps beside its module: for a scArches query model, what trains.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MultiviExtra {
    pub freeze: Option<FreezeSpec>,
}

pub type MultiviModel = Model<MultiviKind>;

impl<B: Backend> FamilyModule<B> for Multivae<B> {
    type Config = MultiviConfig;
    type Batch = MultiviBatch<B>;

    fn config(&self) -> &MultiviConfig {
        &self.config
    }

    fn minibatch(
        config: &MultiviConfig,
        _dataset: usize,
        data: &DataSet,
        cells: &[usize],
        device: &B::Device,
    ) -> MultiviBatch<B> {
        MultiviBatch::new(config, data, cells, None, device)
    }

    fn check_query_data(config: &MultiviConfig, _dataset: usize, data: &DataSet) -> Result<()> {
        check_data(config, data)
    }

    fn n_latent(&self) -> usize {
        self.config.n_latent
    }

    /// The joint posterior (modality-specific latents are separate queries).
    fn latent_posterior(&self, batch: &MultiviBatch<B>) -> LatentPosterior<B> {
        let inf = self.inference(batch, false);
        LatentPosterior {
            mean: inf.qz_mean,
            var: inf.qz_var,
            z: inf.z,
        }
    }

    fn transform_latent(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        Multivae::transform_latent(self, z)
    }

    fn latent_is_transformed(&self) -> bool {
        self.config.latent_distribution == crate::models::options::LatentDistribution::Ln
    }

    fn step_loss(
        &self,
        batches: &[MultiviBatch<B>],
        kl_weight: f64,
        training: bool,
    ) -> StepLoss<B> {
        let b = batches.first().expect("a training step has a minibatch");
        let t = self.loss(b, kl_weight, training);
        let terms = Terms {
            loss_mean: t.loss,
            reconstruction: t.reconstruction,
            reconstruction_by_modality: t.reconstruction_by_modality,
            kl_local: t.kl_z + t.penalty,
            n_cells: b.n_cells,
        };
        StepLoss::single(terms, Some(t.z), t.sparse_inputs)
    }

    fn adversarial_classes(&self, batches: &[MultiviBatch<B>]) -> Vec<usize> {
        batches
            .iter()
            .flat_map(|b| b.batch_codes.iter().copied())
            .collect()
    }
}

impl<B: Backend> ExpressionModule<B> for Multivae<B> {
    type Pass = MultiviInference<B>;

    fn n_batch(&self) -> usize {
        self.config.n_batch
    }

    fn head_columns(&self, head: Head) -> Option<std::ops::Range<usize>> {
        let (g, r) = (self.config.n_genes, self.config.n_regions);
        match head {
            Head::Expression => (g > 0).then_some(0..g),
            Head::Accessibility => (r > 0).then_some(g..g + r),
            Head::Splicing | Head::SplicingPosterior => None,
        }
    }

    fn expression_minibatch(
        config: &MultiviConfig,
        data: &DataSet,
        cells: &[usize],
        transform_batch: Option<u32>,
        device: &B::Device,
    ) -> MultiviBatch<B> {
        MultiviBatch::new(config, data, cells, transform_batch, device)
    }

    fn expression_pass(&self, batch: &MultiviBatch<B>) -> MultiviInference<B> {
        self.inference(batch, false)
    }

    /// Expression: ρ from the posterior mean (the reference's `use_z_mean = True`), so every
    /// draw is the same and drawing rows picks cells with replacement; accessibility: p
    /// from draw `k` of the joint posterior, without the accessibility and region factors
    /// (the reference's DA model function, multivi.md §7).
    fn expression_draw(
        &self,
        batch: &MultiviBatch<B>,
        pass: &MultiviInference<B>,
        k: usize,
        _resample_library: bool,
        head: Head,
    ) -> Expression<B> {
        let z = match (head, k) {
            (Head::Accessibility, 0) => pass.z.clone(),
            (Head::Accessibility, _) => {
                self.transform_latent(crate::nn::resample(&pass.qz_mean, &pass.qz_var))
            }
            _ => pass.qz_mean.clone(),
        };
        let gen = self.generative(batch, z, false);
        let empty = || Tensor::zeros([batch.n_cells, 0], &batch.masks.device());
        match head {
            Head::Expression | Head::Splicing | Head::SplicingPosterior => {
                let scale = gen
                    .expression_logits
                    .map_or_else(empty, |l| self.expression_scale(l));
                let rate = scale.clone() * pass.library_expression.clone().exp();
                Expression { scale, rate }
            }
            Head::Accessibility => {
                let p = gen
                    .accessibility_logits
                    .map_or_else(empty, burn::tensor::activation::sigmoid);
                Expression {
                    scale: p.clone(),
                    rate: p,
                }
            }
        }
    }
}

impl ModelKind for MultiviKind {
    const NAME: &'static str = "MULTIVI";
    type Config = MultiviConfig;
    type Module<B: Backend> = Multivae<B>;
    type Extra = MultiviExtra;

    fn blank<B: Backend>(c: &MultiviConfig, device: &B::Device) -> Result<Multivae<B>> {
        Multivae::new(c.clone(), device)
    }

    fn check_data(config: &MultiviConfig, data: &[&DataSet]) -> Result<()> {
        match data {
            [d] => check_data(config, d),
            _ => Err(invalid_arg("x", "MULTIVI trains on one dataset")),
        }
    }

    fn restore(module: Multivae<Cpu>, extra: &MultiviExtra) -> Multivae<Cpu> {
        match &extra.freeze {
            Some(f) => arches::apply_module_freeze(module, f),
            None => module,
        }
    }

    fn grad_rules<B: burn::tensor::backend::AutodiffBackend>(
        module: &Multivae<B>,
        extra: &MultiviExtra,
    ) -> Vec<GradRule<B::InnerBackend>> {
        extra
            .freeze
            .as_ref()
            .map(|f| arches::grad_rules(module, f))
            .unwrap_or_default()
    }

    /// §6.1–6.2: the batch classifier (absent with one batch), κ = 1, its own Adam.
    fn plan(config: &MultiviConfig, _data: &[&DataSet], cfg: &TrainConfig) -> Result<TrainPlan> {
        let adversary = (config.n_batch > 1).then(|| Adversary {
            n_latent: config.n_latent,
            n_classes: config.n_batch,
            n_layers: 2,
            scale: cfg.kappa.unwrap_or(1.0),
            optimizer: Some(ClassifierOptimizer {
                lr: 1e-3,
                eps: 0.01,
                weight_decay: cfg.weight_decay,
            }),
        });
        Ok(TrainPlan {
            default_max_epochs: DEFAULT_MAX_EPOCHS,
            adversary,
        })
    }
}

impl Model<MultiviKind> {
    /// `config.n_hidden` / `n_latent` of 0 take scvi-tools' rule (§2).
    pub fn new(
        mut config: MultiviConfig,
        data: &DataSet,
        registry: serde_json::Value,
    ) -> Result<Self> {
        config.n_cells = data.n_cells();
        if config.n_hidden == 0 {
            config.n_hidden = default_n_hidden(config.n_genes, config.n_regions);
        }
        if config.n_latent == 0 {
            config.n_latent = default_n_latent(config.n_hidden);
        }
        check_data(&config, data)?;
        let module = Multivae::<Cpu>::new(config, &Default::default())?;
        Ok(Self::from_module(module, registry, MultiviExtra::default()))
    }

    /// A scArches query model for `data`: `config` has the query's (extended) category
    /// counts; weights come from `reference`, grown where categories were added; `freeze`
    /// says what trains.
    pub fn for_query(
        reference: &MultiviModel,
        config: MultiviConfig,
        data: &DataSet,
        registry: serde_json::Value,
        freeze: FreezeSpec,
    ) -> Result<Self> {
        let fresh = Self::new(config, data, registry)?;
        let module = arches::transfer_weights(&reference.module, fresh.module)?;
        let module = arches::apply_module_freeze(module, &freeze);
        let extra = MultiviExtra {
            freeze: Some(freeze),
        };
        Ok(Self::from_module(module, fresh.registry, extra))
    }
}

/// A modality of MULTIVI's latent queries (§7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modality {
    Joint,
    Expression,
    Accessibility,
    Protein,
}

/// Latent representation of `cells` for `modality`: the joint posterior, or one modality's
/// own encoder (refused for a fully paired model). (representation, mean, variance).
#[allow(clippy::too_many_arguments)]
pub fn modality_latent<B: Backend>(
    module: &Multivae<B>,
    data: &DataSet,
    cells: &[usize],
    modality: Modality,
    give_mean: bool,
    batch_size: usize,
    device: &B::Device,
) -> Result<(Matrix, Matrix, Matrix)> {
    let m = match modality {
        Modality::Joint => {
            return crate::infer::latent(module, 0, data, cells, give_mean, 1, batch_size, device)
        }
        Modality::Expression => 0,
        Modality::Accessibility => 1,
        Modality::Protein if module.config.n_proteins == 0 => {
            return Err(invalid_arg(
                "modality",
                "\"protein\": the model has no proteins",
            ))
        }
        Modality::Protein => 2,
    };
    if module.config.fully_paired {
        return Err(invalid_arg(
            "modality",
            "must be \"joint\" for a model built with fully_paired = TRUE",
        ));
    }
    let request = LatentRequest {
        dataset: 0,
        cells,
        give_mean,
        mc_samples: 1,
        batch_size,
        width: module.config.n_latent,
    };
    posterior_latent(module, data, &request, device, |b| {
        let inf = module.inference(b, false);
        let [mean, var, z] = [inf.qz_m, inf.qz_v, inf.z_m].map(|t| t[m].clone());
        LatentPosterior { mean, var, z }
    })
}

/// Options of [`normalized_accessibility`] (the reference's defaults: observed batch, the
/// posterior mean, no cell or region normalisation).
pub struct AccessibilityQuery<'a> {
    pub cells: &'a [usize],
    pub transform_batch: Option<u32>,
    pub regions: Option<&'a [usize]>,
    pub use_z_mean: bool,
    /// Multiply by the cell's accessibility factor d.
    pub normalize_cells: bool,
    /// Multiply by the region factors σ(r).
    pub normalize_regions: bool,
    pub batch_size: usize,
}

/// Probability that each region is accessible in each cell (§7), cells x regions.
pub fn normalized_accessibility<B: Backend>(
    module: &Multivae<B>,
    data: &DataSet,
    q: &AccessibilityQuery,
    device: &B::Device,
) -> Result<Matrix> {
    check_query(module, 0, data, q.cells, q.batch_size)?;
    let r = module.config.n_regions;
    if r == 0 {
        return Err(invalid_arg("model", "has no accessibility data"));
    }
    check_transform_batches(module, q.transform_batch)?;
    let (n_cols, index) = selected_columns::<B>(q.regions, r, device);
    let mut values = Vec::with_capacity(q.cells.len() * n_cols);
    for (done, chunk) in q.cells.chunks(q.batch_size).enumerate() {
        crate::interrupt::step(done, q.cells.len().div_ceil(q.batch_size))?;
        // Only the decoders see the transform batch (the encoders keep the cell's own).
        let b = MultiviBatch::<B>::new(&module.config, data, chunk, None, device);
        let inf = module.inference(&b, false);
        let decode = match q.transform_batch {
            Some(_) => {
                MultiviBatch::<B>::new(&module.config, data, chunk, q.transform_batch, device)
            }
            None => b,
        };
        let z = if q.use_z_mean { inf.qz_mean } else { inf.z };
        let gen = module.generative(&decode, z, false);
        let Some(logits) = gen.accessibility_logits else {
            return Err(invalid_arg("model", "has no accessibility data"));
        };
        let mut p = burn::tensor::activation::sigmoid(logits);
        if q.normalize_cells {
            p = p * inf.library_accessibility;
        }
        if q.normalize_regions {
            if let Some(rf) = module.region_factor_values() {
                p = p * rf.unsqueeze_dim::<2>(0);
            }
        }
        values.extend(host(&p.select(1, index.clone())));
    }
    Ok(Matrix {
        n_rows: q.cells.len(),
        n_cols,
        values,
    })
}

/// Refuses batch codes the model does not know.
fn check_transform_batches<B: Backend>(
    module: &Multivae<B>,
    codes: impl IntoIterator<Item = u32>,
) -> Result<()> {
    match codes
        .into_iter()
        .find(|&b| b as usize >= module.config.n_batch)
    {
        Some(b) => Err(invalid_arg(
            "transform_batch",
            format!("batch code {b} is unknown to the model"),
        )),
        None => Ok(()),
    }
}

/// The columns `selection` keeps of `n` (all when None): their count and index tensor.
fn selected_columns<B: Backend>(
    selection: Option<&[usize]>,
    n: usize,
    device: &B::Device,
) -> (usize, Tensor<B, 1, burn::tensor::Int>) {
    let columns: Vec<i64> = selection.map_or_else(
        || (0..n as i64).collect(),
        |s| s.iter().map(|&i| i as i64).collect(),
    );
    let len = columns.len();
    let index = Tensor::from_data(burn::tensor::TensorData::new(columns, [len]), device);
    (len, index)
}

/// Options of [`protein_foreground_probability`].
pub struct ProteinQuery<'a> {
    pub cells: &'a [usize],
    /// Batches to decode as (None: each cell's own); the probabilities are averaged.
    pub transform_batch: Vec<Option<u32>>,
    pub proteins: Option<&'a [usize]>,
    pub use_z_mean: bool,
    pub batch_size: usize,
}

/// Probability that each protein's count comes from the foreground, 1 − σ(π^p), averaged
/// over the transform batches (§7); cells x proteins.
pub fn protein_foreground_probability<B: Backend>(
    module: &Multivae<B>,
    data: &DataSet,
    q: &ProteinQuery,
    device: &B::Device,
) -> Result<Matrix> {
    check_query(module, 0, data, q.cells, q.batch_size)?;
    let p = module.config.n_proteins;
    if p == 0 {
        return Err(invalid_arg("model", "has no protein data"));
    }
    if q.transform_batch.is_empty() {
        return Err(invalid_arg("transform_batch", "names no batch"));
    }
    check_transform_batches(module, q.transform_batch.iter().flatten().copied())?;
    let (n_cols, index) = selected_columns::<B>(q.proteins, p, device);
    let mut values = Vec::with_capacity(q.cells.len() * n_cols);
    for (done, chunk) in q.cells.chunks(q.batch_size).enumerate() {
        crate::interrupt::step(done, q.cells.len().div_ceil(q.batch_size))?;
        let mut background_sum = Tensor::<B, 2>::zeros([chunk.len(), p], device);
        for &tb in &q.transform_batch {
            let b = MultiviBatch::<B>::new(&module.config, data, chunk, tb, device);
            let inf = module.inference(&b, false);
            let z = if q.use_z_mean { inf.qz_mean } else { inf.z };
            let Some(pg) = module.generative(&b, z, false).protein else {
                return Err(invalid_arg("model", "has no protein data"));
            };
            background_sum = background_sum + burn::tensor::activation::sigmoid(pg.mixing_logits);
        }
        let n_transforms = q.transform_batch.len() as f64;
        let foreground = (background_sum / n_transforms).neg() + 1.0;
        values.extend(host(&foreground.select(1, index.clone())));
    }
    Ok(Matrix {
        n_rows: q.cells.len(),
        n_cols,
        values,
    })
}

/// The expression log library ℓ_e (log scale, as the reference returns it) and the
/// accessibility factor d of each cell.
pub fn library_size_factors<B: Backend>(
    module: &Multivae<B>,
    data: &DataSet,
    cells: &[usize],
    batch_size: usize,
    device: &B::Device,
) -> Result<(Vec<f32>, Vec<f32>)> {
    check_query(module, 0, data, cells, batch_size)?;
    let (mut expression, mut accessibility) = (Vec::new(), Vec::new());
    for (done, chunk) in cells.chunks(batch_size).enumerate() {
        crate::interrupt::step(done, cells.len().div_ceil(batch_size))?;
        let b = MultiviBatch::<B>::new(&module.config, data, chunk, None, device);
        let inf = module.inference(&b, false);
        expression.extend(host(&inf.library_expression));
        accessibility.extend(host(&inf.library_accessibility));
    }
    Ok((expression, accessibility))
}

/// σ(region factors); an error when the model has none.
pub fn region_factors<B: Backend>(module: &Multivae<B>) -> Result<Vec<f32>> {
    match module.region_factor_values() {
        Some(rf) => Ok(rf.into_data().convert::<f32>().to_vec().unwrap_or_default()),
        None => Err(invalid_arg(
            "model",
            "has no region factors (built with region_factors = FALSE or without regions)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DeviceKind;
    use crate::data::{Categorical, CsrMatrix};
    use crate::train::Silent;
    use serde_json::json;

    /// A mosaic of 120 cells of two types over 10 genes and 16 regions, two batches: cells
    /// 0..40 paired, 40..80 RNA-only, 80..120 ATAC-only. Type t is high on genes and regions
    /// of its parity.
    fn mosaic() -> DataSet {
        mosaic_with_proteins(0)
    }

    /// [`mosaic`] with `p` proteins measured in the cells with RNA (CITE-seq), type t high on
    /// the proteins of its parity over a background of every protein.
    fn mosaic_with_proteins(p: usize) -> DataSet {
        let (g, r, n) = (10, 16, 120);
        let mut indptr = vec![0];
        let (mut idx, mut val) = (vec![], vec![]);
        for c in 0..n {
            let t = c % 2;
            let (rna, atac) = (c < 80, !(40..80).contains(&c));
            if rna {
                for j in 0..g {
                    let v = if j % 2 == t {
                        6 + (c * 7 + j) % 5
                    } else {
                        (c + j) % 2
                    };
                    if v > 0 {
                        idx.push(j as u32);
                        val.push(v as f32);
                    }
                }
            }
            if atac {
                for j in 0..r {
                    if j % 2 == t && (c + j) % 3 != 0 {
                        idx.push((g + j) as u32);
                        val.push(1.0);
                    }
                }
            }
            if rna {
                for j in 0..p {
                    let foreground = if j % 2 == t { 30 + (c + j) % 7 } else { 0 };
                    idx.push((g + r + j) as u32);
                    val.push((foreground + 2 + (c * 3 + j) % 3) as f32);
                }
            }
            indptr.push(val.len());
        }
        let counts = CsrMatrix::new(n, g + r + p, indptr, idx, val).unwrap();
        let batch = Categorical {
            codes: (0..n).map(|c| (c / 3 % 2) as u32).collect(),
            n_categories: 2,
        };
        DataSet::with_batches(counts, batch).unwrap()
    }

    #[test]
    fn a_mosaic_trains_separates_types_and_round_trips_through_disk() {
        let _guard = crate::TEST_RNG_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let data = mosaic();
        let mut config = MultiviConfig::new(10, 16, 2);
        config.n_hidden = 16;
        config.n_latent = 2;
        let mut m = MultiviModel::new(config, &data, serde_json::json!({"k": 1})).unwrap();
        let tc = TrainConfig {
            max_epochs: Some(60),
            seed: Some(0),
            batch_size: 32,
            optimizer: crate::train::OptimizerKind::AdamW,
            lr: 1e-2,
            weight_decay: 1e-3,
            eps: 1e-8,
            n_epochs_kl_warmup: Some(50),
            ..Default::default()
        };
        let s = m
            .train(&[&data], &tc, DeviceKind::Cpu, &mut Silent)
            .unwrap();
        assert_eq!(s.epochs_run, 60);
        let h = &m.state.history;
        assert!(h[59].reconstruction_loss_train < 0.7 * h[0].reconstruction_loss_train);
        assert!(h[59].elbo_validation.is_some());

        // The joint latent puts each cell nearer its own type, whichever modalities it has.
        let dev = Default::default();
        let cells: Vec<usize> = (0..120).collect();
        let (z, _, _) =
            crate::infer::latent(&m.module, 0, &data, &cells, true, 1, 64, &dev).unwrap();
        let labels: Vec<u32> = cells.iter().map(|c| (c % 2) as u32).collect();
        let purity = crate::metrics::knn_purity(&z.values, 2, &labels, 5).unwrap();
        assert!(purity > 0.9, "kNN purity {purity}");

        // Imputation of the hidden modality: RNA-only cells' accessibility and ATAC-only
        // cells' expression follow their type.
        let q = AccessibilityQuery {
            cells: &cells[40..80],
            transform_batch: None,
            regions: None,
            use_z_mean: true,
            normalize_cells: false,
            normalize_regions: false,
            batch_size: 64,
        };
        let acc = normalized_accessibility(&m.module, &data, &q, &dev).unwrap();
        let own = |row: usize, t: usize| -> f32 {
            (0..16)
                .filter(|j| j % 2 == t)
                .map(|j| acc.values[row * 16 + j])
                .sum()
        };
        assert!((0..40).all(|i| own(i, (40 + i) % 2) > own(i, (41 + i) % 2)));
        let eq = crate::infer::ExpressionQuery {
            cells: &cells[80..120],
            transform_batch: vec![None],
            genes: None,
            library_size: Some(1.0),
            n_samples: 1,
            batch_size: 64,
        };
        let rho = crate::infer::normalized_expression(&m.module, &data, &eq, &dev).unwrap();
        assert_eq!((rho.n_rows, rho.n_cols), (40, 10));
        let own = |row: usize, t: usize| -> f32 {
            (0..10)
                .filter(|j| j % 2 == t)
                .map(|j| rho.values[row * 10 + j])
                .sum()
        };
        assert!((0..40).all(|i| own(i, (80 + i) % 2) > 0.5));

        let (le, d) = library_size_factors(&m.module, &data, &cells[..3], 64, &dev).unwrap();
        assert_eq!((le.len(), d.len()), (3, 3));
        assert!(d.iter().all(|&v| v > 0.0 && v < 1.0));
        assert_eq!(region_factors(&m.module).unwrap().len(), 16);
        let (ze, _, _) = modality_latent(
            &m.module,
            &data,
            &cells[..4],
            Modality::Expression,
            true,
            64,
            &dev,
        )
        .unwrap();
        assert_eq!((ze.n_rows, ze.n_cols), (4, 2));

        // Differential accessibility between the types (paired and ATAC-only cells): regions
        // of type 0's parity open up in type 0.
        let (type0, type1): (Vec<usize>, Vec<usize>) = (0..120)
            .filter(|c| !(40..80).contains(c))
            .partition(|c| c % 2 == 0);
        let req = crate::de::DeRequest {
            cells1: &type0,
            cells2: &type1,
            change_mode: true,
            delta: 0.05,
            test_mode: crate::de::TestMode::Two,
            pseudocount: Some(1e-6),
            batches1: None,
            batches2: None,
            n_samples_overall: 500,
            batch_size: 64,
            fdr_target: 0.05,
            interval_levels: vec![],
            seed: 1,
            weights: crate::infer::RowWeights::Uniform,
            head: Head::Accessibility,
            filter_outlier_cells: false,
        };
        let da = crate::de::differential_expression(&m.module, &data, &req, &dev).unwrap();
        let col = |name: &str| &da.columns.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(col("lfc_mean").len(), 16);
        assert!((0..16).all(|j| (col("lfc_mean")[j] > 0.0) == (j % 2 == 0)));
        // Raw statistics read the region columns: type 0 opens exactly its regions.
        let nz = col("non_zeros_proportion1");
        assert!((0..16).all(|j| (nz[j] > 0.0) == (j % 2 == 0)), "{nz:?}");

        let dir = std::env::temp_dir().join(format!("rscvi-multivi-{}", std::process::id()));
        m.save(&dir, true).unwrap();
        assert_eq!(crate::io::saved_model_kind(&dir).unwrap(), "MULTIVI");
        let back = MultiviModel::load(&dir).unwrap();
        let (z2, _, _) =
            crate::infer::latent(&back.module, 0, &data, &cells, true, 1, 64, &dev).unwrap();
        assert_eq!(z.values, z2.values);
        assert_eq!(back.state.history.len(), 60);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn proteins_join_the_joint_latent_and_their_foreground_is_found() {
        let _guard = crate::TEST_RNG_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let data = mosaic_with_proteins(4);
        let mut config = MultiviConfig::new(10, 16, 2);
        config.n_proteins = 4;
        config.n_hidden = 16;
        config.n_latent = 2;
        let mut m = MultiviModel::new(config, &data, serde_json::json!({"k": 1})).unwrap();
        let dev = Default::default();
        // Cells with RNA (and proteins) carry a protein term, ATAC-only cells none; paired
        // cells pay the penalty of all three pairs of their modalities.
        let cells: Vec<usize> = (0..120).collect();
        let b = MultiviBatch::<Cpu>::new(&m.module.config, &data, &[0, 50, 90], None, &dev);
        assert!(b.any_protein);
        assert_eq!(b.masks.dims(), [3, 3]);
        let l = m.module.loss(&b, 1.0, false);
        let (name, protein) = l.reconstruction_by_modality[2].clone();
        assert_eq!(name, "protein");
        let rp: Vec<f32> = protein.into_data().to_vec().unwrap();
        assert!(rp[0] > 0.0 && rp[1] > 0.0, "{rp:?}");
        let pen: Vec<f32> = l.penalty.into_data().to_vec().unwrap();
        assert!(pen[0] > pen[1] && pen[1] > 0.0 && pen[2] == 0.0, "{pen:?}");
        let atac_only = MultiviBatch::<Cpu>::new(&m.module.config, &data, &[90, 91], None, &dev);
        assert!(!atac_only.any_protein);

        let tc = TrainConfig {
            max_epochs: Some(60),
            seed: Some(0),
            batch_size: 32,
            optimizer: crate::train::OptimizerKind::AdamW,
            lr: 1e-2,
            weight_decay: 1e-3,
            eps: 1e-8,
            n_epochs_kl_warmup: Some(50),
            ..Default::default()
        };
        m.train(&[&data], &tc, DeviceKind::Cpu, &mut Silent)
            .unwrap();
        let (z, _, _) =
            crate::infer::latent(&m.module, 0, &data, &cells, true, 1, 64, &dev).unwrap();
        let labels: Vec<u32> = cells.iter().map(|c| (c % 2) as u32).collect();
        let purity = crate::metrics::knn_purity(&z.values, 2, &labels, 5).unwrap();
        assert!(purity > 0.9, "kNN purity {purity}");
        let (zp, _, _) = modality_latent(
            &m.module,
            &data,
            &cells[..80],
            Modality::Protein,
            true,
            64,
            &dev,
        )
        .unwrap();
        let purity = crate::metrics::knn_purity(&zp.values, 2, &labels[..80], 5).unwrap();
        assert!(purity > 0.9, "protein-latent kNN purity {purity}");

        // A type's own proteins are foreground, the others background.
        let q = ProteinQuery {
            cells: &cells[..80],
            transform_batch: vec![None, Some(0), Some(1)],
            proteins: None,
            use_z_mean: true,
            batch_size: 64,
        };
        let fg = protein_foreground_probability(&m.module, &data, &q, &dev).unwrap();
        assert_eq!((fg.n_rows, fg.n_cols), (80, 4));
        let mean = |own: bool| -> f32 {
            let v: Vec<f32> = (0..80)
                .flat_map(|c| (0..4).map(move |j| (c, j)))
                .filter(|&(c, j)| (j % 2 == c % 2) == own)
                .map(|(c, j)| fg.values[c * 4 + j])
                .collect();
            v.iter().sum::<f32>() / v.len() as f32
        };
        assert!(
            mean(true) > mean(false) + 0.2,
            "{} vs {}",
            mean(true),
            mean(false)
        );
        let one = ProteinQuery {
            proteins: Some(&[2]),
            transform_batch: vec![None],
            ..q
        };
        let fg2 = protein_foreground_probability(&m.module, &data, &one, &dev).unwrap();
        assert_eq!(fg2.n_cols, 1);
        assert!(fg2.values.iter().all(|v| (0.0..=1.0).contains(v)));

        let dir = std::env::temp_dir().join(format!("rscvi-multivi-p-{}", std::process::id()));
        m.save(&dir, true).unwrap();
        let back = MultiviModel::load(&dir).unwrap();
        let (z2, _, _) =
            crate::infer::latent(&back.module, 0, &data, &cells, true, 1, 64, &dev).unwrap();
        assert_eq!(z.values, z2.values);
        std::fs::remove_dir_all(&dir).ok();
        // Without proteins the query and the latent are refused.
        let plain = MultiviModel::new(MultiviConfig::new(10, 16, 2), &mosaic(), json!({})).unwrap();
        let err = modality_latent(
            &plain.module,
            &mosaic(),
            &[0],
            Modality::Protein,
            true,
            8,
            &dev,
        );
        assert!(matches!(err, Err(e) if e.to_string().contains("no proteins")));
    }

    #[test]
    fn registered_size_factors_replace_the_library_encoders() {
        let _guard = crate::TEST_RNG_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let plain = mosaic();
        let n = plain.n_cells();
        let rna_sf: Vec<f32> = (0..n).map(|c| 0.5 + (c % 4) as f32).collect();
        let atac_sf: Vec<f32> = (0..n).map(|c| 0.2 + 0.1 * (c % 5) as f32).collect();
        let with = |size_factors: Vec<Vec<f32>>| {
            DataSet::new(
                plain.counts.clone(),
                plain.batch.clone(),
                plain.labels.clone(),
                vec![],
                vec![],
                size_factors,
            )
            .unwrap()
        };
        let data = with(vec![rna_sf.clone(), atac_sf.clone()]);
        let mut config = MultiviConfig::new(10, 16, 2);
        config.use_size_factor = true;
        let mut m = MultiviModel::new(config.clone(), &data, json!({})).unwrap();
        let dev = Default::default();
        let (le, d) = library_size_factors(&m.module, &data, &[0, 1, 2, 3], 64, &dev).unwrap();
        for c in 0..4 {
            assert!((le[c] - (rna_sf[c] as f64 + 1e-6).ln() as f32).abs() < 1e-6);
            assert_eq!(d[c], atac_sf[c]);
        }
        // ρ is a softplus, not a distribution over the genes (§5.1).
        let b = MultiviBatch::<Cpu>::new(&m.module.config, &data, &[0, 1], None, &dev);
        let inf = m.module.inference(&b, false);
        let logits = m
            .module
            .generative(&b, inf.qz_mean, false)
            .expression_logits
            .unwrap();
        let rho: Vec<f32> = m
            .module
            .expression_scale(logits)
            .into_data()
            .to_vec()
            .unwrap();
        assert!(rho.iter().all(|&v| v > 0.0));
        assert!((rho[..10].iter().sum::<f32>() - 1.0).abs() > 1e-3);
        let tc = TrainConfig {
            max_epochs: Some(5),
            seed: Some(0),
            batch_size: 32,
            ..Default::default()
        };
        let s = m
            .train(&[&data], &tc, DeviceKind::Cpu, &mut Silent)
            .unwrap();
        assert_eq!(s.epochs_run, 5);
        assert!(m.state.history[4].elbo_train.is_finite());

        // Two columns are needed, and the ATAC factor is a probability scale.
        let err = |d: &DataSet| {
            MultiviModel::new(config.clone(), d, json!({}))
                .err()
                .unwrap()
        };
        assert!(err(&with(vec![rna_sf.clone()]))
            .to_string()
            .contains("2 columns"));
        let over: Vec<f32> = atac_sf.iter().map(|v| v + 1.0).collect();
        assert!(err(&with(vec![rna_sf, over]))
            .to_string()
            .contains("(0, 1]"));
    }

    #[test]
    fn a_query_model_grows_new_batches_and_trains_only_their_weights() {
        let _guard = crate::TEST_RNG_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let data = mosaic_with_proteins(4);
        let mut config = MultiviConfig::new(10, 16, 2);
        config.n_proteins = 4;
        config.n_hidden = 16;
        config.n_latent = 2;
        let tc = TrainConfig {
            max_epochs: Some(3),
            seed: Some(0),
            batch_size: 32,
            optimizer: crate::train::OptimizerKind::AdamW,
            lr: 1e-2,
            weight_decay: 1e-3,
            eps: 1e-8,
            ..Default::default()
        };
        let mut reference = MultiviModel::new(config.clone(), &data, json!({})).unwrap();
        reference
            .train(&[&data], &tc, DeviceKind::Cpu, &mut Silent)
            .unwrap();
        // The query: the same cells, a third (new) batch for a third of them.
        let batch = Categorical {
            codes: (0..120).map(|c| (c % 3) as u32).collect(),
            n_categories: 3,
        };
        let query_data = DataSet::with_batches(data.counts.clone(), batch).unwrap();
        let mut qconfig = reference.module.config.clone();
        qconfig.n_batch = 3;
        let mut query = MultiviModel::for_query(
            &reference,
            qconfig,
            &query_data,
            json!({}),
            FreezeSpec::default(),
        )
        .unwrap();
        let vals = |t: Tensor<Cpu, 2>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        let first = |m: &MultiviModel| {
            vals(
                m.module
                    .z_decoder_accessibility
                    .as_ref()
                    .unwrap()
                    .px_decoder
                    .layers[0]
                    .linear
                    .weight
                    .val(),
            )
        };
        // Decoder input: latent (2) + batch one-hots (2 -> 3), 16 hidden units.
        let (r, before) = (first(&reference), first(&query));
        assert_eq!((r.len(), before.len()), (4 * 16, 5 * 16));
        assert_eq!(&before[..r.len()], &r[..]);
        let head = |m: &MultiviModel| {
            vals(
                m.module
                    .z_decoder_pro
                    .as_ref()
                    .unwrap()
                    .py_background_decoder
                    .weight
                    .val(),
            )
        };
        let head_before = head(&query);
        let out = |m: &MultiviModel| {
            vals(
                m.module
                    .z_decoder_accessibility
                    .as_ref()
                    .unwrap()
                    .output
                    .weight
                    .val(),
            )
        };
        let out_before = out(&query);
        let px_r =
            |m: &MultiviModel| -> Vec<f32> { m.module.px_r.val().into_data().to_vec().unwrap() };
        let px_r_before = px_r(&query);

        query
            .train(&[&query_data], &tc, DeviceKind::Cpu, &mut Silent)
            .unwrap();
        let after = first(&query);
        let moved = |a: &[f32], b: &[f32], rows: std::ops::Range<usize>, width: usize| {
            rows.flat_map(|r| (0..width).map(move |h| r * width + h))
                .map(|i| (a[i] - b[i]).abs())
                .fold(0f32, f32::max)
        };
        // Latent rows only feel weight decay; the batch one-hot rows learn.
        assert!(moved(&after, &before, 0..2, 16) < 1e-4);
        assert!(moved(&after, &before, 2..5, 16) > 1e-3);
        // Protein head input: [h (16), u (2), one-hots (3)]: only the one-hot rows learn.
        let head_after = head(&query);
        assert!(moved(&head_after, &head_before, 0..18, 4) < 1e-4);
        assert!(moved(&head_after, &head_before, 18..21, 4) > 1e-3);
        assert_eq!(out(&query), out_before, "the decoder head stays frozen");
        assert_eq!(px_r(&query), px_r_before, "px_r stays frozen");

        // The freezing survives a save and load.
        let dir = std::env::temp_dir().join(format!("rscvi-multivi-q-{}", std::process::id()));
        query.save(&dir, true).unwrap();
        let back = MultiviModel::load(&dir).unwrap();
        assert!(back.extra.freeze.is_some());
        std::fs::remove_dir_all(&dir).ok();

        // Per-cell modality weights cannot map other cells.
        let mut cell_config = config;
        cell_config.modality_weights = crate::models::multivi::ModalityWeights::Cell;
        let cell_ref = MultiviModel::new(cell_config, &data, json!({})).unwrap();
        let mut qc = cell_ref.module.config.clone();
        qc.n_batch = 3;
        let err =
            MultiviModel::for_query(&cell_ref, qc, &query_data, json!({}), FreezeSpec::default());
        assert!(matches!(err, Err(e) if e.to_string().contains("modality_weights")));
    }

    /// The sparse first layers give the dense path's loss and first-layer weight gradients
    /// (one batch and no covariates: encoding covariates only switches the path).
    #[test]
    fn sparse_first_layers_match_the_dense_product() {
        use burn::module::AutodiffModule;
        use burn::tensor::backend::Backend as _;
        type A = crate::backend::CpuTrain;
        let _guard = crate::TEST_RNG_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let data = mosaic();
        let one_batch = DataSet::with_batches(
            data.counts.clone(),
            crate::data::Categorical::constant(data.n_cells()),
        )
        .unwrap();
        let cells: Vec<usize> = (0..120).step_by(3).collect();
        let dev = Default::default();
        let run = |encode_covariates: bool| {
            let mut config = MultiviConfig::new(10, 16, 1);
            config.encode_covariates = encode_covariates;
            A::seed(&dev, 7);
            let m = <Multivae<A> as AutodiffModule<A>>::from_inner(
                Multivae::<Cpu>::new(config.clone(), &dev).unwrap(),
            );
            let m = burn::module::Module::map(m, &mut crate::nn::Retrainable);
            let b = MultiviBatch::<A>::new(&config, &one_batch, &cells, None, &dev);
            let loss = m.step_loss(&[b], 0.5, false);
            let value: f32 = loss.objective.clone().into_scalar();
            let raw = loss.objective.backward();
            let first = &m.z_encoder_accessibility.encoder.layers[0].linear.weight;
            let grad = match loss.sparse_inputs.iter().find(|s| s.weight == first.id) {
                Some(s) => s.weight_gradient(&raw).unwrap(),
                None => first.val().grad(&raw).unwrap(),
            };
            let g: Vec<f32> = grad.into_data().to_vec().unwrap();
            (value, g, loss.sparse_inputs.len())
        };
        let (dense, dense_grad, n_dense) = run(true);
        let (sparse, sparse_grad, n_sparse) = run(false);
        assert_eq!((n_dense, n_sparse), (0, 4));
        assert!(
            (dense - sparse).abs() < 1e-3 * dense.abs(),
            "{dense} vs {sparse}"
        );
        let scale = dense_grad.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (a, b) in dense_grad.iter().zip(&sparse_grad) {
            assert!((a - b).abs() < 1e-3 * scale, "{a} vs {b}");
        }
    }

    #[test]
    fn the_batch_classifier_follows_the_reference_plan() {
        let tc = TrainConfig::default();
        let one = MultiviConfig::new(10, 16, 1);
        assert!(MultiviKind::plan(&one, &[], &tc)
            .unwrap()
            .adversary
            .is_none());
        let three = MultiviConfig::new(10, 16, 3);
        let a = MultiviKind::plan(&three, &[], &tc)
            .unwrap()
            .adversary
            .unwrap();
        assert_eq!((a.n_classes, a.n_layers, a.scale), (3, 2, 1.0));
        let o = a.optimizer.unwrap();
        assert_eq!((o.lr, o.eps, o.weight_decay), (1e-3, 0.01, tc.weight_decay));
        // §10.6: equal logits over 3 batches → both adversarial losses log 3.
        let dev = Default::default();
        let logits = Tensor::<Cpu, 2>::zeros([4, 3], &dev);
        let onehot = crate::nn::adversarial::one_hot::<Cpu>(&[0, 1, 2, 1], 3, &dev);
        for true_class in [false, true] {
            let l: f32 = crate::nn::adversarial::adversarial_loss(
                logits.clone(),
                onehot.clone(),
                true_class,
            )
            .into_scalar();
            assert!((l - 3f32.ln()).abs() < 1e-6);
        }
    }
}

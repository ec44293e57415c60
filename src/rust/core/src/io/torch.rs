//! scvi-tools' saved models: `model.pt` is torch's zip archive of a pickle (`data.pkl`)
//! whose tensors point at raw storages (`data/<key>`) in the same archive. This reads the
//! pickle into [`Value`]s, the tensors it names into f32 arrays, and loads a state dict onto
//! a Burn module by translating the module's parameter paths into torch's names.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::pickle::{self, TensorRef, Value};
use crate::error::{Error, Result};

/// A tensor of the checkpoint, converted to f32 (integer buffers such as BatchNorm's
/// `num_batches_tracked` too).
#[derive(Clone, Debug)]
pub struct TorchTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A torch checkpoint: the pickled object and the storages its tensors use.
pub struct Checkpoint {
    pub root: Value,
    storages: HashMap<String, Vec<u8>>,
    file: String,
}

fn file_error(path: &str, msg: impl std::fmt::Display) -> Error {
    Error::File(format!("{path}: {msg}"))
}

/// Reads the torch archive at `path`.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| file_error(&shown, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        file_error(
            &shown,
            format!("not a torch archive (torch.save's zip format): {e}"),
        )
    })?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or_else(|| {
            file_error(
                &shown,
                "no data.pkl in the archive (written by an old torch without the zip format?)",
            )
        })?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let read_entry = |zip: &mut zip::ZipArchive<std::fs::File>, name: &str| -> Result<Vec<u8>> {
        let mut entry = zip
            .by_name(name)
            .map_err(|e| file_error(&shown, format!("{name}: {e}")))?;
        let mut out = Vec::new();
        out.try_reserve_exact(entry.size() as usize)
            .map_err(|_| file_error(&shown, format!("{name} does not fit in memory")))?;
        entry
            .read_to_end(&mut out)
            .map_err(|e| file_error(&shown, format!("{name}: {e}")))?;
        Ok(out)
    };
    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder")) {
        if order.trim_ascii() != b"little" {
            return Err(file_error(
                &shown,
                "big-endian torch archives are not supported",
            ));
        }
    }
    let root = pickle::read(&read_entry(&mut zip, &pkl)?)
        .map_err(|e| file_error(&shown, format!("{pkl}: {e}")))?;
    let mut keys = HashSet::new();
    collect_storages(&root, &mut keys);
    let mut storages = HashMap::new();
    for key in keys {
        let bytes = read_entry(&mut zip, &format!("{prefix}data/{key}"))?;
        storages.insert(key, bytes);
    }
    Ok(Checkpoint {
        root,
        storages,
        file: shown,
    })
}

fn collect_storages(v: &Value, keys: &mut HashSet<String>) {
    match v {
        Value::Tensor(t) => {
            keys.insert(t.key.clone());
        }
        Value::List(xs) | Value::Tuple(xs) => xs.iter().for_each(|x| collect_storages(x, keys)),
        Value::Dict(items) => items.iter().for_each(|(_, x)| collect_storages(x, keys)),
        Value::Object { args, state, .. } => {
            args.iter().for_each(|x| collect_storages(x, keys));
            if let Some(s) = state {
                collect_storages(s, keys);
            }
        }
        _ => {}
    }
}

/// Reads one stored element as f32.
type Convert = fn(&[u8]) -> f32;

/// Element size and f32 conversion of torch's storage types.
fn element(storage_type: &str) -> Option<(usize, Convert)> {
    fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
        b.try_into().unwrap_or([0; N])
    }
    Some(match storage_type {
        "FloatStorage" => (4, |b| f32::from_le_bytes(arr(b))),
        "DoubleStorage" => (8, |b| f64::from_le_bytes(arr(b)) as f32),
        "HalfStorage" => (2, |b| half_to_f32(u16::from_le_bytes(arr(b)))),
        "BFloat16Storage" => (2, |b| {
            f32::from_bits((u16::from_le_bytes(arr(b)) as u32) << 16)
        }),
        "LongStorage" => (8, |b| i64::from_le_bytes(arr(b)) as f32),
        "IntStorage" => (4, |b| i32::from_le_bytes(arr(b)) as f32),
        "ShortStorage" => (2, |b| i16::from_le_bytes(arr(b)) as f32),
        "CharStorage" => (1, |b| b[0] as i8 as f32),
        "ByteStorage" | "BoolStorage" => (1, |b| b[0] as f32),
        _ => return None,
    })
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        _ => (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

impl Checkpoint {
    /// The values of the tensor `t`, in row-major order of its shape.
    pub fn tensor(&self, t: &TensorRef) -> Result<TorchTensor> {
        let err = |msg: String| file_error(&self.file, msg);
        let (size, convert) = element(&t.storage_type)
            .ok_or_else(|| err(format!("tensors of {} are not supported", t.storage_type)))?;
        let bytes = self
            .storages
            .get(&t.key)
            .ok_or_else(|| err(format!("storage {} is missing", t.key)))?;
        let stored = bytes.len() / size;
        if t.shape.len() != t.stride.len() {
            return Err(err(format!(
                "tensor {}: size and stride differ in length",
                t.key
            )));
        }
        let n = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= stored)
            .ok_or_else(|| err(format!("tensor {} is larger than its storage", t.key)))?;
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&d, &s)| {
                a.checked_add(d.saturating_sub(1).checked_mul(s)?)
            });
        if n > 0 && last.is_none_or(|l| l >= stored) {
            return Err(err(format!("tensor {} reaches past its storage", t.key)));
        }
        let mut values = Vec::with_capacity(n);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..n {
            let at = t.offset
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            values.push(convert(&bytes[at * size..(at + 1) * size]));
            for k in (0..index.len()).rev() {
                index[k] += 1;
                if index[k] < t.shape[k] {
                    break;
                }
                index[k] = 0;
            }
        }
        Ok(TorchTensor {
            shape: t.shape.clone(),
            values,
        })
    }

    /// The tensors of the state dict at `key` of the checkpoint's top-level dict, by name;
    /// entries that are not tensors (`pyro_param_store`) are left out.
    pub fn state_dict(&self, key: &str) -> Result<HashMap<String, TorchTensor>> {
        let Some(Value::Dict(items)) = self.root.get(key) else {
            return Err(file_error(&self.file, format!("no state dict `{key}`")));
        };
        let mut out = HashMap::new();
        for (k, v) in items {
            if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
                out.insert(name.clone(), self.tensor(t)?);
            }
        }
        Ok(out)
    }
}

/// How a parameter of a Burn module is found in a torch state dict.
pub struct TorchName {
    pub name: String,
    /// The torch tensor is this parameter transposed (Linear weights: Burn keeps them
    /// inputs x outputs, torch outputs x inputs; per-batch dispersions).
    pub transpose: bool,
    /// torch's shape where it differs from the (transposed) Burn shape by unit dimensions
    /// (a vector Burn keeps as a one-row matrix); written as such.
    pub shape: Option<Vec<usize>>,
}

/// The torch name of the parameter at Burn path `path` (field names and vector indices
/// joined by dots) for the building blocks of `nn`: a stack of fully connected layers
/// (`layers.<i>.linear` / `.batch_norm`) is scvi-tools' `fc_layers."Layer <i>"` with the
/// Linear at `.0` and the BatchNorm (`weight`, `bias`, running statistics) at `.1`. `linear`
/// says the parameter is a Linear's weight.
pub fn nn_torch_name(path: &str, linear_weight: bool) -> TorchName {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len() + 1);
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        let next = parts.get(i + 1);
        if p == "layers" && next.is_some_and(|n| n.parse::<usize>().is_ok()) {
            out.push("fc_layers".into());
            out.push(format!("Layer {}", next.unwrap_or(&"0")));
            i += 2;
            continue;
        }
        let in_norm = out.last().is_some_and(|l| l == "1")
            && out.len() >= 2
            && out[out.len() - 2].starts_with("Layer ");
        out.push(match p {
            "linear" => "0".into(),
            "batch_norm" => "1".into(),
            "gamma" if in_norm => "weight".into(),
            "beta" if in_norm => "bias".into(),
            _ => p.to_string(),
        });
        i += 1;
    }
    TorchName {
        name: out.join("."),
        transpose: linear_weight,
        shape: None,
    }
}

/// The dotted Burn path of a parameter from the (name, container type) of the modules a
/// visitor entered, and whether the parameter is a Linear's weight.
fn burn_path(entered: &[(String, String)]) -> (String, bool) {
    let names: Vec<&str> = entered.iter().map(|(n, _)| n.as_str()).collect();
    let linear_weight = entered
        .last()
        .is_some_and(|(n, c)| n == "weight" && c == "Struct:Linear");
    (names.join("."), linear_weight)
}

/// Loads the torch tensors `tensors` into `module`: each parameter's path is translated by
/// `name_of(path, is_linear_weight)` (None: the parameter has no torch counterpart and keeps
/// its value). Every translated name must exist with the parameter's shape; every tensor of
/// `tensors` must be used except those `unused_ok` accepts. The error says what does not fit.
pub fn load_state_dict<B: Backend, M: Module<B>>(
    module: M,
    tensors: &HashMap<String, TorchTensor>,
    name_of: impl Fn(&str, bool) -> Option<TorchName>,
    unused_ok: impl Fn(&str) -> bool,
) -> std::result::Result<M, String> {
    struct Loader<'a, F> {
        path: Vec<(String, String)>,
        tensors: &'a HashMap<String, TorchTensor>,
        name_of: F,
        used: HashSet<String>,
        errors: Vec<String>,
    }
    impl<B: Backend, F: Fn(&str, bool) -> Option<TorchName>> ModuleMapper<B> for Loader<'_, F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (path, linear_weight) = burn_path(&self.path);
            let Some(torch) = (self.name_of)(&path, linear_weight) else {
                return param;
            };
            let Some(t) = self.tensors.get(&torch.name) else {
                self.errors.push(format!("`{}` is missing", torch.name));
                return param;
            };
            self.used.insert(torch.name.clone());
            let (id, value, mapper) = param.consume();
            let dims = value.dims();
            let mut want: Vec<usize> = dims.to_vec();
            if torch.transpose {
                want.reverse();
            }
            let same_numel = t.values.len() == dims.iter().product::<usize>();
            // torch keeps vectors where Burn keeps one-row matrices (and the other way round)
            let squeezed = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
            if t.shape != want && !(same_numel && squeezed(&t.shape) == squeezed(&want)) {
                self.errors.push(format!(
                    "`{}` has shape {:?}, the model expects {:?}",
                    torch.name, t.shape, want
                ));
                return Param::from_mapped_value(id, value, mapper);
            }
            let device = value.device();
            let mut loaded =
                Tensor::<B, D>::from_data(TensorData::new(t.values.clone(), want.clone()), &device);
            if torch.transpose {
                loaded = loaded.transpose();
            }
            let loaded = loaded.reshape(dims);
            Param::from_mapped_value(id, loaded, mapper)
        }
    }
    let mut loader = Loader {
        path: Vec::new(),
        tensors,
        name_of,
        used: HashSet::new(),
        errors: Vec::new(),
    };
    let module = module.map(&mut loader);
    let mut unused: Vec<&String> = tensors
        .keys()
        .filter(|k| !loader.used.contains(*k) && !unused_ok(k))
        .collect();
    unused.sort();
    if let Some(first) = unused.first() {
        loader.errors.push(format!(
            "{} tensor(s) have no place in the model (e.g. `{first}`)",
            unused.len()
        ));
    }
    if loader.errors.is_empty() {
        Ok(module)
    } else {
        Err(format!(
            "the weights do not fit the model: {}",
            loader.errors.join("; ")
        ))
    }
}

/// The parameters of `module` as a torch state dict, named by `name_of` as for
/// [`load_state_dict`] (parameters it leaves out are not written), in module order.
pub fn state_dict_of<B: Backend, M: Module<B>>(
    module: &M,
    name_of: impl Fn(&str, bool) -> Option<TorchName>,
) -> Vec<(String, TorchTensor)> {
    struct Collector<F> {
        path: Vec<(String, String)>,
        name_of: F,
        out: Vec<(String, TorchTensor)>,
    }
    impl<B: Backend, F: Fn(&str, bool) -> Option<TorchName>> ModuleVisitor<B> for Collector<F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let (path, linear_weight) = burn_path(&self.path);
            let Some(torch) = (self.name_of)(&path, linear_weight) else {
                return;
            };
            let mut value = param.val();
            if torch.transpose {
                value = value.transpose();
            }
            let shape = torch.shape.unwrap_or_else(|| value.dims().to_vec());
            let values = crate::backend::host_values(&value).to_vec();
            self.out.push((torch.name, TorchTensor { shape, values }));
        }
    }
    let mut c = Collector {
        path: Vec::new(),
        name_of,
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Writes a torch archive to `path` (through [`super::write_beside`]: a failure leaves
/// nothing half-written): the pickle of `root`, whose [`Value::Tensor`]s name their storages
/// by key, and the storages `storages` (key, raw little-endian bytes).
pub fn write_checkpoint(path: &Path, root: &Value, storages: &[(String, Vec<u8>)]) -> Result<()> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let shown = path.display().to_string();
    let err = |e: &dyn std::fmt::Display| Error::Io(format!("cannot write {shown}: {e}"));
    let pkl = pickle::write(root)?;
    super::write_beside(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| err(&e))?;
        let mut zip = zip::ZipWriter::new(file);
        // torch reads storages from 64-byte aligned offsets when it maps the file
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        let mut entries: Vec<(String, &[u8])> = vec![
            ("model/data.pkl".into(), &pkl),
            ("model/byteorder".into(), b"little"),
        ];
        entries.extend(
            storages
                .iter()
                .map(|(k, b)| (format!("model/data/{k}"), b.as_slice())),
        );
        entries.push(("model/version".into(), b"3\n"));
        for (name, bytes) in &entries {
            zip.start_file(name.as_str(), options)
                .map_err(|e| err(&e))?;
            zip.write_all(bytes).map_err(|e| err(&e))?;
        }
        zip.finish().map(drop).map_err(|e| err(&e))
    })
}

/// A state dict as the checkpoint's value and its storages: every tensor its own f32
/// storage (integer buffers `int_buffers` accepts, such as `num_batches_tracked`, as int64).
pub fn state_dict_value(
    tensors: &[(String, TorchTensor)],
    int_buffers: impl Fn(&str) -> bool,
) -> (Value, Vec<(String, Vec<u8>)>) {
    let mut items = Vec::with_capacity(tensors.len());
    let mut storages = Vec::with_capacity(tensors.len());
    for (i, (name, t)) in tensors.iter().enumerate() {
        let key = i.to_string();
        let integer = int_buffers(name);
        let bytes: Vec<u8> = if integer {
            t.values
                .iter()
                .flat_map(|&v| (v as i64).to_le_bytes())
                .collect()
        } else {
            t.values.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        let mut stride = vec![1usize; t.shape.len()];
        for k in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[k] = stride[k + 1] * t.shape[k + 1];
        }
        items.push((
            Value::Str(name.clone()),
            Value::Tensor(TensorRef {
                key: key.clone(),
                storage_type: if integer {
                    "LongStorage"
                } else {
                    "FloatStorage"
                }
                .into(),
                offset: 0,
                shape: t.shape.clone(),
                stride,
            }),
        ));
        storages.push((key, bytes));
    }
    (Value::Dict(items), storages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_burn_paths_to_scvi_tools_names() {
        let n = nn_torch_name("z_encoder.encoder.layers.1.linear.weight", true);
        assert_eq!(n.name, "z_encoder.encoder.fc_layers.Layer 1.0.weight");
        assert!(n.transpose);
        let n = nn_torch_name("decoder.px_decoder.layers.0.batch_norm.gamma", false);
        assert_eq!(n.name, "decoder.px_decoder.fc_layers.Layer 0.1.weight");
        let n = nn_torch_name("l_encoder.encoder.layers.0.batch_norm.running_var", false);
        assert_eq!(n.name, "l_encoder.encoder.fc_layers.Layer 0.1.running_var");
        assert_eq!(
            nn_torch_name("z_encoder.mean_encoder.bias", false).name,
            "z_encoder.mean_encoder.bias"
        );
    }

    #[test]
    fn half_precision_values() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
    }
}

//! A reader of Python pickles (protocols 2-5) into plain values, for the checkpoints
//! scvi-tools writes with `torch.save`. It runs the pickle machine without executing
//! anything: the few constructors a checkpoint needs become values (dicts, bytes, NumPy
//! arrays, torch tensor references); any other class call is kept as an opaque
//! [`Value::Object`] that the reader of the checkpoint may ignore (pandas' history tables).

use std::collections::HashMap;

use crate::error::{Error, Result};

/// A NumPy array: its dtype as NumPy spells it (`"<f4"`, `"<i8"`, `"|O"`, `"<U15"`), its
/// shape, and its elements, as raw bytes (numeric dtypes) or as values (object arrays).
#[derive(Clone, Debug, PartialEq)]
pub struct NdArray {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
    pub data: ArrayData,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData {
    Raw(Vec<u8>),
    Objects(Vec<Value>),
}

/// A tensor of a torch checkpoint: where its storage lies in the archive (`key`), the
/// storage's element type (`"FloatStorage"`, ...), and the view onto it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub key: String,
    pub storage_type: String,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Keys in insertion order (Python dicts, OrderedDict, defaultdict).
    Dict(Vec<(Value, Value)>),
    /// A class or function named by the pickle (`module.name`).
    Global(String),
    /// A call the reader does not interpret: the callable, its arguments and the state
    /// BUILD gave it.
    Object {
        callable: String,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    /// `numpy.dtype(...)`, by its NumPy name (byte order added when BUILD gives one).
    Dtype(String),
    Array(NdArray),
    Tensor(TensorRef),
    /// The persistent id of an object kept outside the pickle (torch's storages).
    Persistent(Box<Value>),
    /// Only inside the reader: an object the pickle may still change (items set, BUILD)
    /// and refer to again, by its place among the reader's objects; [`read`] returns
    /// values without references.
    Ref(usize),
}

impl Value {
    /// The entry `key` of a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Int(i) if *i == 0 || *i == 1 => Some(*i == 1),
            _ => None,
        }
    }

    /// The items of a list, a tuple or a one-dimensional object or numeric array, as values.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v.clone()),
            Value::Array(a) => a.values(),
            _ => None,
        }
    }

    /// What the value is, for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::List(_) => "a list".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("the class {g}"),
            Value::Object { callable, .. } => format!("a {callable} object"),
            Value::Dtype(_) => "a NumPy dtype".into(),
            Value::Array(a) => format!("a NumPy array of {}", a.dtype),
            Value::Tensor(_) => "a tensor".into(),
            Value::Persistent(_) => "a persistent reference".into(),
            Value::Ref(_) => "an object reference".into(),
        }
    }
}

impl NdArray {
    /// The elements as values (strings, integers, floats or booleans); None for dtypes
    /// this reader does not decode.
    pub fn values(&self) -> Option<Vec<Value>> {
        let n: usize = self.shape.iter().product();
        match &self.data {
            ArrayData::Objects(v) => Some(v.clone()),
            ArrayData::Raw(bytes) => {
                let (order, kind, size) = parse_dtype(&self.dtype)?;
                if order == '>' || bytes.len() < n.checked_mul(size)? {
                    return None;
                }
                let chunks = bytes.chunks_exact(size).take(n);
                let out: Option<Vec<Value>> = match (kind, size) {
                    ('f', 4) => chunks
                        .map(|c| Some(Value::Float(f32::from_le_bytes(c.try_into().ok()?) as f64)))
                        .collect(),
                    ('f', 8) => chunks
                        .map(|c| Some(Value::Float(f64::from_le_bytes(c.try_into().ok()?))))
                        .collect(),
                    ('i' | 'u', _) if size <= 8 => chunks
                        .map(|c| {
                            let mut b = [0u8; 8];
                            b[..size].copy_from_slice(c);
                            let v = i64::from_le_bytes(b);
                            let shift = 64 - 8 * size as u32;
                            // sign-extend signed integers narrower than 8 bytes
                            Some(Value::Int(if kind == 'i' && shift > 0 {
                                (v << shift) >> shift
                            } else {
                                v
                            }))
                        })
                        .collect(),
                    ('b', 1) => chunks.map(|c| Some(Value::Bool(c[0] != 0))).collect(),
                    ('U', _) => chunks
                        .map(|c| {
                            let s: String = c
                                .chunks_exact(4)
                                .map(|u| u32::from_le_bytes(u.try_into().unwrap_or([0; 4])))
                                .take_while(|&u| u != 0)
                                .map(|u| char::from_u32(u).unwrap_or('\u{fffd}'))
                                .collect();
                            Some(Value::Str(s))
                        })
                        .collect(),
                    _ => None,
                };
                out
            }
        }
    }
}

/// (byte order, kind, item size) of a NumPy dtype string such as `<f4`, `|b1` or `<U12`.
fn parse_dtype(dtype: &str) -> Option<(char, char, usize)> {
    let mut chars = dtype.chars();
    let first = chars.next()?;
    let (order, kind) = if "<>|=".contains(first) {
        (first, chars.next()?)
    } else {
        ('<', first)
    };
    let digits: String = chars.collect();
    let n: usize = digits.parse().ok()?;
    let size = if kind == 'U' { n.checked_mul(4)? } else { n };
    Some((if order == '=' { '<' } else { order }, kind, size))
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::File(format!("not a readable pickle: {msg}"))
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// The mutable objects (dicts, lists, call results), shared by reference as in Python.
    objects: Vec<Value>,
}

/// Nesting beyond this is refused (a reference cycle, or a hostile file).
const MAX_DEPTH: usize = 256;

impl<'a> Machine<'a> {
    /// Pushes a mutable object, by reference.
    fn push_object(&mut self, v: Value) {
        self.objects.push(v);
        self.stack.push(Value::Ref(self.objects.len() - 1));
    }

    /// `v` with its references replaced by the objects they point to.
    fn resolve(&self, v: Value, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(bad("objects nested too deep (or a reference cycle)"));
        }
        let r = |x: Value| self.resolve(x, depth + 1);
        let all = |xs: Vec<Value>| xs.into_iter().map(r).collect::<Result<Vec<_>>>();
        Ok(match v {
            Value::Ref(i) => r(self.objects[i].clone())?,
            Value::List(xs) => Value::List(all(xs)?),
            Value::Tuple(xs) => Value::Tuple(all(xs)?),
            Value::Dict(items) => Value::Dict(
                items
                    .into_iter()
                    .map(|(k, v)| Ok((r(k)?, r(v)?)))
                    .collect::<Result<_>>()?,
            ),
            Value::Object {
                callable,
                args,
                state,
            } => Value::Object {
                callable,
                args: all(args)?,
                state: match state {
                    Some(s) => Some(Box::new(r(*s)?)),
                    None => None,
                },
            },
            Value::Array(mut a) => {
                if let ArrayData::Objects(xs) = a.data {
                    a.data = ArrayData::Objects(all(xs)?);
                }
                Value::Array(a)
            }
            Value::Persistent(p) => Value::Persistent(Box::new(r(*p)?)),
            other => other,
        })
    }

    /// The object on top of the stack, to change in place.
    fn top_object(&mut self) -> Result<&mut Value> {
        match self.stack.last() {
            Some(Value::Ref(i)) => Ok(&mut self.objects[*i]),
            Some(other) => Err(bad(format!("{} changed in place", other.kind()))),
            None => Err(bad("stack underflow")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or_else(|| bad("it ends early"))?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(self.take(n)?);
        Ok(u64::from_le_bytes(b))
    }

    fn sized(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| bad("a length beyond memory"))?;
        self.take(n)
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.input[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| bad("a text argument without its end of line"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn text(bytes: &[u8]) -> Result<String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string that is not UTF-8"))
    }

    fn pop(&mut self) -> Result<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(bad("an operation reaches past a mark"));
        }
        self.stack.pop().ok_or_else(|| bad("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().ok_or_else(|| bad("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| bad("no mark"))?;
        if m > self.stack.len() {
            return Err(bad("a mark past the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let v = self
            .stack
            .last()
            .ok_or_else(|| bad("stack underflow"))?
            .clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| bad(format!("memo entry {key} is missing")))?;
        self.push(v);
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<Value>) -> Result<()> {
        if !pairs.len().is_multiple_of(2) {
            return Err(bad("a dict update with an odd number of items"));
        }
        let target = self.top_object()?;
        let Value::Dict(items) = target else {
            return Err(bad(format!("items set on {}", target.kind())));
        };
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match items.iter_mut().find(|(old, _)| *old == k) {
                Some(slot) => slot.1 = v,
                None => items.push((k, v)),
            }
        }
        Ok(())
    }

    fn append(&mut self, values: Vec<Value>) -> Result<()> {
        match self.top_object()? {
            Value::List(items) => {
                items.extend(values);
                Ok(())
            }
            other => Err(bad(format!("items appended to {}", other.kind()))),
        }
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.byte()?;
            if self.stack.len() > 1 << 20 || self.objects.len() > 1 << 24 {
                return Err(bad("too many objects"));
            }
            match op {
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return Err(bad(format!("protocol {proto} is newer than 5")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: the frames are read as one stream
                }
                b'.' => {
                    let v = self.pop()?;
                    return self.resolve(v, 0);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap_or([0; 4]));
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.byte()? as u64
                    } else {
                        self.uint(4)?
                    };
                    let bytes = self.sized(n)?;
                    if bytes.len() > 8 {
                        return Err(bad("an integer wider than 64 bits"));
                    }
                    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
                    let mut b = [if negative { 0xff } else { 0 }; 8];
                    b[..bytes.len()].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(b)));
                }
                b'I' | b'L' => {
                    let s = self.line()?;
                    let t = s.trim_end_matches('L');
                    let v = match t {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(t.parse().map_err(|_| bad(format!("integer {s:?}")))?),
                    };
                    self.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap_or([0; 8]));
                    self.push(Value::Float(v));
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s.parse().map_err(|_| bad(format!("float {s:?}")))?;
                    self.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.uint(4)?,
                        0x8c => self.byte()? as u64,
                        _ => self.uint(8)?,
                    };
                    let s = Self::text(self.sized(n)?)?;
                    self.push(Value::Str(s));
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        self.uint(4)?
                    } else {
                        self.byte()? as u64
                    };
                    // Python 2 strings: bytes, read as Latin-1 text (NumPy dtype codes).
                    let s = self.sized(n)?.iter().map(|&b| b as char).collect();
                    self.push(Value::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.uint(4)?,
                        b'C' => self.byte()? as u64,
                        _ => self.uint(8)?,
                    };
                    let b = self.sized(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b')' => self.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(bad("stack underflow"));
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items));
                }
                b']' => self.push_object(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_object(Value::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => self.push_object(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_object(Value::Dict(Vec::new()));
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                0x8f => self.push_object(Value::List(Vec::new())), // EMPTY_SET: kept as a list
                0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_object(Value::List(items));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.push(Value::Global(format!("{m}.{n}")))
                        }
                        _ => return Err(bad("STACK_GLOBAL without two strings")),
                    }
                }
                b'R' | 0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // NEWOBJ_EX's keyword arguments
                    }
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self.resolve(args, 0)?;
                    let v = call(callable, args)?;
                    self.push_object(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let state = self.resolve(state, 0)?;
                    let target = self.top_object()?;
                    let built = build(std::mem::replace(target, Value::None), state)?;
                    *self.top_object()? = built;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::Persistent(Box::new(pid)));
                }
                b'P' => {
                    let pid = self.line()?;
                    self.push(Value::Persistent(Box::new(Value::Str(pid))));
                }
                b'q' => {
                    let k = self.byte()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.uint(4)?;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let k = self
                        .line()?
                        .parse()
                        .map_err(|_| bad("PUT without a number"))?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.byte()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.uint(4)?;
                    self.memo_get(k)?;
                }
                b'g' => {
                    let k = self
                        .line()?
                        .parse()
                        .map_err(|_| bad("GET without a number"))?;
                    self.memo_get(k)?;
                }
                other => {
                    return Err(bad(format!(
                        "opcode 0x{other:02x} at byte {} is not supported",
                        self.pos - 1
                    )))
                }
            }
        }
    }
}

fn args_of(args: Value) -> Vec<Value> {
    match args {
        Value::Tuple(v) | Value::List(v) => v,
        other => vec![other],
    }
}

fn usize_of(v: &Value, what: &str) -> Result<usize> {
    v.as_i64()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| bad(format!("{what} is {}", v.kind())))
}

fn usizes_of(v: &Value, what: &str) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            items.iter().map(|i| usize_of(i, what)).collect()
        }
        other => Err(bad(format!("{what} is {}", other.kind()))),
    }
}

/// The value of calling `callable` (a class or function of the pickle) with `args`.
fn call(callable: Value, args: Value) -> Result<Value> {
    let Value::Global(name) = callable else {
        return Err(bad(format!("a call of {}", callable.kind())));
    };
    let a = args_of(args);
    let name = name.replace("__builtin__.", "builtins.");
    Ok(match name.as_str() {
        "collections.OrderedDict" | "collections.defaultdict" | "builtins.dict" => {
            match a.into_iter().find(|v| matches!(v, Value::Dict(_))) {
                Some(d) => d,
                None => Value::Dict(Vec::new()),
            }
        }
        "builtins.bytes" | "builtins.bytearray" => match a.first() {
            None => Value::Bytes(Vec::new()),
            Some(Value::Bytes(b)) => Value::Bytes(b.clone()),
            Some(Value::List(v)) => Value::Bytes(
                v.iter()
                    .map(|x| {
                        x.as_i64()
                            .map(|i| i as u8)
                            .ok_or_else(|| bad("bytes of non-integers"))
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(other) => return Err(bad(format!("bytes() of {}", other.kind()))),
        },
        "builtins.set" | "builtins.frozenset" | "builtins.list" | "builtins.tuple" => {
            match a.into_iter().next() {
                Some(Value::List(v)) | Some(Value::Tuple(v)) => Value::List(v),
                _ => Value::List(Vec::new()),
            }
        }
        // Python 3 pickles bytes at protocol 2 as the Latin-1 encoding of a text string.
        "_codecs.encode" => match a.as_slice() {
            [Value::Str(s), Value::Str(enc)] if enc == "latin1" || enc == "latin-1" => {
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    out.push(
                        u8::try_from(c as u32).map_err(|_| bad("Latin-1 bytes out of range"))?,
                    );
                }
                Value::Bytes(out)
            }
            _ => return Err(bad("_codecs.encode of something other than Latin-1 text")),
        },
        "numpy.dtype" => match a.first() {
            Some(Value::Str(s)) => Value::Dtype(s.clone()),
            _ => return Err(bad("numpy.dtype without a name")),
        },
        "numpy.core.multiarray._reconstruct" | "numpy._core.multiarray._reconstruct" => {
            Value::Array(NdArray {
                dtype: String::new(),
                shape: Vec::new(),
                fortran_order: false,
                data: ArrayData::Raw(Vec::new()),
            })
        }
        "numpy.core.multiarray.scalar" | "numpy._core.multiarray.scalar" => match a.as_slice() {
            [Value::Dtype(d), Value::Bytes(b)] => {
                let arr = NdArray {
                    dtype: d.clone(),
                    shape: vec![1],
                    fortran_order: false,
                    data: ArrayData::Raw(b.clone()),
                };
                arr.values()
                    .and_then(|v| v.into_iter().next())
                    .unwrap_or(Value::Array(arr))
            }
            _ => Value::Object {
                callable: name,
                args: a,
                state: None,
            },
        },
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let [storage, offset, shape, stride, ..] = a.as_slice() else {
                return Err(bad("a tensor without its storage, offset, size and stride"));
            };
            let Value::Persistent(pid) = storage else {
                return Err(bad(format!("a tensor whose storage is {}", storage.kind())));
            };
            let pid = args_of((**pid).clone());
            let (storage_type, key) = match pid.as_slice() {
                [Value::Str(tag), ty, Value::Str(key), ..] if tag == "storage" => {
                    let ty = match ty {
                        Value::Global(g) => g.rsplit('.').next().unwrap_or(g).to_string(),
                        Value::Dtype(d) => d.clone(),
                        other => {
                            return Err(bad(format!("a storage type that is {}", other.kind())))
                        }
                    };
                    (ty, key.clone())
                }
                _ => return Err(bad("a tensor storage that is not torch's ('storage', ...)")),
            };
            Value::Tensor(TensorRef {
                key,
                storage_type,
                offset: usize_of(offset, "a tensor offset")?,
                shape: usizes_of(shape, "a tensor size")?,
                stride: usizes_of(stride, "a tensor stride")?,
            })
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => a
            .into_iter()
            .next()
            .ok_or_else(|| bad("a parameter without its tensor"))?,
        _ => Value::Object {
            callable: name,
            args: a,
            state: None,
        },
    })
}

/// `target` after BUILD with `state` (`__setstate__` or a dict update).
fn build(target: Value, state: Value) -> Result<Value> {
    Ok(match target {
        Value::Array(mut arr) => {
            // (version, shape, dtype, is_fortran, data) from ndarray.__reduce__
            let items = args_of(state);
            let [_, shape, dtype, fortran, data] = items.as_slice() else {
                return Err(bad("a NumPy array state that is not a 5-tuple"));
            };
            arr.shape = usizes_of(shape, "a NumPy shape")?;
            arr.dtype = match dtype {
                Value::Dtype(d) => d.clone(),
                other => return Err(bad(format!("a NumPy dtype that is {}", other.kind()))),
            };
            arr.fortran_order = fortran.as_bool().unwrap_or(false);
            arr.data = match data {
                Value::Bytes(b) => ArrayData::Raw(b.clone()),
                Value::List(v) => ArrayData::Objects(v.clone()),
                other => return Err(bad(format!("NumPy array data that are {}", other.kind()))),
            };
            Value::Array(arr)
        }
        Value::Dtype(name) => {
            // (version, byte order, ...): the order goes in front of the name, as NumPy
            // writes `dtype.str` ("<f4"); "|" means not applicable, kept as is.
            let order = args_of(state)
                .get(1)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let kind = name.trim_start_matches(['<', '>', '|', '=']);
            let order = if order == "=" || order.is_empty() {
                "<".to_string()
            } else {
                order
            };
            Value::Dtype(if kind == "O" || kind.starts_with("O") {
                "|O".to_string()
            } else {
                format!("{order}{kind}")
            })
        }
        Value::Dict(mut items) => {
            if let Value::Dict(more) = state {
                for (k, v) in more {
                    match items.iter_mut().find(|(old, _)| *old == k) {
                        Some(slot) => slot.1 = v,
                        None => items.push((k, v)),
                    }
                }
            }
            Value::Dict(items)
        }
        Value::Object { callable, args, .. } => Value::Object {
            callable,
            args,
            state: Some(Box::new(state)),
        },
        // Tensors' BUILD sets Python-side attributes only.
        other @ Value::Tensor(_) => other,
        other => {
            return Err(bad(format!("a state given to {}", other.kind())));
        }
    })
}

/// Runs the pickle in `bytes` and returns the value it stores.
pub fn read(bytes: &[u8]) -> Result<Value> {
    Machine {
        input: bytes,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
    }
    .run()
}

/// Writes `v` as a protocol-2 pickle, as `torch.save` does: dicts, lists, tuples, scalars,
/// strings, classes named by [`Value::Global`] and torch tensors ([`Value::Tensor`], whose
/// storages the caller writes into the archive under their keys). Other values are refused.
pub fn write(v: &Value) -> Result<Vec<u8>> {
    let mut out = vec![0x80, 2];
    write_value(v, &mut out)?;
    out.push(b'.');
    Ok(out)
}

fn write_global(name: &str, out: &mut Vec<u8>) -> Result<()> {
    let (module, attr) = name
        .rsplit_once('.')
        .ok_or_else(|| bad(format!("class name {name:?} without a module")))?;
    out.push(b'c');
    for part in [module, attr] {
        if part.contains('\n') {
            return Err(bad("a class name with a line break"));
        }
        out.extend_from_slice(part.as_bytes());
        out.push(b'\n');
    }
    Ok(())
}

fn write_str(s: &str, out: &mut Vec<u8>) -> Result<()> {
    let n = u32::try_from(s.len()).map_err(|_| bad("a string over 4 GB"))?;
    out.push(b'X');
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn write_items(items: &[Value], out: &mut Vec<u8>) -> Result<()> {
    items.iter().try_for_each(|x| write_value(x, out))
}

fn write_value(v: &Value, out: &mut Vec<u8>) -> Result<()> {
    match v {
        Value::None => out.push(b'N'),
        Value::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
        Value::Int(i) => match i32::try_from(*i) {
            Ok(small) => {
                out.push(b'J');
                out.extend_from_slice(&small.to_le_bytes());
            }
            Err(_) => {
                out.extend_from_slice(&[0x8a, 8]);
                out.extend_from_slice(&i.to_le_bytes());
            }
        },
        Value::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => write_str(s, out)?,
        Value::List(items) => {
            out.push(b']');
            if !items.is_empty() {
                out.push(b'(');
                write_items(items, out)?;
                out.push(b'e');
            }
        }
        Value::Tuple(items) => {
            out.push(b'(');
            write_items(items, out)?;
            out.push(b't');
        }
        Value::Dict(items) => {
            out.push(b'}');
            if !items.is_empty() {
                out.push(b'(');
                for (k, x) in items {
                    write_value(k, out)?;
                    write_value(x, out)?;
                }
                out.push(b'u');
            }
        }
        Value::Global(name) => write_global(name, out)?,
        Value::Tensor(t) => {
            // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
            let numel = t.shape.iter().product::<usize>() as i64;
            let ints =
                |xs: &[usize]| Value::Tuple(xs.iter().map(|&x| Value::Int(x as i64)).collect());
            write_global("torch._utils._rebuild_tensor_v2", out)?;
            out.push(b'(');
            let pid = Value::Tuple(vec![
                Value::Str("storage".into()),
                Value::Global(format!("torch.{}", t.storage_type)),
                Value::Str(t.key.clone()),
                Value::Str("cpu".into()),
                Value::Int(numel),
            ]);
            write_value(&pid, out)?;
            out.push(b'Q');
            write_items(
                &[
                    Value::Int(t.offset as i64),
                    ints(&t.shape),
                    ints(&t.stride),
                    Value::Bool(false),
                ],
                out,
            )?;
            write_global("collections.OrderedDict", out)?;
            out.extend_from_slice(b")R");
            out.extend_from_slice(b"tR");
        }
        other => return Err(bad(format!("{} cannot be written", other.kind()))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pickles written by CPython 3.12 (`pickle.dumps(obj, protocol=p)`).
    #[test]
    fn reads_python_values() {
        // {'a': [1, -2, 3.5], 'b': (True, None), 'c': 'é'} at protocol 2
        let p2 = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00eX\x01\x00\x00\x00bq\x03\x88N\x86q\x04X\x01\x00\x00\x00cq\x05X\x02\x00\x00\x00\xc3\xa9q\x06u.";
        let v = read(p2).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![
                Value::Int(1),
                Value::Int(-2),
                Value::Float(3.5)
            ]))
        );
        assert_eq!(
            v.get("b"),
            Some(&Value::Tuple(vec![Value::Bool(true), Value::None]))
        );
        assert_eq!(v.get("c").and_then(Value::as_str), Some("é"));
        // the same at protocol 4 (frames, short strings, MEMOIZE)
        let p4 = b"\x80\x04\x95.\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00e\x8c\x01b\x94\x88N\x86\x94\x8c\x01c\x94\x8c\x02\xc3\xa9\x94u.";
        assert_eq!(read(p4).unwrap(), v);
        // bytes at protocol 2 (b'\x00\xff') go through _codecs.encode
        let bytes2 = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00\x00\xc3\xbfq\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04.";
        assert_eq!(read(bytes2).unwrap(), Value::Bytes(vec![0, 255]));
        // a big integer (2**40) as LONG1
        assert_eq!(
            read(b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\x01.").unwrap(),
            Value::Int(1 << 40)
        );
    }

    #[test]
    fn refuses_broken_pickles_without_panicking() {
        for bad_input in [
            &b""[..],
            b"\x80\x02",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02s.",
            b"\x80\x02e.",
            b"\x80\x02h\x05.",
            b"\x80\x02\xff",
            b"\x80\x09N.",
            b"\x80\x02(t(u.",
        ] {
            assert!(read(bad_input).is_err(), "{bad_input:?}");
        }
    }

    #[test]
    fn written_pickles_read_back() {
        let v = Value::Dict(vec![
            (
                Value::Str("a".into()),
                Value::List(vec![Value::Int(1), Value::Int(-1 << 40)]),
            ),
            (
                Value::Str("b".into()),
                Value::Tuple(vec![Value::Float(0.25), Value::None]),
            ),
            (Value::Str("c".into()), Value::List(Vec::new())),
            (Value::Str("d".into()), Value::Bool(true)),
        ]);
        assert_eq!(read(&write(&v).unwrap()).unwrap(), v);
        let t = Value::Tensor(TensorRef {
            key: "3".into(),
            storage_type: "FloatStorage".into(),
            offset: 0,
            shape: vec![2, 3],
            stride: vec![3, 1],
        });
        assert_eq!(read(&write(&t).unwrap()).unwrap(), t);
    }

    #[test]
    fn decodes_numpy_arrays() {
        let a = NdArray {
            dtype: "<i8".into(),
            shape: vec![2],
            fortran_order: false,
            data: ArrayData::Raw([5i64.to_le_bytes(), (-1i64).to_le_bytes()].concat()),
        };
        assert_eq!(a.values(), Some(vec![Value::Int(5), Value::Int(-1)]));
        let u = NdArray {
            dtype: "<U2".into(),
            shape: vec![2],
            fortran_order: false,
            data: ArrayData::Raw(
                ['a', 'b', 'c', '\0']
                    .iter()
                    .flat_map(|c| (*c as u32).to_le_bytes())
                    .collect(),
            ),
        };
        assert_eq!(
            u.values(),
            Some(vec![Value::Str("ab".into()), Value::Str("c".into())])
        );
        let i4 = NdArray {
            dtype: "<i4".into(),
            shape: vec![1],
            fortran_order: false,
            data: ArrayData::Raw((-7i32).to_le_bytes().to_vec()),
        };
        assert_eq!(i4.values(), Some(vec![Value::Int(-7)]));
    }
}

//! The layout of each tensor in a `torch.save` file: shape, strides and storage offset, read from
//! its `data.pkl` by a small pickle machine. burn-store's `PytorchReader` reads a tensor's values
//! from its storage in row-major order and drops the strides, which is wrong for a tensor saved
//! as a view: torch's orthogonal parametrisation keeps its `base` as a transpose (strides
//! `(1, d)`), so pyvene's saved `base` comes back transposed. [`fix_layout`] puts such values in
//! their logical order.
//!
//! Only what `torch.save` writes for a state dict is understood (protocol 2: dicts, tuples,
//! strings, numbers, `_rebuild_tensor_v2`, `OrderedDict`); anything else ends the scan with an
//! error naming the opcode.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// A tensor's view of its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Sizes.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
    /// Offset into the storage, in elements.
    pub offset: usize,
}

impl Layout {
    /// Whether the values are the storage's, row-major, from the offset.
    pub fn is_row_major(&self) -> bool {
        let mut expected = 1;
        for (size, stride) in self.shape.iter().zip(&self.stride).rev() {
            if *size > 1 && *stride != expected {
                return false;
            }
            expected *= size;
        }
        true
    }
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    Tensor(Layout),
    Mark,
    Other,
}

fn as_usizes(v: &Value) -> Option<Vec<usize>> {
    match v {
        Value::Tuple(items) => {
            items.iter().map(|i| if let Value::Int(n) = i { Some(*n as usize) } else { None }).collect()
        }
        _ => None,
    }
}

/// A pickle machine over `bytes`: its stack and memo.
struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let at = self.at;
        let s = self.bytes.get(at..at + n).ok_or_else(|| format!("the pickle ends inside an opcode at byte {at}"))?;
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn line(&mut self) -> Result<String, String> {
        let end = self.bytes[self.at..].iter().position(|&b| b == b'\n').ok_or("GLOBAL without a newline")?;
        let s = String::from_utf8_lossy(&self.bytes[self.at..self.at + end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }

    /// The items above the topmost mark, the mark removed.
    fn pop_mark(&mut self) -> Vec<Value> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).unwrap_or(0);
        self.stack.split_off(at).into_iter().skip(1).collect()
    }

    fn remember(&mut self, i: u32) {
        self.memo.insert(i, self.stack.last().cloned().unwrap_or(Value::None));
    }

    /// Numbers, booleans and None; `false` when `op` is none of them.
    fn scalar(&mut self, op: u8) -> Result<bool, String> {
        let v = match op {
            b'N' => Value::None,
            0x88 | 0x89 => Value::Int((op == 0x88) as i64),
            b'K' => Value::Int(self.take(1)?[0] as i64),
            b'M' => {
                let s = self.take(2)?;
                Value::Int(u16::from_le_bytes([s[0], s[1]]) as i64)
            }
            b'J' => Value::Int(self.u32()? as i32 as i64),
            0x8a => {
                let n = self.take(1)?[0] as usize;
                let s = self.take(n)?;
                let mut v: i64 = 0;
                for (i, b) in s.iter().enumerate().take(8) {
                    v |= (*b as i64) << (8 * i);
                }
                if n > 0 && n < 8 && s[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                Value::Int(v)
            }
            b'G' => {
                self.take(8)?;
                Value::Float
            }
            b'X' | 0x8c | b'B' | b'C' => {
                let n = if op == 0x8c || op == b'C' { self.take(1)?[0] as usize } else { self.u32()? as usize };
                let s = self.take(n)?;
                if op == b'X' || op == 0x8c {
                    Value::Str(String::from_utf8_lossy(s).into_owned())
                } else {
                    Value::Other
                }
            }
            _ => return Ok(false),
        };
        self.stack.push(v);
        Ok(true)
    }

    /// `callable(args)`: a tensor for `_rebuild_tensor_v2`, an empty dict for `OrderedDict`.
    fn reduce(&mut self) {
        let args = self.stack.pop();
        let callable = self.stack.pop();
        self.stack.push(match (callable, args) {
            (Some(Value::Global(g)), Some(Value::Tuple(a))) if g.ends_with("_rebuild_tensor_v2") && a.len() >= 4 => {
                match (&a[1], as_usizes(&a[2]), as_usizes(&a[3])) {
                    (Value::Int(offset), Some(shape), Some(stride)) => {
                        Value::Tensor(Layout { shape, stride, offset: *offset as usize })
                    }
                    _ => Value::Other,
                }
            }
            (Some(Value::Global(g)), _) if g.ends_with("OrderedDict") => Value::Dict(Vec::new()),
            _ => Value::Other,
        });
    }

    /// Containers, globals, the memo and calls; `false` at STOP.
    fn step(&mut self, op: u8) -> Result<bool, String> {
        match op {
            0x80 => drop(self.take(1)?),
            0x95 => drop(self.take(8)?),
            b'}' => self.stack.push(Value::Dict(Vec::new())),
            b']' | b')' => self.stack.push(Value::Tuple(Vec::new())),
            b'(' => self.stack.push(Value::Mark),
            b'c' => {
                let (module, name) = (self.line()?, self.line()?);
                self.stack.push(Value::Global(format!("{module}.{name}")));
            }
            0x93 => match (self.stack.pop(), self.stack.pop()) {
                (Some(Value::Str(n)), Some(Value::Str(m))) => self.stack.push(Value::Global(format!("{m}.{n}"))),
                _ => return Err("STACK_GLOBAL without two names".into()),
            },
            b'q' => {
                let i = self.take(1)?[0] as u32;
                self.remember(i);
            }
            b'r' => {
                let i = self.u32()?;
                self.remember(i);
            }
            0x94 => self.remember(self.memo.len() as u32),
            b'h' | b'j' => {
                let i = if op == b'h' { self.take(1)?[0] as u32 } else { self.u32()? };
                self.stack.push(self.memo.get(&i).cloned().unwrap_or(Value::None));
            }
            b't' => {
                let items = self.pop_mark();
                self.stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let items = self.stack.split_off(self.stack.len().saturating_sub((op - 0x84) as usize));
                self.stack.push(Value::Tuple(items));
            }
            b'Q' => {
                self.stack.pop();
                self.stack.push(Value::Other);
            }
            b'R' | 0x81 => self.reduce(),
            b'b' | b'a' => drop(self.stack.pop()),
            b'e' => drop(self.pop_mark()),
            b's' => {
                let (v, k) = (self.stack.pop().unwrap_or(Value::None), self.stack.pop().unwrap_or(Value::None));
                if let Some(Value::Dict(d)) = self.stack.last_mut() {
                    d.push((k, v));
                }
            }
            b'u' => {
                let items = self.pop_mark();
                if let Some(Value::Dict(d)) = self.stack.last_mut() {
                    d.extend(items.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())));
                }
            }
            b'.' => return Ok(false),
            other => {
                return Err(format!(
                    "pickle opcode 0x{other:02x} at byte {} is not one torch.save writes for a state dict",
                    self.at - 1
                ));
            }
        }
        Ok(true)
    }
}

/// Runs the pickle in `bytes` and returns each tensor's layout by its key in the top-level dict.
pub fn layouts(bytes: &[u8]) -> Result<HashMap<String, Layout>, String> {
    let mut m = Machine { bytes, at: 0, stack: Vec::new(), memo: HashMap::new() };
    loop {
        let op = m.take(1)?[0];
        if !m.scalar(op)? && !m.step(op)? {
            break;
        }
    }
    let Some(Value::Dict(top)) = m.stack.pop() else { return Err("the pickle's result is not a dict".into()) };
    Ok(top
        .into_iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(l)) => Some((k, l)),
            _ => None,
        })
        .collect())
}

/// The layouts of every tensor in the `torch.save` zip at `path` (from its `…/data.pkl`).
pub fn file_layouts(path: &Path) -> Result<HashMap<String, Layout>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("not a torch zip file: {e}"))?;
    let name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or("no data.pkl in the zip")?;
    let mut bytes = Vec::new();
    zip.by_name(&name).map_err(|e| e.to_string())?.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    layouts(&bytes)
}

/// `values` read row-major from the offset (burn-store's reading) put in the logical order of
/// `layout`, when the view covers exactly those values (a permutation, such as a transpose);
/// `Err` for a view with gaps.
pub fn fix_layout(values: Vec<f32>, layout: &Layout) -> Result<Vec<f32>, String> {
    if layout.is_row_major() {
        return Ok(values);
    }
    let n: usize = layout.shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; layout.shape.len()];
    for _ in 0..n {
        let at: usize = index.iter().zip(&layout.stride).map(|(i, s)| i * s).sum();
        out.push(*values.get(at).ok_or_else(|| {
            format!("a view with strides {:?} over more values than its {n}: not read", layout.stride)
        })?);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < layout.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

//! A pickle reader for PyTorch state dicts (`data.pkl` in a `pytorch_model.bin`), written for
//! untrusted files: the opcodes `torch.save` writes (protocol 2, and protocol 4's framing and
//! short forms) run on a small stack machine that never panics and whose costs are bounded by
//! the input: a length is checked against the bytes left before anything is allocated for it,
//! memo fetches share values instead of copying them, nesting is capped at [`MAX_DEPTH`] and
//! the work (opcodes run plus values copied) at [`MAX_WORK`].
//!
//! (candle's pickle reader, used before, allocated a string's declared length up front — 4 GB
//! from 5 bytes — deep-copied memo entries and indexed tuples without checking their length:
//! all found by fuzzing, see docs/hardening.md.)

use std::collections::HashMap;
use std::rc::Rc;

use crate::error::{Error, Result};

/// The deepest nesting of tuples, lists, dicts and calls (a state dict needs 6).
pub const MAX_DEPTH: u32 = 64;
/// The most work a pickle may take: opcodes run plus values copied (copy-on-write of a shared
/// list or dict). A state dict takes about 20 per tensor.
pub const MAX_WORK: u64 = 1 << 25;

/// A pickled value. Compound values are shared: a memo fetch is O(1), as in Python.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// A global (GLOBAL / STACK_GLOBAL): module and name.
    Global(Rc<(String, String)>),
    Tuple(Rc<Node>),
    List(Rc<Node>),
    /// Keys and values, alternating.
    Dict(Rc<Node>),
    /// `callable(*args)` (REDUCE, NEWOBJ): `[callable, args]`.
    Call(Rc<Node>),
    /// A persistent id (BINPERSID): `[id]`.
    Persistent(Rc<Node>),
}

/// The items of a compound value and how deep it nests.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub items: Vec<Value>,
    depth: u32,
}

impl Node {
    /// `[a, b]` (a call's callable and arguments), one level above both.
    pub fn pair(a: Value, b: Value) -> Node {
        let depth = 1 + a.depth().max(b.depth());
        Node {
            items: vec![a, b],
            depth,
        }
    }
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(n)
            | Value::List(n)
            | Value::Dict(n)
            | Value::Call(n)
            | Value::Persistent(n) => n.depth,
            _ => 0,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a tuple.
    pub fn as_tuple(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(n) => Some(&n.items),
            _ => None,
        }
    }

    /// The (key, value) pairs of a dict.
    pub fn as_dict(&self) -> Option<impl Iterator<Item = (&Value, &Value)>> {
        match self {
            Value::Dict(n) => Some(n.items.chunks_exact(2).map(|kv| (&kv[0], &kv[1]))),
            _ => None,
        }
    }

    /// `(module, name)` of a global.
    pub fn as_global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global(g) => Some((&g.0, &g.1)),
            _ => None,
        }
    }

    /// `(callable, args)` of a call.
    pub fn as_call(&self) -> Option<(&Value, &Value)> {
        match self {
            Value::Call(n) => match n.items.as_slice() {
                [callable, args] => Some((callable, args)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The id of a persistent reference.
    pub fn as_persistent(&self) -> Option<&Value> {
        match self {
            Value::Persistent(n) => n.items.first(),
            _ => None,
        }
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::Weights(format!(
        "pytorch_model.bin: data.pkl cannot be read: {}",
        msg.into()
    ))
}

/// A compound value of `items`, checked against [`MAX_DEPTH`].
fn node(items: Vec<Value>) -> Result<Rc<Node>> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(err(format!(
            "values nest deeper than {MAX_DEPTH} levels: the file is damaged"
        )));
    }
    Ok(Rc::new(Node { items, depth }))
}

struct Machine<'a> {
    b: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    /// stack lengths at each MARK
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    work: u64,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.b.len() - self.at < n {
            return Err(err(format!(
                "an argument of {n} bytes at byte {} runs past its end ({} bytes): the file is truncated or damaged",
                self.at,
                self.b.len()
            )));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A string of `len` bytes (checked against the bytes left before it is copied).
    fn string(&mut self, len: u64) -> Result<Value> {
        let len = usize::try_from(len).map_err(|_| err("a string length overflows"))?;
        let s = self.take(len)?;
        let s = std::str::from_utf8(s).map_err(|_| err("a string is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }

    /// The rest of the line (GLOBAL's arguments).
    fn line(&mut self) -> Result<String> {
        let rest = &self.b[self.at..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| err("a GLOBAL runs past the end"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(err("a value is taken across a MARK"));
        }
        self.stack
            .pop()
            .ok_or_else(|| err("an opcode needs a value the stack does not have"))
    }

    /// The values pushed since the last MARK.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| err("an opcode needs a MARK there is none of"))?;
        Ok(self.stack.split_off(m))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn spend(&mut self, n: usize) -> Result<()> {
        self.work += n as u64;
        if self.work > MAX_WORK {
            return Err(err(format!(
                "it takes more than {MAX_WORK} steps to unpack: the file is damaged"
            )));
        }
        Ok(())
    }

    /// Appends `extra` to the list or dict on top of the stack (copied first if shared).
    fn extend_top(&mut self, extra: Vec<Value>, dict: bool) -> Result<()> {
        if dict && !extra.len().is_multiple_of(2) {
            return Err(err("SETITEMS with a key and no value"));
        }
        let across_mark = self.marks.last().is_some_and(|&m| m >= self.stack.len());
        let top = match self.stack.last_mut() {
            _ if across_mark => None,
            Some(Value::List(n)) if !dict => Some(n),
            Some(Value::Dict(n)) if dict => Some(n),
            _ => None,
        };
        let Some(n) = top else {
            return Err(err(format!(
                "items added to something that is not a {}",
                if dict { "dict" } else { "list" }
            )));
        };
        let copied = if Rc::strong_count(n) > 1 {
            n.items.len()
        } else {
            0
        };
        let depth = 1 + extra.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(err(format!(
                "values nest deeper than {MAX_DEPTH} levels: the file is damaged"
            )));
        }
        let node = Rc::make_mut(n);
        node.items.extend(extra);
        node.depth = node.depth.max(depth);
        self.spend(copied)
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            self.spend(1)?;
            let at = self.at;
            let op = self.u8().map_err(|_| err("it ends without STOP"))?;
            match op {
                0x80 => {
                    // PROTO
                    self.u8()?;
                }
                0x95 => {
                    // FRAME: a length hint
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))
                }
                0x8a => {
                    // LONG1: n bytes, little-endian two's complement
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(err(format!("an integer of {n} bytes (at most 8)")));
                    }
                    let s = self.take(n)?;
                    let mut a = [0u8; 8];
                    a[..n].copy_from_slice(s);
                    if n > 0 && n < 8 && s[n - 1] & 0x80 != 0 {
                        a[n..].fill(0xff);
                    }
                    self.push(Value::Int(i64::from_le_bytes(a)))
                }
                b'G' => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(self.take(8)?);
                    self.push(Value::Float(f64::from_be_bytes(a)))
                }
                b'X' => {
                    let n = self.u32()?;
                    let s = self.string(n as u64)?;
                    self.push(s)
                }
                0x8c => {
                    let n = self.u8()?;
                    let s = self.string(n as u64)?;
                    self.push(s)
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = self.string(n)?;
                    self.push(s)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(Rc::new((module, name))))
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (module.as_str(), name.as_str()) else {
                        return Err(err("STACK_GLOBAL of values that are not strings"));
                    };
                    self.push(Value::Global(Rc::new((m.to_string(), n.to_string()))))
                }
                b'(' => self.marks.push(self.stack.len()),
                b')' => self.push(Value::Tuple(node(Vec::new())?)),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(node(items)?))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(node(items)?))
                }
                b']' => self.push(Value::List(node(Vec::new())?)),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(node(items)?))
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v], false)?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, false)?
                }
                b'}' => self.push(Value::Dict(node(Vec::new())?)),
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err(err("DICT with a key and no value"));
                    }
                    self.push(Value::Dict(node(items)?))
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(vec![k, v], true)?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, true)?
                }
                b'R' | 0x81 => {
                    // REDUCE, NEWOBJ
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let ordered_dict = matches!(
                        callable.as_global(),
                        Some(("collections", "OrderedDict" | "defaultdict"))
                    );
                    let v = if ordered_dict {
                        Value::Dict(node(Vec::new())?)
                    } else {
                        Value::Call(node(vec![callable, args])?)
                    };
                    self.push(v)
                }
                b'b' => {
                    // BUILD: the state (e.g. a state dict's `_metadata`) is not needed
                    self.pop()?;
                    let obj = self.pop()?;
                    self.push(obj)
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Value::Persistent(node(vec![id])?))
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.get(i)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.get(i)?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.put(i)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.put(i)?
                }
                0x94 => {
                    // MEMOIZE
                    let i = u32::try_from(self.memo.len()).map_err(|_| err("memo overflow"))?;
                    self.put(i)?
                }
                other => {
                    return Err(err(format!(
                        "opcode 0x{other:02x} at byte {at} is not one torch.save writes"
                    )))
                }
            }
        }
    }

    fn get(&mut self, i: u32) -> Result<()> {
        let v = self
            .memo
            .get(&i)
            .cloned()
            .ok_or_else(|| err(format!("memo entry {i} is read before it is written")))?;
        self.push(v);
        Ok(())
    }

    fn put(&mut self, i: u32) -> Result<()> {
        let v = match (self.marks.last(), self.stack.last()) {
            (Some(&m), _) if m >= self.stack.len() => None,
            (_, v) => v.cloned(),
        }
        .ok_or_else(|| err("a memo entry is written from an empty stack"))?;
        self.memo.insert(i, v);
        Ok(())
    }
}

/// Runs a pickle to its STOP and returns the value it builds.
pub fn load(bytes: &[u8]) -> Result<Value> {
    Machine {
        b: bytes,
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        work: 0,
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_glimpse_writes() {
        let p = crate::io::torch::state_dict_pickle(&[
            (
                "a.weight".into(),
                vec![3, 4],
                crate::io::torch::TorchDType::F32,
            ),
            ("b".into(), vec![300], crate::io::torch::TorchDType::F16),
        ]);
        let v = load(&p).unwrap();
        let items: Vec<_> = v.as_dict().unwrap().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0.as_str(), Some("a.weight"));
        let (f, args) = items[1].1.as_call().unwrap();
        assert_eq!(f.as_global(), Some(("torch._utils", "_rebuild_tensor_v2")));
        assert_eq!(
            args.as_tuple().unwrap()[2].as_tuple().unwrap(),
            [Value::Int(300)]
        );
    }

    /// Every legacy fixture's state dict (torch.save of transformers models: parameters, old
    /// buffers, tied copies) reads as candle's pickle reader, used before, read it.
    #[test]
    fn torch_save_state_dicts_read_as_candle_read_them() {
        use crate::io::torch::{
            parse_directory, parse_local_header, parse_pickle, Directory, Next,
        };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy");
        for model in ["git", "clip", "blip-caption", "blip-vqa", "vit-gpt2"] {
            let bytes = std::fs::read(root.join(model).join("pytorch_model.bin")).unwrap();
            let Directory::Entries(entries, _) =
                parse_directory(&bytes, 0, bytes.len() as u64).unwrap()
            else {
                panic!("{model}: directory")
            };
            let e = entries
                .iter()
                .find(|e| e.name.ends_with("/data.pkl"))
                .unwrap();
            let at = e.local_offset as usize;
            let Next::Entry(h) = parse_local_header(&bytes[at..]).unwrap() else {
                panic!("{model}: local header")
            };
            let pkl = &bytes[at + h.header_len..at + h.header_len + e.size as usize];
            let dir = e.name.strip_suffix("/data.pkl").unwrap();
            let ours = parse_pickle(pkl, dir).unwrap();

            let mut stack = candle_core::pickle::Stack::empty();
            stack.read_loop(&mut std::io::Cursor::new(pkl)).unwrap();
            let candle_core::pickle::Object::Dict(kv) = stack.finalize().unwrap() else {
                panic!("{model}: not a dict")
            };
            let data = std::path::PathBuf::from(format!("{dir}/data"));
            let mut theirs = 0;
            for (k, v) in kv {
                let Ok(Some(info)) = v.into_tensor_info(k, &data) else {
                    continue;
                };
                let t = ours.iter().find(|t| t.name == info.name).unwrap();
                let size = t.dtype.size();
                assert_eq!(t.shape, info.layout.dims(), "{model} {}", t.name);
                assert_eq!(t.strides, info.layout.stride(), "{model} {}", t.name);
                assert_eq!(
                    t.offset * size,
                    info.layout.start_offset(),
                    "{model} {}",
                    t.name
                );
                assert_eq!(t.storage, info.path, "{model} {}", t.name);
                assert_eq!(size, info.dtype.size_in_bytes(), "{model} {}", t.name);
                theirs += 1;
            }
            assert!(
                theirs > 20 && theirs == ours.len(),
                "{model}: {theirs} / {}",
                ours.len()
            );
        }
    }

    #[test]
    fn lying_and_hostile_pickles_are_errors() {
        // a string that claims 4 GB, an integer of 200 bytes, a fetch of nothing, no STOP,
        // nesting past the cap, a list copied over and over
        let mut deep = vec![0x80, 2, b'N'];
        deep.extend(std::iter::repeat_n(0x85u8, 100));
        deep.push(b'.');
        let mut copies = vec![0x80, 2, b']'];
        for _ in 0..20_000 {
            copies.extend([b'q', 0, b'N', b'a']);
        }
        copies.push(b'.');
        for (p, want) in [
            (
                vec![0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'.'],
                "runs past its end",
            ),
            (vec![0x8a, 200, 1, 2, b'.'], "an integer of 200 bytes"),
            (vec![b'h', 7, b'.'], "memo entry 7"),
            (vec![0x80, 2, b'N'], "without STOP"),
            (deep, "deeper than"),
            (copies, "steps to unpack"),
            (vec![b'N', b'(', b'.'], "across a MARK"),
            (vec![0x80, 2, b'Z'], "opcode 0x5a"),
        ] {
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}

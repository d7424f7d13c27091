//! A minimal unpickler for the CIFAR "python version" files (`cifar-100-python/train` etc.):
//! dicts of lists, strings/bytes and numpy uint8 arrays, in protocols 0–5 as written by
//! Python 2 `cPickle` (the official files) or re-pickled by Python 3. No code is executed:
//! globals are kept as names, and only numpy's array reconstruction is interpreted.

use std::collections::HashMap;

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// `func(*args)` with the state later given by BUILD.
    Object {
        func: Box<Value>,
        args: Box<Value>,
        state: Option<Box<Value>>,
    },
    Mark,
}

impl Value {
    /// Dict lookup by a string key, stored as bytes (Python 2), str (Python 3) or as
    /// `_codecs.encode(str, 'latin1')` (Python 3 writing bytes at protocol 2).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find_map(|(k, v)| (k.as_bytes().as_deref() == Some(key.as_bytes())).then_some(v)),
            _ => None,
        }
    }

    /// The byte content of bytes, str (UTF-8) or a `_codecs.encode(str, 'latin1')` object.
    pub fn as_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Value::Bytes(b) => Some(b.clone()),
            Value::Str(s) => Some(s.as_bytes().to_vec()),
            Value::Object { func, args, .. } if matches!(func.as_ref(), Value::Global(m, n) if m == "_codecs" && n == "encode") => match args.as_ref() {
                Value::Tuple(a) => match a.first() {
                    Some(Value::Str(s)) => Some(s.chars().map(|c| c as u32 as u8).collect()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        }
    }

    /// A short description for messages (never the whole value: payloads can be large).
    pub fn describe(&self) -> String {
        match self {
            Value::Global(m, n) => format!("`{}.{}`", clip(m), clip(n)),
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Bytes(b) => format!("bytes ({} bytes)", b.len()),
            Value::Str(s) => format!("a str ({} bytes)", s.len()),
            Value::List(l) => format!("a list ({} items)", l.len()),
            Value::Tuple(l) => format!("a tuple ({} items)", l.len()),
            Value::Dict(d) => format!("a dict ({} items)", d.len()),
            Value::Object { func, .. } => format!("an object built by {}", func.describe()),
            Value::Mark => "a MARK".into(),
        }
    }

    /// A list (or tuple) of integers.
    pub fn as_int_list(&self) -> Option<Vec<i64>> {
        match self {
            Value::List(xs) | Value::Tuple(xs) => xs.iter().map(|x| if let Value::Int(i) = x { Some(*i) } else { None }).collect(),
            _ => None,
        }
    }

    /// A numpy uint8 array as (shape, bytes). Accepts `_codecs.encode(str, 'latin1')` payloads
    /// (how Python 3 writes Python 2 byte strings at protocol 2).
    pub fn as_u8_array(&self) -> Result<(Vec<i64>, Vec<u8>), String> {
        let Value::Object { func, state, .. } = self else { return Err("expected a numpy array".into()) };
        match func.as_ref() {
            Value::Global(m, n) if m.starts_with("numpy") && n == "_reconstruct" => {}
            other => return Err(format!("expected a numpy array, found an object built by {}", other.describe())),
        }
        let Some(state) = state else { return Err("numpy array without state".into()) };
        let Value::Tuple(st) = state.as_ref() else { return Err("numpy array state is not a tuple".into()) };
        if st.len() != 5 {
            return Err(format!("numpy array state has {} fields, expected 5", st.len()));
        }
        let shape = st[1].as_int_list().ok_or("numpy array shape is not a tuple of ints")?;
        let dtype = match &st[2] {
            Value::Object { args, .. } => match args.as_ref() {
                Value::Tuple(a) => match a.first() {
                    Some(Value::Str(s)) => s.clone(),
                    Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                },
                _ => String::new(),
            },
            _ => String::new(),
        };
        if dtype != "u1" {
            return Err(format!("numpy array has dtype `{dtype}`, expected uint8 (`u1`)"));
        }
        let raw = match &st[4] {
            Value::List(_) => return Err("object arrays are not supported".into()),
            Value::Str(_) => return Err("numpy array payload is a str, expected bytes".into()),
            other => other.as_bytes().ok_or("numpy array payload is not bytes")?,
        };
        // Declared dimensions are checked, never trusted: negative or overflowing shapes are refused.
        let n = shape.iter().try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)));
        match n {
            Some(n) if n == raw.len() => {}
            Some(n) => return Err(format!("numpy array shape {shape:?} needs {n} bytes, payload has {}", raw.len())),
            None => return Err(format!("numpy array shape {shape:?} is negative or too large (payload has {} bytes)", raw.len())),
        }
        Ok((shape, raw))
    }
}

/// At most 80 characters of a name, for messages.
fn clip(s: &str) -> String {
    if s.chars().count() <= 80 { s.to_string() } else { format!("{}…", s.chars().take(80).collect::<String>()) }
}

/// Deepest nesting of containers accepted (CIFAR batches nest four deep); deeper files are
/// refused instead of overflowing the stack when values are built, printed or dropped.
pub const MAX_DEPTH: u32 = 64;

/// Copies made by the memo (PUT, GET) may add at most this many times the file's size (plus
/// [`BUDGET_SLACK`]) in bytes and nodes: a memo bomb (one value fetched again and again) is refused
/// instead of exhausting memory. Real CIFAR pickles memoize their pixel payload two (Python 2
/// cPickle, protocol 4) to four times (Python 3 writing `_codecs.encode` at protocol 2).
const BUDGET_PER_BYTE: usize = 8;
const BUDGET_SLACK: usize = 1 << 20;

/// Decodes one pickle. Errors name the opcode and byte offset. Every length is checked against
/// the bytes present, nesting is bounded by [`MAX_DEPTH`], and memory by a multiple of the file size.
pub fn load(data: &[u8]) -> Result<Value, String> {
    let budget = data.len().saturating_mul(BUDGET_PER_BYTE).saturating_add(BUDGET_SLACK);
    let mut st = Vm { data, pos: 0, stack: Vec::new(), memo: HashMap::new(), budget };
    st.run()
}

/// Size (payload bytes + nodes) and nesting depth of a value, tracked alongside it so neither
/// needs a recursive walk.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    size: usize,
    depth: u32,
}

impl Cost {
    fn leaf(bytes: usize) -> Cost {
        Cost { size: bytes.saturating_add(1), depth: 0 }
    }
    /// A container holding `items`.
    fn of<'a>(items: impl IntoIterator<Item = &'a Cost>) -> Cost {
        items.into_iter().fold(Cost { size: 1, depth: 1 }, |c, i| Cost { size: c.size.saturating_add(i.size), depth: c.depth.max(i.depth + 1) })
    }
    /// This container after `item` is added to it.
    fn with(self, item: Cost) -> Cost {
        Cost { size: self.size.saturating_add(item.size), depth: self.depth.max(item.depth + 1) }
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<(Value, Cost)>,
    memo: HashMap<u32, (Value, Cost)>,
    /// What memo copies may still add (see [`BUDGET_PER_BYTE`]).
    budget: usize,
}

impl Vm<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        // `n` may come from a 64-bit length field: compare against what is left, never add.
        if n > self.data.len() - self.pos {
            return Err(format!("truncated pickle at byte {}: {n} bytes declared, {} left", self.pos, self.data.len() - self.pos));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// The length field of a bytes/str opcode: 1 byte (short forms), 8 (protocol 4's) or 4.
    fn length(&mut self, op: u8) -> Result<usize, String> {
        let n = match op {
            b'U' | b'C' | 0x8c => self.u8()? as u64,
            0x8e | 0x8d => self.u64()?,
            _ => self.u32()? as u64,
        };
        self.len_of(n)
    }
    /// A 32- or 64-bit length as usize (a length beyond the address space is truncation too).
    fn len_of(&self, n: u64) -> Result<usize, String> {
        usize::try_from(n).map_err(|_| format!("truncated pickle at byte {}: {n} bytes declared", self.pos))
    }
    fn line(&mut self) -> Result<String, String> {
        let start = self.pos;
        let Some(end) = self.data[start..].iter().position(|&b| b == b'\n') else {
            return Err(format!("truncated pickle at byte {start}: a text argument has no end of line"));
        };
        let s = String::from_utf8_lossy(&self.data[start..start + end]).into_owned();
        self.pos = start + end + 1;
        Ok(s)
    }
    fn push(&mut self, v: Value, c: Cost) -> Result<(), String> {
        if c.depth > MAX_DEPTH {
            return Err(format!("pickle nests deeper than {MAX_DEPTH} levels at byte {}", self.pos));
        }
        self.stack.push((v, c));
        Ok(())
    }
    fn leaf(&mut self, v: Value, bytes: usize) -> Result<(), String> {
        self.push(v, Cost::leaf(bytes))
    }
    fn pop(&mut self) -> Result<(Value, Cost), String> {
        self.stack.pop().ok_or_else(|| format!("pickle stack underflow at byte {}", self.pos))
    }
    fn pop_mark(&mut self) -> Result<Vec<(Value, Cost)>, String> {
        let at = self.stack.iter().rposition(|(v, _)| matches!(v, Value::Mark)).ok_or_else(|| format!("pickle MARK missing at byte {}", self.pos))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut (Value, Cost), String> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| format!("pickle stack empty at byte {pos}"))
    }
    /// Adds `item` to the container on top of the stack through `add`, keeping its cost.
    fn add_to_top(&mut self, item: Cost, add: impl FnOnce(&mut Value) -> Result<(), String>) -> Result<(), String> {
        let pos = self.pos;
        let (v, c) = self.top()?;
        add(v)?;
        *c = c.with(item);
        if c.depth > MAX_DEPTH {
            return Err(format!("pickle nests deeper than {MAX_DEPTH} levels at byte {pos}"));
        }
        Ok(())
    }
    /// Pays for a memo copy of a value of cost `c`.
    fn charge(&mut self, c: Cost, at: usize) -> Result<(), String> {
        self.budget = self
            .budget
            .checked_sub(c.size)
            .ok_or_else(|| format!("pickle memo copies at byte {at} exceed {BUDGET_PER_BYTE}x the file size (a memo bomb, or not a CIFAR batch)"))?;
        Ok(())
    }
    fn bytes(&mut self, n: usize) -> Result<(), String> {
        let v = self.take(n)?.to_vec();
        self.leaf(Value::Bytes(v), n)
    }
    fn string(&mut self, n: usize) -> Result<(), String> {
        let at = self.pos;
        let v = String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("invalid UTF-8 string at byte {at}"))?;
        self.leaf(Value::Str(v), n)
    }
    fn memo_put(&mut self, i: u32, at: usize) -> Result<(), String> {
        let (v, c) = self.top()?.clone();
        self.charge(c, at)?;
        self.memo.insert(i, (v, c));
        Ok(())
    }
    /// APPEND(S): `items` join the list on top of the stack.
    fn extend_list(&mut self, items: Vec<(Value, Cost)>, op: &str, at: usize) -> Result<(), String> {
        let c = Cost::of(items.iter().map(|(_, c)| c));
        let added = Cost { size: c.size - 1, depth: c.depth - 1 };
        self.add_to_top(added, |top| match top {
            Value::List(l) => {
                l.extend(items.into_iter().map(|(v, _)| v));
                Ok(())
            }
            _ => Err(format!("{op} to a non-list at byte {at}")),
        })
    }
    /// SETITEM(S): key/value `items` join the dict on top of the stack.
    fn extend_dict(&mut self, items: Vec<(Value, Cost)>, op: &str, at: usize) -> Result<(), String> {
        let (pairs, c) = Self::pairs(items, at)?;
        let added = Cost { size: c.size - 1, depth: c.depth - 1 };
        self.add_to_top(added, |top| match top {
            Value::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            _ => Err(format!("{op} on a non-dict at byte {at}")),
        })
    }
    /// Pairs of `items` for a dict; an odd count is a malformed file, not a dropped key.
    fn pairs(items: Vec<(Value, Cost)>, at: usize) -> Result<(Vec<(Value, Value)>, Cost), String> {
        if items.len() % 2 != 0 {
            return Err(format!("dict items at byte {at} are not key/value pairs ({} values)", items.len()));
        }
        let cost = Cost::of(items.iter().map(|(_, c)| c));
        let mut it = items.into_iter().map(|(v, _)| v);
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok((pairs, cost))
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            if op == b'.' {
                return self.pop().map(|(v, _)| v);
            }
            if !self.scalar(op, at)? && !self.structure(op, at)? {
                return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}"));
            }
        }
    }

    /// Opcodes that push one value read from the stream (or skip framing); false if `op` is not one.
    fn scalar(&mut self, op: u8, at: usize) -> Result<bool, String> {
        match op {
            0x80 => {
                self.u8()?;
            }
            0x95 => {
                self.u64()?;
            }
            b'}' => self.leaf(Value::Dict(Vec::new()), 0)?,
            b']' => self.leaf(Value::List(Vec::new()), 0)?,
            b')' => self.leaf(Value::Tuple(Vec::new()), 0)?,
            b'(' => self.leaf(Value::Mark, 0)?,
            b'N' => self.leaf(Value::None, 0)?,
            0x88 => self.leaf(Value::Bool(true), 0)?,
            0x89 => self.leaf(Value::Bool(false), 0)?,
            b'K' => {
                let v = self.u8()? as i64;
                self.leaf(Value::Int(v), 0)?
            }
            b'M' => {
                let b = self.take(2)?;
                let v = u16::from_le_bytes([b[0], b[1]]) as i64;
                self.leaf(Value::Int(v), 0)?
            }
            b'J' => {
                let v = self.u32()? as i32 as i64;
                self.leaf(Value::Int(v), 0)?
            }
            0x8a => {
                let n = self.u8()? as usize;
                let b = self.take(n)?.to_vec();
                if n > 8 {
                    return Err(format!("integer too large at byte {at}"));
                }
                let mut v: i64 = 0;
                for (i, x) in b.iter().enumerate() {
                    v |= (*x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                self.leaf(Value::Int(v), 0)?
            }
            b'I' => {
                let l = self.line()?;
                let v = match l.as_str() {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => Value::Int(s.trim().parse().map_err(|_| format!("bad INT at byte {at}"))?),
                };
                self.leaf(v, 0)?
            }
            b'G' => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                self.leaf(Value::Float(f64::from_be_bytes(a)), 0)?
            }
            b'U' | b'C' | b'T' | b'B' | 0x8e => {
                let n = self.length(op)?;
                self.bytes(n)?
            }
            0x8c | b'X' | 0x8d => {
                let n = self.length(op)?;
                self.string(n)?
            }
            b'c' => {
                let m = self.line()?;
                let n = self.line()?;
                let len = m.len() + n.len();
                self.leaf(Value::Global(m, n), len)?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Opcodes that build, fill or memoize values already on the stack; false if `op` is not one.
    fn structure(&mut self, op: u8, at: usize) -> Result<bool, String> {
        match op {
            b'q' => {
                let i = self.u8()? as u32;
                self.memo_put(i, at)?
            }
            b'r' => {
                let i = self.u32()?;
                self.memo_put(i, at)?
            }
            0x94 => {
                let i = self.memo.len() as u32;
                self.memo_put(i, at)?
            }
            b'h' | b'j' => {
                let i = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                let (v, c) = self.memo.get(&i).cloned().ok_or_else(|| format!("pickle memo {i} missing at byte {at}"))?;
                self.charge(c, at)?;
                self.push(v, c)?
            }
            0x93 => {
                let (n, _) = self.pop()?;
                let (m, _) = self.pop()?;
                match (m, n) {
                    (Value::Str(m), Value::Str(n)) => {
                        let len = m.len() + n.len();
                        self.leaf(Value::Global(m, n), len)?
                    }
                    _ => return Err(format!("STACK_GLOBAL needs two strings at byte {at}")),
                }
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(format!("pickle stack underflow at byte {at}"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                let c = Cost::of(items.iter().map(|(_, c)| c));
                self.push(Value::Tuple(items.into_iter().map(|(v, _)| v).collect()), c)?
            }
            b't' | b'l' => {
                let items = self.pop_mark()?;
                let c = Cost::of(items.iter().map(|(_, c)| c));
                let vs = items.into_iter().map(|(v, _)| v).collect();
                self.push(if op == b't' { Value::Tuple(vs) } else { Value::List(vs) }, c)?
            }
            b'd' => {
                let items = self.pop_mark()?;
                let (pairs, c) = Self::pairs(items, at)?;
                self.push(Value::Dict(pairs), c)?
            }
            b'R' | 0x81 => {
                let (args, ca) = self.pop()?;
                let (func, cf) = self.pop()?;
                self.push(Value::Object { func: Box::new(func), args: Box::new(args), state: None }, Cost::of([&ca, &cf]))?
            }
            b'b' => {
                let (s, cs) = self.pop()?;
                self.add_to_top(cs, |top| match top {
                    Value::Object { state, .. } => {
                        *state = Some(Box::new(s));
                        Ok(())
                    }
                    _ => Err(format!("BUILD on a non-object at byte {at}")),
                })?
            }
            b'a' => {
                let item = self.pop()?;
                self.extend_list(vec![item], "APPEND", at)?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items, "APPENDS", at)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![k, v], "SETITEM", at)?
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.extend_dict(items, "SETITEMS", at)?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

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
            other => return Err(format!("expected a numpy array, found an object built by {other:?}")),
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
        let n: i64 = shape.iter().product();
        if n as usize != raw.len() {
            return Err(format!("numpy array shape {shape:?} needs {n} bytes, payload has {}", raw.len()));
        }
        Ok((shape, raw))
    }
}

/// Decodes one pickle. Errors name the opcode and byte offset.
pub fn load(data: &[u8]) -> Result<Value, String> {
    let mut st = Vm { data, pos: 0, stack: Vec::new(), memo: HashMap::new() };
    st.run()
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl Vm<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.pos + n > self.data.len() {
            return Err(format!("truncated pickle at byte {}", self.pos));
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
    fn line(&mut self) -> Result<String, String> {
        let start = self.pos;
        while self.pos < self.data.len() && self.data[self.pos] != b'\n' {
            self.pos += 1;
        }
        let s = String::from_utf8_lossy(&self.data[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| format!("pickle stack underflow at byte {}", self.pos))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self.stack.iter().rposition(|v| *v == Value::Mark).ok_or_else(|| format!("pickle MARK missing at byte {}", self.pos))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| format!("pickle stack empty at byte {pos}"))
    }
    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, String> {
        Ok(self.take(n)?.to_vec())
    }
    fn string(&mut self, n: usize) -> Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("invalid UTF-8 string at byte {}", self.pos))
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let b = self.take(2)?;
                    let v = u16::from_le_bytes([b[0], b[1]]) as i64;
                    self.stack.push(Value::Int(v))
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Value::Int(v))
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
                    self.stack.push(Value::Int(v))
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.trim().parse().map_err(|_| format!("bad INT at byte {at}"))?),
                    };
                    self.stack.push(v)
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)))
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.bytes(n)?;
                    self.stack.push(Value::Bytes(v))
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.bytes(n)?;
                    self.stack.push(Value::Bytes(v))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.bytes(n)?;
                    self.stack.push(Value::Bytes(v))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.bytes(n)?;
                    self.stack.push(Value::Bytes(v))
                }
                0x8e => {
                    let n = self.u64()? as usize;
                    let v = self.bytes(n)?;
                    self.stack.push(Value::Bytes(v))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(Value::Str(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(Value::Str(v))
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(Value::Str(v))
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v = self.memo.get(&i).cloned().ok_or_else(|| format!("pickle memo {i} missing at byte {at}"))?;
                    self.stack.push(v)
                }
                b'c' => {
                    let m = self.line()?;
                    let n = self.line()?;
                    self.stack.push(Value::Global(m, n))
                }
                0x93 => {
                    let n = self.pop()?;
                    let m = self.pop()?;
                    match (m, n) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(format!("STACK_GLOBAL needs two strings at byte {at}")),
                    }
                }
                0x85 | 0x86 | 0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(format!("pickle stack underflow at byte {at}"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect();
                    self.stack.push(Value::Dict(pairs))
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.stack.push(Value::Object { func: Box::new(func), args: Box::new(args), state: None })
                }
                b'b' => {
                    let s = self.pop()?;
                    match self.top()? {
                        Value::Object { state, .. } => *state = Some(Box::new(s)),
                        _ => return Err(format!("BUILD on a non-object at byte {at}")),
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(format!("APPEND to a non-list at byte {at}")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(format!("APPENDS to a non-list at byte {at}")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(format!("SETITEM on a non-dict at byte {at}")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::Dict(d) => {
                            for c in items.chunks(2) {
                                if c.len() == 2 {
                                    d.push((c[0].clone(), c[1].clone()));
                                }
                            }
                        }
                        _ => return Err(format!("SETITEMS on a non-dict at byte {at}")),
                    }
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {at}")),
            }
        }
    }
}

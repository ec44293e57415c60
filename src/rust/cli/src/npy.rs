//! Minimal NumPy .npy reader/writer for 1-D little-endian arrays (the synthetic benchmark
//! datasets shared with the scvi-tools side).

use std::io::{Read, Write};

pub trait Element: Copy {
    const DESCR: &'static str;
    fn to_le(self) -> Vec<u8>;
    fn from_le(b: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DESCR: &'static str = $d;
            fn to_le(self) -> Vec<u8> {
                self.to_le_bytes().to_vec()
            }
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("element width"))
            }
        }
    };
}
element!(i64, "<i8");
element!(i32, "<i4");
element!(f32, "<f4");

pub fn write<T: Element>(path: &std::path::Path, data: &[T]) -> std::io::Result<()> {
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({},), }}",
        T::DESCR,
        data.len()
    );
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for &v in data {
        f.write_all(&v.to_le())?;
    }
    f.flush()
}

pub fn read<T: Element>(path: &std::path::Path) -> Result<Vec<T>, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(format!("{} is not a .npy file", path.display()));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + hlen]);
    if !header.contains(&format!("'descr': '{}'", T::DESCR))
        || header.contains("'fortran_order': True")
    {
        return Err(format!(
            "{}: expected a 1-D {} array, header {header}",
            path.display(),
            T::DESCR
        ));
    }
    let width = std::mem::size_of::<T>();
    Ok(bytes[10 + hlen..]
        .chunks_exact(width)
        .map(T::from_le)
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let p = std::env::temp_dir().join("rscvi-npy-test.npy");
        super::write(&p, &[1.5f32, -2.0, 3.25]).unwrap();
        assert_eq!(super::read::<f32>(&p).unwrap(), vec![1.5, -2.0, 3.25]);
        assert!(super::read::<i64>(&p).is_err());
    }
}

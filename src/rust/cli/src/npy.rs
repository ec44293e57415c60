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

/// The first `limit` elements (all without a limit), streamed: no copy of the file's bytes.
pub fn read_prefix<T: Element>(
    path: &std::path::Path,
    limit: Option<usize>,
) -> Result<Vec<T>, String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(err)?;
    let file_len = file.metadata().map_err(err)?.len() as usize;
    let mut f = std::io::BufReader::new(file);
    let mut start = [0u8; 10];
    f.read_exact(&mut start)
        .map_err(|_| format!("{} is not a .npy file", path.display()))?;
    if &start[..6] != b"\x93NUMPY" {
        return Err(format!("{} is not a .npy file", path.display()));
    }
    let hlen = u16::from_le_bytes([start[8], start[9]]) as usize;
    let mut header = vec![0u8; hlen];
    f.read_exact(&mut header).map_err(err)?;
    let header = String::from_utf8_lossy(&header);
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
    let available = file_len.saturating_sub(10 + hlen) / width;
    let n = limit.map_or(available, |l| l.min(available));
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; width * 65536];
    while out.len() < n {
        let take = (n - out.len()).min(65536) * width;
        f.read_exact(&mut buf[..take]).map_err(err)?;
        out.extend(buf[..take].chunks_exact(width).map(T::from_le));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let p = std::env::temp_dir().join("rscvi-npy-test.npy");
        super::write(&p, &[1.5f32, -2.0, 3.25]).unwrap();
        assert_eq!(
            super::read_prefix::<f32>(&p, None).unwrap(),
            vec![1.5, -2.0, 3.25]
        );
        assert_eq!(
            super::read_prefix::<f32>(&p, Some(2)).unwrap(),
            vec![1.5, -2.0]
        );
        assert!(super::read_prefix::<i64>(&p, None).is_err());
    }
}

//! A state dict written as `torch.save` writes it, for pyvene and pyreft to load
//! (`torch.load(weights_only=True)` accepts it): a stored (uncompressed) zip with
//! `<archive>/data.pkl` (a protocol-2 pickle of an `OrderedDict` whose values are
//! `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, each storage a
//! persistent id `('storage', torch.FloatStorage, 'N', 'cpu', numel)`), `<archive>/data/N` (the
//! little-endian values), `<archive>/byteorder` and `<archive>/version`. No maintained crate
//! writes this; [`crate::pyvene`]'s reader (burn-store's and [`crate::torch_strides`]) reads it
//! back in the tests.

use std::io::Write;
use std::path::Path;

/// A tensor's values for a state dict.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `torch.float32`.
    F32(Vec<f32>),
    /// `torch.int64` (pyvene's `embed_dim`, `interchange_dim`, `intervention_population`).
    I64(Vec<i64>),
}

/// One entry: key, values and shape (`[]` for a scalar).
pub type Entry = (String, Values, Vec<usize>);

fn text(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: usize) {
    if v < 256 {
        out.extend([b'K', v as u8]);
    } else if v < 65536 {
        out.push(b'M');
        out.extend((v as u16).to_le_bytes());
    } else {
        out.push(b'J');
        out.extend((v as i32).to_le_bytes());
    }
}

fn tuple(out: &mut Vec<u8>, items: &[usize]) {
    match items.len() {
        0 => out.push(b')'),
        _ => {
            out.push(b'(');
            for &i in items {
                int(out, i);
            }
            out.push(b't');
        }
    }
}

/// The pickle of `entries` as an `OrderedDict` of tensors, storage `i` for entry `i`.
pub fn pickle(entries: &[Entry]) -> Vec<u8> {
    let mut out = vec![0x80, 2];
    out.extend(b"ccollections\nOrderedDict\n)R(");
    for (i, (key, values, shape)) in entries.iter().enumerate() {
        text(&mut out, key);
        out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        // The persistent id of the storage.
        let (storage, numel) = match values {
            Values::F32(v) => ("FloatStorage", v.len()),
            Values::I64(v) => ("LongStorage", v.len()),
        };
        out.push(b'(');
        text(&mut out, "storage");
        out.extend(format!("ctorch\n{storage}\n").as_bytes());
        text(&mut out, &i.to_string());
        text(&mut out, "cpu");
        int(&mut out, numel);
        out.extend(b"tQ");
        int(&mut out, 0);
        tuple(&mut out, shape);
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        tuple(&mut out, &stride);
        out.push(0x89);
        out.extend(b"ccollections\nOrderedDict\n)R");
        out.extend(b"tR");
    }
    out.extend(b"u.");
    out
}

/// Writes `entries` to `path` as `torch.save` would, under `<archive>/` (torch uses the file's
/// stem; any name loads).
pub fn write(path: &Path, archive: &str, entries: &[Entry]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut zip = zip::ZipWriter::new(file);
    // A fixed time (the zip format's earliest, 1980-01-01) instead of now: the same
    // intervention exports to the same bytes, whenever it is written.
    let stored = zip::write::FileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    let io = |e: zip::result::ZipError| std::io::Error::other(e.to_string());
    zip.start_file(format!("{archive}/data.pkl"), stored).map_err(io)?;
    zip.write_all(&pickle(entries))?;
    zip.start_file(format!("{archive}/byteorder"), stored).map_err(io)?;
    zip.write_all(b"little")?;
    for (i, (_, values, _)) in entries.iter().enumerate() {
        zip.start_file(format!("{archive}/data/{i}"), stored).map_err(io)?;
        match values {
            Values::F32(v) => v.iter().try_for_each(|x| zip.write_all(&x.to_le_bytes()))?,
            Values::I64(v) => v.iter().try_for_each(|x| zip.write_all(&x.to_le_bytes()))?,
        }
    }
    zip.start_file(format!("{archive}/version"), stored).map_err(io)?;
    zip.write_all(b"3\n")?;
    zip.finish().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_carries_the_fixed_time_so_exports_are_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let entries: Vec<Entry> = vec![("w".into(), Values::F32(vec![1.0, 2.0]), vec![2])];
        write(&path, "x", &entries).unwrap();
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(zip.len(), 4, "data.pkl, byteorder, data/0, version");
        for i in 0..zip.len() {
            let member = zip.by_index(i).unwrap();
            let t = member.last_modified();
            assert_eq!((t.year(), t.month(), t.day(), t.hour(), t.minute()), (1980, 1, 1, 0, 0), "{}", member.name());
        }
    }
}

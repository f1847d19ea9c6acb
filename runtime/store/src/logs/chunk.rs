//! A chunk: the lines of one invocation that one batch of the writer stored, as one row.
//!
//! Storing a call's output as one unit instead of a row per line is what lets the writer keep up
//! with a million lines a second: one insert and one entry per index for a whole run of lines.
//! Lines are split out again only when they are read.
//!
//! The encoding is a format byte (1), then per line: the time since the previous line (zigzag
//! varint, µs; the first from the chunk's `first_ts_us`), the stream (one byte), the text's
//! length (varint) and the text.

use amphi_contract::record::LogStream;

use crate::StoreError;

/// Most lines in one chunk; a longer run of one invocation's lines in a batch gets several.
pub const MAX_LINES: usize = 4096;
/// A line's position is its chunk's `seq` shifted by this many bits, plus its index.
pub const SEQ_SHIFT: u32 = 20;

const FORMAT: u8 = 1;

/// The position of line `index` of chunk `chunk`.
pub fn line_seq(chunk: i64, index: usize) -> u64 {
    ((chunk as u64) << SEQ_SHIFT) | index as u64
}

/// The chunk a line position falls in.
pub fn chunk_of(line_seq: u64) -> i64 {
    (line_seq >> SEQ_SHIFT) as i64
}

/// One line as a chunk holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLine {
    /// When it was written (µs since the Unix epoch).
    pub ts_us: u64,
    /// Its stream.
    pub stream: LogStream,
    /// Its text.
    pub text: String,
}

/// Stores `lines` (one to [`MAX_LINES`]) of `invocation_id` of `function` as one chunk, the last
/// of them line number `line_end` of the store; returns the chunk's `seq`.
pub fn insert(
    conn: &rusqlite::Connection,
    (function, invocation_id): (&str, &str),
    lines: &[ChunkLine],
    line_end: i64,
) -> rusqlite::Result<i64> {
    let first = lines.first().map_or(0, |l| l.ts_us);
    let last = lines.iter().map(|l| l.ts_us).max().unwrap_or(first);
    let mut insert = conn.prepare_cached(
        "INSERT INTO log_chunks (function, invocation_id, first_ts_us, last_ts_us, lines, line_end, data) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    insert.execute(rusqlite::params![
        function,
        invocation_id,
        first as i64,
        last as i64,
        lines.len() as i64,
        line_end,
        encode(lines)
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Encodes `lines` (at least one); returns the encoding.
pub fn encode(lines: &[ChunkLine]) -> Vec<u8> {
    let text: usize = lines.iter().map(|l| l.text.len()).sum();
    let mut out = Vec::with_capacity(1 + text + lines.len() * 6);
    out.push(FORMAT);
    let mut previous = lines.first().map_or(0, |l| l.ts_us);
    for line in lines {
        let delta = line.ts_us.wrapping_sub(previous) as i64;
        previous = line.ts_us;
        put_varint(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
        out.push(stream_code(line.stream));
        put_varint(&mut out, line.text.len() as u64);
        out.extend_from_slice(line.text.as_bytes());
    }
    out
}

/// Decodes a chunk whose first line was written at `first_ts_us`.
pub fn decode(data: &[u8], first_ts_us: u64) -> Result<Vec<ChunkLine>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("log chunk: {what}"));
    let (&format, mut rest) = data.split_first().ok_or_else(|| corrupt("empty"))?;
    if format != FORMAT {
        return Err(corrupt(&format!("unknown format {format}")));
    }
    let mut lines = Vec::new();
    let mut ts = first_ts_us;
    while !rest.is_empty() {
        let zigzag = take_varint(&mut rest).ok_or_else(|| corrupt("time cut short"))?;
        let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        ts = ts.wrapping_add(delta as u64);
        let (&code, after) = rest.split_first().ok_or_else(|| corrupt("stream cut short"))?;
        rest = after;
        let len = take_varint(&mut rest).ok_or_else(|| corrupt("length cut short"))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= rest.len())
            .ok_or_else(|| corrupt("text cut short"))?;
        let (text, after) = rest.split_at(len);
        rest = after;
        lines.push(ChunkLine {
            ts_us: ts,
            stream: stream_of(code).ok_or_else(|| corrupt(&format!("unknown stream {code}")))?,
            text: String::from_utf8_lossy(text).into_owned(),
        });
    }
    Ok(lines)
}

fn stream_code(stream: LogStream) -> u8 {
    match stream {
        LogStream::Stdout => 0,
        LogStream::Stderr => 1,
        LogStream::Platform => 2,
        LogStream::Build => 3,
        LogStream::Init => 4,
    }
}

fn stream_of(code: u8) -> Option<LogStream> {
    [LogStream::Stdout, LogStream::Stderr, LogStream::Platform, LogStream::Build, LogStream::Init]
        .get(usize::from(code))
        .copied()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts_us: u64, stream: LogStream, text: &str) -> ChunkLine {
        ChunkLine { ts_us, stream, text: text.into() }
    }

    #[test]
    fn lines_round_trip_with_times_that_go_back() {
        let lines = vec![
            line(1_700_000_000_000_000, LogStream::Stdout, "hello"),
            line(1_700_000_000_000_900, LogStream::Stderr, ""),
            line(1_699_999_999_999_000, LogStream::Platform, "ünïcode ✓"),
            line(1_700_000_000_000_000, LogStream::Build, &"x".repeat(20_000)),
        ];
        let data = encode(&lines);
        assert_eq!(decode(&data, lines[0].ts_us).expect("decode"), lines);
    }

    #[test]
    fn corrupt_chunks_are_errors_not_panics() {
        let data = encode(&[line(5, LogStream::Stdout, "hello")]);
        for cut in 0..data.len() - 1 {
            let _ = decode(&data[..cut], 5);
        }
        assert!(decode(&data[..data.len() - 1], 5).is_err());
        assert!(decode(&[9], 5).is_err(), "an unknown format");
        assert!(decode(&[FORMAT, 0, 7, 0], 5).is_err(), "an unknown stream");
        assert!(
            decode(&[FORMAT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 5).is_err()
        );
    }

    #[test]
    fn positions_name_their_chunk() {
        let seq = line_seq(12345, 4095);
        assert_eq!(chunk_of(seq), 12345);
        assert!(line_seq(12345, 0) > line_seq(12344, MAX_LINES - 1));
    }
}

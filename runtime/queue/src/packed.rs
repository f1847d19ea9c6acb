//! A request's header fields packed into one blob, as both queues store them.

use crate::QueueError;

/// Header fields as one blob: for each, the name's length (u16, big-endian), the name, the
/// value's length (u32), the value. Exact for any bytes a header value may hold.
pub fn pack_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut packed = Vec::new();
    for (name, value) in headers {
        packed.extend_from_slice(&(name.len() as u16).to_be_bytes());
        packed.extend_from_slice(name.as_bytes());
        packed.extend_from_slice(&(value.len() as u32).to_be_bytes());
        packed.extend_from_slice(value);
    }
    packed
}

/// [`pack_headers`] undone.
pub fn unpack_headers(mut packed: &[u8]) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
    let corrupt = || QueueError::Corrupt("a job's packed header fields are cut short".into());
    let take = |n: usize, packed: &mut &[u8]| -> Result<Vec<u8>, QueueError> {
        let (head, rest) = packed.split_at_checked(n).ok_or_else(corrupt)?;
        *packed = rest;
        Ok(head.to_vec())
    };
    let mut headers = Vec::new();
    while !packed.is_empty() {
        let length = take(2, &mut packed)?;
        let name = take(u16::from_be_bytes([length[0], length[1]]) as usize, &mut packed)?;
        let length = take(4, &mut packed)?;
        let value =
            take(u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize, &mut packed)?;
        let name =
            String::from_utf8(name).map_err(|_| QueueError::Corrupt("a header name is not UTF-8".into()))?;
        headers.push((name, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::{pack_headers, unpack_headers};

    #[test]
    fn header_fields_round_trip_with_any_bytes() {
        let headers = vec![
            ("content-type".to_string(), b"application/json".to_vec()),
            ("x-odd".to_string(), vec![0xff, 0x00, b'a']),
            ("empty".to_string(), Vec::new()),
        ];
        assert_eq!(unpack_headers(&pack_headers(&headers)).expect("unpacks"), headers);
        assert!(unpack_headers(&pack_headers(&headers)[..5]).is_err(), "cut short");
    }
}
